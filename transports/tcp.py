"""TCP links: p2pd datagrams framed over TCP connections, for networks that block UDP.

Theory of operation
-------------------
When UDP is blocked, the same handshake and session run over TCP: each p2pd datagram is one
frame of :mod:`transports.framing` on a connection.  TCP here is only a pipe for datagrams,
never a second protocol: every datagram is authenticated by the session above, so a link
needs no handshake of its own and learns nothing the session does not check.

:class:`TcpLinks` owns every connection, inbound (:meth:`TcpLinks.serve`) or outbound
(:meth:`TcpLinks.connect`), each named by a *link id* (a 32-bit number, never reused while
the link is open; the node turns it into a virtual address, see :mod:`p2pd.vaddr`).  It
reports through three synchronous callbacks, called from the trio thread: ``on_link`` when a
link opens (before any of its datagrams), ``on_datagram`` for each datagram in order, and
``on_link_closed`` once when it closes, whatever the reason.  Callbacks must not raise
(an exception there is a bug of the caller and ends :meth:`TcpLinks.run`).

Structured concurrency: :meth:`TcpLinks.run` opens the nursery in which every link's task
lives; cancelling ``run`` closes every connection.  A link's task runs a reader and a writer:

* The reader feeds a :class:`~transports.framing.FrameDecoder`.  A framing error (a hostile
  or desynchronised stream) closes that link only and is counted; so is a link that
  received nothing for :data:`IDLE_TIMEOUT`.
* The writer sends what :meth:`TcpLinks.send` queued, many frames per ``send_all``.  The
  queue is bounded (:data:`SEND_BUFFER`): when the peer reads too slowly, new datagrams are
  dropped and counted, as a full UDP socket buffer would, so a slow peer never holds the
  node up or grows its memory; the session's congestion control sees the loss.

Nothing here raises on network trouble: a failed connect returns ``None``, a failed send
returns ``False``, and the ``counters`` say what happened.  ``TCP_NODELAY`` is on (trio's
default for its streams, set again here): p2pd already sends whole packets, and delaying
small ones (ACKs, handshakes) would only add latency.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from p2pd.errors import BadFrame, LocalError
from transports.base import Addr
from transports.framing import FrameDecoder, encode_frame

#: Most open links, inbound and outbound together: a peer-to-peer node talks to a few
#: peers; the cap keeps a connection flood from exhausting file descriptors.
MAX_LINKS = 64
#: Bytes queued per link and not yet handed to the kernel; beyond it, datagrams are dropped.
#: 256 KiB is a few hundred full-size packets: a congestion window's worth on a fast path.
SEND_BUFFER = 256 * 1024
#: A link that received nothing for this long is closed: six of the session's 10-second
#: keepalives, twice its own 30-second idle limit, so a live session never loses its link.
IDLE_TIMEOUT = 60.0
#: Bytes asked of the kernel per read.
RECV_SIZE = 64 * 1024
#: Listen backlog.
BACKLOG = 16
#: Pause after an accept failure that is not the peer's (e.g. out of file descriptors),
#: so a persistent error does not spin.
ACCEPT_BACKOFF = 0.1
#: Largest link id: the node packs it in 32 bits of a virtual address.
MAX_LINK_ID = 2**32 - 1

OnDatagram = Callable[[int, bytes, Addr], None]
OnLink = Callable[[int, Addr, bool], None]
OnLinkClosed = Callable[[int], None]


def _peer_of(stream: trio.SocketStream) -> Addr:
    raw = stream.socket.getpeername()
    host, port = str(raw[0]), int(raw[1])
    if host.startswith("::ffff:") and "." in host:
        host = host[len("::ffff:") :]
    return host, port


@dataclass(eq=False, slots=True)
class _Link:
    """One connection's state, owned by its task."""

    id: int
    stream: trio.SocketStream
    peer: Addr
    inbound: bool
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    queue: deque[bytes] = field(default_factory=deque)
    queued: int = 0
    wakeup: trio.Event = field(default_factory=trio.Event)


