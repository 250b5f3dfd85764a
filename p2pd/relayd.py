"""``p2pd relay``: the assist relay server, a thin trio driver around the relay core.

Theory of operation
-------------------
One UDP socket and one TCP listener share a port (``--bind HOST:PORT``).  Every UDP
datagram and every frame of a TCP connection (2-byte length framing,
:mod:`transports.framing`) goes to the one sans-IO :class:`RelayServer`; what it returns is
sent at once: to a UDP address by a non-blocking ``sendto`` (a full socket buffer drops the
frame, as a router would), to a TCP connection through that connection's bounded queue and
writer task (a slow reader loses frames, never stalls the relay).  A TCP client is the
endpoint ``(host, port, stream)``; when its connection closes its registrations go with it.
So a UDP and a TCP registrant relay to each other like any two.

Structured concurrency: everything runs in one nursery and stops when the caller cancels
(the CLI maps SIGTERM to a cancellation).  Logs carry counters only: never a tag, a payload
or an address.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import ipaddress
import logging
import socket
from dataclasses import dataclass, field

import trio

from p2pd.errors import BadFrame, LocalError
from p2pd.ratelimit import bucket_key
from p2pd.udp import normalize
from transports.framing import MAX_DATAGRAM, FrameDecoder, encode_frame
from transports.relay_server import Endpoint, RelayConfig, RelayServer

__all__ = ["RelayConfig", "RelayRunning", "serve_relay"]

log = logging.getLogger("p2pd.relay")

#: TCP connections served at once; more are closed at once (each costs a task and buffers).
#: Per source IP the limit is the config's ``max_per_ip``, so one host cannot take them all.
MAX_CONNECTIONS = 1024
#: Frames queued per TCP connection before further frames to it are dropped.
TCP_QUEUE = 256
#: Bytes read from a TCP connection at once.
TCP_RECV_SIZE = 65536
#: Longest wait between timer checks (the core's timer moves as registrations arrive).
TIMER_TICK = 1.0
#: Seconds between counter log lines.
LOG_INTERVAL = 60.0
#: Kernel socket buffers asked for: bursts of relayed datagrams wait there.
SOCKET_BUFFER = 4 * 1024 * 1024
#: Datagrams drained per wake-up before yielding to other tasks.
RECV_BATCH = 256
#: Tries at finding a port free for both UDP and TCP when asked for port 0.
BIND_ATTEMPTS = 16

Addr = tuple[str, int]


@dataclass
class RelayRunning:
    """What :func:`serve_relay` reports once it listens: the bound address and live counters."""

    addr: Addr
    server: RelayServer
    driver_counters: collections.Counter[str] = field(default_factory=collections.Counter)

    def counters(self) -> collections.Counter[str]:
        """The core's and the driver's counters together."""
        return self.server.counters + self.driver_counters


def _family(host: str) -> socket.AddressFamily:
    try:
        version = ipaddress.ip_address(host).version
    except ValueError:
        raise LocalError(f"relay --bind host must be an IP address, got {host!r}") from None
    return socket.AF_INET6 if version == 6 else socket.AF_INET


def _open_pair(host: str, port: int) -> tuple[socket.socket, socket.socket]:
    """A UDP socket and a listening TCP socket bound to the same ``(host, port)``."""
    family = _family(host)
    for _ in range(BIND_ATTEMPTS):
        udp = socket.socket(family, socket.SOCK_DGRAM)
        tcp = socket.socket(family, socket.SOCK_STREAM)
        try:
            for sock in (udp, tcp):
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                sock.setblocking(False)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                with contextlib.suppress(OSError):
                    udp.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
            udp.bind((host, port))
            tcp.bind((host, udp.getsockname()[1]))
            tcp.listen()
            return udp, tcp
        except OSError as exc:
            udp.close()
            tcp.close()
            if port != 0 or exc.errno != errno.EADDRINUSE:
                raise LocalError(f"cannot listen on {host} port {port}: {exc.strerror}") from exc
    raise LocalError(f"no port free for both UDP and TCP on {host}")


class _Relay:
    def __init__(self, server: RelayServer, udp: socket.socket, running: RelayRunning) -> None:
        self.server = server
        self.udp = udp
        self.dual_stack = udp.family == socket.AF_INET6
        self.running = running
        self.counters = running.driver_counters
        self.conns: dict[Endpoint, trio.MemorySendChannel[bytes]] = {}
        #: Open connections per source IP (IPv6: per /64), capped like registrations.
        self.per_ip: collections.Counter[bytes] = collections.Counter()

    def _target(self, host: str, port: int) -> tuple[str, int]:
        if self.dual_stack and "." in host and ":" not in host:
            return "::ffff:" + host, port
        return host, port

    def flush(self) -> None:
        """Send everything the core produced, without waiting on anyone."""
        for data, dest in self.server.datagrams_to_send(trio.current_time()):
            if dest.stream:
                channel = self.conns.get(dest)
                if channel is None:
                    self.counters["drop_tcp_gone"] += 1
                    continue
                try:
                    channel.send_nowait(encode_frame(data))
                except trio.WouldBlock:
                    self.counters["drop_tcp_queue_full"] += 1
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self.counters["drop_tcp_gone"] += 1
                continue
            try:
                self.udp.sendto(data, self._target(dest.host, dest.port))
            except BlockingIOError:
                self.counters["drop_udp_busy"] += 1
            except OSError:
                self.counters["udp_send_error"] += 1

    async def udp_loop(self) -> None:
        while True:
            await trio.lowlevel.wait_readable(self.udp)
            for _ in range(RECV_BATCH):
                try:
                    data, raw = self.udp.recvfrom(MAX_DATAGRAM)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    self.counters["udp_recv_error"] += 1  # e.g. a late ICMP unreachable
                    continue
                host, port = normalize(raw)
                self.server.receive_untrusted(data, Endpoint(host, port), trio.current_time())
                self.flush()
            await trio.lowlevel.checkpoint()

    async def timer_loop(self) -> None:
        while True:
            deadline = min(self.server.get_timer(), trio.current_time() + TIMER_TICK)
            await trio.sleep_until(deadline)
            self.server.handle_timer(trio.current_time())
            self.flush()

    async def log_loop(self) -> None:
        while True:
            await trio.sleep(LOG_INTERVAL)
            self.log_counters()

    def log_counters(self) -> None:
        counters = self.running.counters()
        log.info(
            "relay: registrations=%d clients=%d connections=%d %s",
            self.server.registrations,
            self.server.clients,
            len(self.conns),
            " ".join(f"{name}={value}" for name, value in sorted(counters.items())),
        )

    async def handle_stream(self, stream: trio.SocketStream) -> None:
        async with stream:
            if len(self.conns) >= MAX_CONNECTIONS:
                self.counters["tcp_refused"] += 1
                return
            try:
                host, port = normalize(stream.socket.getpeername())
            except OSError:  # reset before we looked
                self.counters["tcp_error"] += 1
                return
            key = bucket_key(host)
            if self.per_ip[key] >= self.server.config.max_per_ip:
                self.counters["tcp_refused_ip"] += 1
                return
            endpoint = Endpoint(host, port, stream=True)
            send, receive = trio.open_memory_channel[bytes](TCP_QUEUE)
            self.conns[endpoint] = send
            self.per_ip[key] += 1
            self.counters["tcp_accepted"] += 1
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer, stream, receive, nursery.cancel_scope)
                    await self._reader(stream, endpoint)
                    nursery.cancel_scope.cancel()
            finally:
                del self.conns[endpoint]
                self.per_ip[key] -= 1
                if not self.per_ip[key]:
                    del self.per_ip[key]
                self.server.forget(endpoint, trio.current_time())

    async def _reader(self, stream: trio.SocketStream, endpoint: Endpoint) -> None:
        decoder = FrameDecoder()
        idle = float(self.server.config.lifetime)
        while True:
            try:
                with trio.move_on_after(idle) as scope:
                    data = await stream.receive_some(TCP_RECV_SIZE)
            except (trio.BrokenResourceError, OSError):
                self.counters["tcp_error"] += 1
                return
            if scope.cancelled_caught:
                self.counters["tcp_idle_closed"] += 1
                return
            if not data:
                return
            try:
                frames = decoder.feed_untrusted(data)
            except BadFrame as exc:
                self.counters["drop_tcp_" + exc.reason] += 1
                return
            for frame in frames:
                self.server.receive_untrusted(frame, endpoint, trio.current_time())
            self.flush()

    async def _writer(
        self,
        stream: trio.SocketStream,
        receive: trio.MemoryReceiveChannel[bytes],
        scope: trio.CancelScope,
    ) -> None:
        try:
            async for frame in receive:
                await stream.send_all(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.counters["tcp_error"] += 1
            scope.cancel()  # the reader stops too: a connection we cannot write to is gone


async def serve_relay(
    bind: Addr,
    config: RelayConfig,
    *,
    task_status: trio.TaskStatus[RelayRunning] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the relay on ``bind`` (UDP and TCP, same port; port 0 picks one) until cancelled.

    ``task_status.started`` receives a :class:`RelayRunning` with the bound address.
    Raises :class:`LocalError` if the address cannot be used.
    """
    host, port = bind
    udp_sock, tcp_sock = _open_pair(host, port)
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(tcp_sock))
    bound = normalize(udp_sock.getsockname())
    server = RelayServer(config, trio.current_time())
    running = RelayRunning(bound, server)
    relay = _Relay(server, udp_sock, running)
    try:
        async with listener, trio.open_nursery() as nursery:
            nursery.start_soon(relay.udp_loop)
            nursery.start_soon(relay.timer_loop)
            nursery.start_soon(relay.log_loop)
            nursery.start_soon(trio.serve_listeners, relay.handle_stream, [listener])
            log.info("relay listening on %s port %d (udp and tcp)", bound[0], bound[1])
            task_status.started(running)
    finally:
        relay.log_counters()
        udp_sock.close()
