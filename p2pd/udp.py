"""The node's one UDP socket: dual-stack, large buffers, batched non-blocking I/O under trio.

Why not ``trio.socket`` directly: one ``await`` per datagram caps a trio receiver near
100k datagrams/s and loses bursts (see shared LAB-NOTES).  Here the task waits once for
readability with ``trio.lowlevel.wait_readable`` and then drains every queued datagram
without awaiting, and the kernel buffer is enlarged so bursts wait in the kernel.

Per-datagram system calls are the next limit (about 4 us to send and 2 us to receive a
1200-byte datagram on loopback, a third of the node's time at full speed), so on Linux
the socket batches them, as LAB-NOTES recommends and QUIC stacks do:

* Sending (:meth:`UdpSocket.send_batch`): consecutive datagrams to one address that have
  the same size (the last may be shorter) leave in one ``sendmsg`` with ``UDP_SEGMENT``
  (UDP GSO); the kernel or NIC cuts them into the same datagrams on the wire.  If a
  batch fails, it is sent again one datagram at a time, so every datagram still succeeds
  or fails on its own; if they all succeed and the batch's error says GSO itself is
  unsupported (no checksum offload on the route, an old kernel), the socket stops using it.
* Receiving (:meth:`UdpSocket.drain`): with ``UDP_GRO`` the kernel may hand over several
  datagrams of one flow as one buffer plus their segment size; they are cut apart
  here, so callers still see one datagram at a time, in order.

Addresses leave this module as plain ``(host, port)`` pairs with IPv4-mapped IPv6
addresses turned back into IPv4, so cores never see socket-family details.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
import struct
import sys
from collections.abc import Iterator, Sequence

import trio

#: Kernel receive/send buffer asked for (4 MiB): a burst at line rate waits there.
SOCKET_BUFFER = 4 * 1024 * 1024
#: SO_RCVBUFFORCE/SO_SNDBUFFORCE (Linux; not exported by Python 3.11): root may exceed rmem_max.
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32
#: Largest datagram read.
MAX_DATAGRAM = 65535
#: Most datagrams drained per wake-up before yielding to other tasks (fairness; it also
#: bounds how many packets the node takes in before it answers with one ACK).
RECV_BATCH = 256
#: Linux UDP socket-option level and options (<linux/udp.h>; not exported by Python 3.11).
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
#: Whether to try GSO/GRO at all: the option numbers above are Linux's.
SEGMENTATION_OFFLOAD = sys.platform == "linux"
#: Most datagrams in one GSO send: the kernel's UDP_MAX_SEGMENTS (64 since Linux 4.18).
GSO_MAX_SEGMENTS = 64
#: Most payload bytes in one GSO send: one UDP datagram's limit over IPv4 (65535 - 20 - 8).
GSO_MAX_BYTES = 65507
#: Ancillary buffer for the one ``int`` segment size a UDP_GRO receive carries.
GRO_CMSG_SPACE = socket.CMSG_SPACE(4) if SEGMENTATION_OFFLOAD else 0
#: Errors of a GSO send that mean the batching is unsupported here, not the datagrams
#: (EIO: no checksum offload on the route; EINVAL: segment above the path MTU; the others:
#: a kernel without UDP_SEGMENT).
GSO_UNSUPPORTED = frozenset({errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP})
#: Addresses whose socket-level form is remembered (cleared when full: peers are few).
ADDR_CACHE_SIZE = 1024

_GSO_SIZE = struct.Struct("=H")
_GRO_SIZE = struct.Struct("=i")

Addr = tuple[str, int]


def normalize(addr: tuple[object, ...]) -> Addr:
    """``(host, port)`` with ``::ffff:a.b.c.d`` shown as ``a.b.c.d``."""
    host, port = str(addr[0]), int(addr[1])  # type: ignore[call-overload]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return host, port


def gso_batches(
    datagrams: Sequence[bytes],
    max_segments: int = GSO_MAX_SEGMENTS,
    max_bytes: int = GSO_MAX_BYTES,
) -> Iterator[tuple[int, int]]:
    """``(start, end)`` index ranges of ``datagrams``, in order, that one GSO send may carry.

    In a range every datagram has the size of the first except the last, which may be
    shorter but not empty (the kernel could not tell an empty tail was there); a range has
    at most ``max_segments`` datagrams and ``max_bytes`` bytes.
    """
    count = len(datagrams)
    start = 0
    while start < count:
        size = len(datagrams[start])
        total, end = size, start + 1
        while size and end < count and end - start < max_segments:
            length = len(datagrams[end])
            if not 0 < length <= size or total + length > max_bytes:
                break
            total += length
            end += 1
            if length < size:
                break
        yield start, end
        start = end


def split_segments(data: bytes, segment: int) -> list[bytes]:
    """Cut a UDP_GRO buffer back into its datagrams of ``segment`` bytes (the last shorter)."""
    if segment <= 0 or segment >= len(data):
        return [data]
    return [data[offset : offset + segment] for offset in range(0, len(data), segment)]


class UdpSocket:
    """A bound, non-blocking UDP socket; see the module docstring."""

    def __init__(self, port: int, *, fallback_to_any: bool = True, host: str = "") -> None:
        self.sock, self.dual_stack = self._open()
        self._tune()
        bind_host = host or ("::" if self.dual_stack else "0.0.0.0")  # noqa: S104  (a peer-to-peer node listens on all interfaces)
        if host and self.dual_stack and ":" not in host:
            bind_host = "::ffff:" + host  # an IPv4 address on the dual-stack socket
        try:
            self.sock.bind((bind_host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or not fallback_to_any:
                self.sock.close()
                raise
            self.sock.bind((bind_host, 0))
        self.port: int = self.sock.getsockname()[1]
        self.send_errors = 0
        #: Whether sends are batched with UDP_SEGMENT (cleared when the kernel refuses).
        self.gso = SEGMENTATION_OFFLOAD
        #: Whether the kernel may coalesce received datagrams (UDP_GRO accepted).
        self.gro = False
        if SEGMENTATION_OFFLOAD:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(SOL_UDP, UDP_GRO, 1)
                self.gro = True
        self._targets: dict[Addr, tuple[str, int]] = {}
        self._sources: dict[tuple[object, ...], Addr] = {}

    @staticmethod
    def _open() -> tuple[socket.socket, bool]:
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            dual = True
        except OSError:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            dual = False
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        return sock, dual

    def _tune(self) -> None:
        for force, plain in (
            (SO_RCVBUFFORCE, socket.SO_RCVBUF),
            (SO_SNDBUFFORCE, socket.SO_SNDBUF),
        ):
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
            except OSError:
                with contextlib.suppress(OSError):
                    self.sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)

    def _target(self, addr: Addr) -> tuple[str, int]:
        target = self._targets.get(addr)
        if target is None:
            host = addr[0]
            if self.dual_stack and ipaddress.ip_address(host).version == 4:
                host = "::ffff:" + host
            if len(self._targets) >= ADDR_CACHE_SIZE:
                self._targets.clear()
            target = self._targets[addr] = (host, addr[1])
        return target

    def _source(self, raw: tuple[object, ...]) -> Addr:
        addr = self._sources.get(raw)
        if addr is None:
            if len(self._sources) >= ADDR_CACHE_SIZE:
                self._sources.clear()
            addr = self._sources[raw] = normalize(raw)
        return addr

    async def wait_readable(self) -> None:
        await trio.lowlevel.wait_readable(self.sock)

    def drain(self) -> Iterator[tuple[bytes, Addr]]:
        """Every queued datagram, up to about :data:`RECV_BATCH`, without blocking."""
        sock, drained = self.sock, 0
        while drained < RECV_BATCH:
            try:
                if self.gro:
                    data, ancdata, _flags, raw = sock.recvmsg(MAX_DATAGRAM, GRO_CMSG_SPACE)
                else:
                    data, raw = sock.recvfrom(MAX_DATAGRAM)
                    ancdata = []
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                drained += 1
                continue  # e.g. ICMP port unreachable reported on a later recv
            addr = self._source(raw)
            segment = 0
            for level, kind, value in ancdata:
                if level == SOL_UDP and kind == UDP_GRO and len(value) >= _GRO_SIZE.size:
                    segment = _GRO_SIZE.unpack_from(value)[0]
            if segment:
                datagrams = split_segments(data, segment)
                drained += len(datagrams)
                for datagram in datagrams:
                    yield datagram, addr
            else:
                drained += 1
                yield data, addr

    async def send(self, data: bytes, addr: Addr) -> bool:
        """Send one datagram; waits when the kernel buffer is full. False if it failed."""
        target = self._target(addr)
        while True:
            try:
                self.sock.sendto(data, target)
                return True
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.sock)
            except OSError:
                self.send_errors += 1
                return False

    async def send_batch(self, datagrams: Sequence[bytes], addr: Addr) -> list[bool]:
        """Send ``datagrams`` to ``addr`` in order, batched with GSO where possible.

        Returns, for each datagram, whether it was sent (as :meth:`send` would have).
        """
        if not self.gso or len(datagrams) == 1:
            return [await self.send(data, addr) for data in datagrams]
        target = self._target(addr)
        results: list[bool] = []
        for start, end in gso_batches(datagrams):
            batch = datagrams[start:end]
            if len(batch) == 1 or not self.gso:
                results.extend([await self.send(data, addr) for data in batch])
            else:
                error = await self._send_gso(batch, target)
                if error is None:
                    results.extend([True] * len(batch))
                    continue
                # Each datagram on its own, so each succeeds or fails as send() would.
                sent = [await self.send(data, addr) for data in batch]
                if error in GSO_UNSUPPORTED and all(sent):
                    self.gso = False  # the datagrams go through; only the batching failed
                results.extend(sent)
        return results

    async def _send_gso(self, batch: Sequence[bytes], target: tuple[str, int]) -> int | None:
        """One ``sendmsg`` carrying ``batch`` (see :func:`gso_batches`); the errno if refused."""
        cmsg = [(SOL_UDP, UDP_SEGMENT, _GSO_SIZE.pack(len(batch[0])))]
        while True:
            try:
                self.sock.sendmsg(batch, cmsg, 0, target)
                return None
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.sock)
            except OSError as exc:
                return exc.errno if exc.errno is not None else errno.EIO

    def close(self) -> None:
        self.sock.close()