class TcpLinks:
    """Every TCP link of a node; see the module docstring."""

    def __init__(
        self,
        *,
        on_datagram: OnDatagram,
        on_link: OnLink,
        on_link_closed: OnLinkClosed,
        max_links: int = MAX_LINKS,
        send_buffer: int = SEND_BUFFER,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self._on_datagram = on_datagram
        self._on_link = on_link
        self._on_link_closed = on_link_closed
        self.max_links = max_links
        self.send_buffer = send_buffer
        self.idle_timeout = idle_timeout
        #: What happened, by name: links opened/refused/closed and why, datagrams dropped.
        self.counters: Counter[str] = Counter()
        self._links: dict[int, _Link] = {}
        self._next_id = 1
        self._nursery: trio.Nursery | None = None

    def __repr__(self) -> str:
        return f"<TcpLinks links={len(self._links)}>"

    @property
    def links(self) -> dict[int, Addr]:
        """Open links and their peers' addresses (a copy)."""
        return {link.id: link.peer for link in self._links.values()}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own every link until cancelled; then every connection is closed."""
        if self._nursery is not None:
            raise LocalError("TcpLinks.run() is already running")
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    def _require_nursery(self) -> trio.Nursery:
        if self._nursery is None:
            raise LocalError("start TcpLinks.run() before serving or connecting")
        return self._nursery

    async def serve(
        self,
        port: int,
        *,
        host: str | None = None,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept links on TCP ``port`` until cancelled; ``task_status`` gets the bound port.

        Without ``host``: dual-stack ``::`` (IPv4 too), or ``0.0.0.0`` where IPv6 is absent.
        Binding errors (port in use) are raised to the caller before ``started``; after it,
        accept errors are counted and never end the loop.
        """
        self._require_nursery()
        listener = trio.SocketListener(await self._listen(port, host))
        async with listener:
            task_status.started(listener.socket.getsockname()[1])
            while True:
                try:
                    stream = await listener.accept()
                except OSError:
                    self.counters["accept_failed"] += 1
                    await trio.sleep(ACCEPT_BACKOFF)
                    continue
                self.adopt(stream, inbound=True)

    @staticmethod
    async def _listen(port: int, host: str | None) -> trio.socket.SocketType:
        if host is None:
            family, bind_host, dual = socket.AF_INET6, "::", True
            if not socket.has_ipv6:
                family, bind_host, dual = socket.AF_INET, "0.0.0.0", False  # noqa: S104  (a peer-to-peer node listens on all interfaces)
        else:
            try:
                version = ipaddress.ip_address(host).version
            except ValueError:
                raise LocalError(
                    f"TCP listen address must be an IP address, not {host!r}"
                ) from None
            family = socket.AF_INET6 if version == 6 else socket.AF_INET
            bind_host, dual = host, False
        sock = trio.socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if dual:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            elif family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            await sock.bind((bind_host, port))
            sock.listen(BACKLOG)
        except BaseException:
            sock.close()
            raise
        return sock

    async def connect(self, addr: Addr, timeout: float) -> int | None:
        """Open a link to ``addr``; its id, or None when it could not be opened in time."""
        self._require_nursery()
        if len(self._links) >= self.max_links:
            self.counters["connect_refused_full"] += 1
            return None
        stream: trio.SocketStream | None = None
        with trio.move_on_after(timeout):
            try:
                stream = await trio.open_tcp_stream(addr[0], addr[1])
            except OSError:
                self.counters["connect_failed"] += 1
                return None
        if stream is None:
            self.counters["connect_timeout"] += 1
            return None
        return self.adopt(stream, inbound=False)

    def _allocate_id(self) -> int:
        while self._next_id in self._links:
            self._next_id = self._next_id % MAX_LINK_ID + 1
        link_id = self._next_id
        self._next_id = self._next_id % MAX_LINK_ID + 1
        return link_id

    def adopt(self, stream: trio.SocketStream, *, inbound: bool) -> int | None:
        """Register a connected stream as a link and start its task; None if refused.

        Streams opened elsewhere (a Tor stream past its meeting) become links this way."""
        nursery = self._nursery
        full = len(self._links) >= self.max_links
        try:
            peer = _peer_of(stream)
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        except OSError:
            peer = None  # reset before we got to it
        if nursery is None or full or peer is None:
            self.counters["inbound_refused" if inbound else "outbound_refused"] += 1
            with contextlib.suppress(OSError):
                stream.socket.close()
            return None
        link = _Link(self._allocate_id(), stream, peer, inbound)
        self._links[link.id] = link
        self.counters["opened_inbound" if inbound else "opened_outbound"] += 1
        nursery.start_soon(self._link_task, link)
        self._on_link(link.id, peer, inbound)
        return link.id

    def send_nowait(self, link: int, datagram: bytes) -> bool:
        """Queue ``datagram`` on ``link``; False (and counted) if the link is gone or full.

        A datagram that cannot be framed (empty, over 65535 bytes) is the caller's bug:
        :class:`~p2pd.errors.LocalError`.
        """
        frame = encode_frame(datagram)
        state = self._links.get(link)
        if state is None:
            self.counters["send_no_link"] += 1
            return False
        if state.queued + len(frame) > self.send_buffer:
            self.counters["send_dropped_full"] += 1
            return False
        state.queue.append(frame)
        state.queued += len(frame)
        state.wakeup.set()
        return True

    async def send(self, link: int, datagram: bytes) -> bool:
        """:meth:`send_nowait`, then a checkpoint so the writer can run."""
        sent = self.send_nowait(link, datagram)
        await trio.lowlevel.checkpoint()
        return sent

    def close(self, link: int) -> None:
        """Close ``link`` (``on_link_closed`` follows); nothing if it is already gone."""
        state = self._links.get(link)
        if state is not None:
            self.counters["closed_locally"] += 1
            state.scope.cancel()

    async def _link_task(self, link: _Link) -> None:
        try:
            with link.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer, link)
                    await self._reader(link)
                    nursery.cancel_scope.cancel()
        finally:
            del self._links[link.id]
            with contextlib.suppress(OSError):
                link.stream.socket.close()
            self._on_link_closed(link.id)

    async def _reader(self, link: _Link) -> None:
        """Deliver datagrams until EOF, an error, a framing error or idleness; then return."""
        decoder = FrameDecoder()
        while True:
            data = b""
            with trio.move_on_after(self.idle_timeout) as idle:
                try:
                    data = await link.stream.receive_some(RECV_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    self.counters["closed_error"] += 1
                    return
            if idle.cancelled_caught:
                self.counters["closed_idle"] += 1
                return
            if not data:
                self.counters["closed_by_peer"] += 1
                return
            try:
                datagrams = decoder.feed_untrusted(data)
            except BadFrame as exc:
                self.counters[f"bad_frame_{exc.reason}"] += 1
                return
            for datagram in datagrams:
                self._on_datagram(link.id, datagram, link.peer)

    async def _writer(self, link: _Link) -> None:
        """Hand queued frames to the kernel, many per call; the link closes on failure."""
        while True:
            if not link.queue:
                link.wakeup = trio.Event()
                await link.wakeup.wait()
                continue
            data = b"".join(link.queue)
            link.queue.clear()
            link.queued = 0
            try:
                await link.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                self.counters["closed_error"] += 1
                link.scope.cancel()
                return
