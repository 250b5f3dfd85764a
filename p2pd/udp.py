"""The node's one UDP socket: dual-stack, large buffers, batched non-blocking I/O under trio.

Why not ``trio.socket`` directly: one ``await`` per datagram caps a trio receiver near
100k datagrams/s and loses bursts (see shared LAB-NOTES).  Here the task waits once for
readability with ``trio.lowlevel.wait_readable`` and then drains every queued datagram
without awaiting, and the kernel buffer is enlarged so bursts wait in the kernel.

Addresses leave this module as plain ``(host, port)`` pairs with IPv4-mapped IPv6
addresses turned back into IPv4, so cores never see socket-family details.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
from collections.abc import Iterator

import trio

#: Kernel receive/send buffer asked for (4 MiB): a burst at line rate waits there.
SOCKET_BUFFER = 4 * 1024 * 1024
#: SO_RCVBUFFORCE/SO_SNDBUFFORCE (Linux; not exported by Python 3.11): root may exceed rmem_max.
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32
#: Largest datagram read.
MAX_DATAGRAM = 65535
#: Most datagrams drained per wake-up before yielding to other tasks (fairness).
RECV_BATCH = 256

Addr = tuple[str, int]


def normalize(addr: tuple[object, ...]) -> Addr:
    """``(host, port)`` with ``::ffff:a.b.c.d`` shown as ``a.b.c.d``."""
    host, port = str(addr[0]), int(addr[1])  # type: ignore[call-overload]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return host, port


class UdpSocket:
    """A bound, non-blocking UDP socket; see the module docstring."""

    def __init__(self, port: int, *, fallback_to_any: bool = True, host: str = "") -> None:
        self.sock, self.dual_stack = self._open()
        self._tune()
        bind_host = host or ("::" if self.dual_stack else "0.0.0.0")  # noqa: S104  (a peer-to-peer node listens on all interfaces)
        try:
            self.sock.bind((bind_host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or not fallback_to_any:
                self.sock.close()
                raise
            self.sock.bind((bind_host, 0))
        self.port: int = self.sock.getsockname()[1]
        self.send_errors = 0

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
        host = addr[0]
        if self.dual_stack and ipaddress.ip_address(host).version == 4:
            host = "::ffff:" + host
        return host, addr[1]

    async def wait_readable(self) -> None:
        await trio.lowlevel.wait_readable(self.sock)

    def drain(self) -> Iterator[tuple[bytes, Addr]]:
        """Every queued datagram, up to :data:`RECV_BATCH`, without blocking."""
        for _ in range(RECV_BATCH):
            try:
                data, addr = self.sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # e.g. ICMP port unreachable reported on a later recv
            yield data, normalize(addr)

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

    def close(self) -> None:
        self.sock.close()
