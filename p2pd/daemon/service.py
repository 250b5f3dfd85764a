"""The daemon's sessions: one :class:`~p2pd.node.Node` per passphrase, and their events.

Theory of operation
-------------------
A session is named by its public rendezvous id (hex), never by its passphrase.  Each one
runs as a task in the service's nursery: the node, and a pump that turns node events into
*session events* — ``connected``, ``message``, ``delivered``, ``disconnected`` — kept in
the session's :class:`~p2pd.daemon.ring.EventRing`, which the API streams to subscribers.
Nothing grows with the number or speed of subscribers: each is only a cursor into the
ring plus a wake-up.

Every waiter (a send waiting for a peer or a delivery, a subscriber waiting for news)
waits on the session's *changed* event, which the pump fires and replaces after each node
event; waiters re-check their condition when woken.  Closing a session (``DELETE``, or
the daemon stopping) closes its channels cleanly, waits up to :data:`LEAVE_LINGER`, then
cancels its task; waiters see :attr:`Session.closing` and give up.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import trio

from p2pd import messages
from p2pd.derive import Params, derive
from p2pd.errors import LocalError, WeakPassphraseError
from p2pd.identity import Identity
from p2pd.node import Delivered, MessageIn, Node, NodeConfig, PathChanged, PeerDown, PeerUp
from p2pd.passphrase import MAX_PASSPHRASE_BYTES

from .logs import event as log_event
from .ring import EventRing

#: Sessions one daemon runs at once (each has a UDP socket and discovery tasks).
MAX_SESSIONS = 64
#: Argon2id derivations run at once: each takes 128 MiB, so this bounds that memory.
DERIVE_SLOTS = 2
#: Longest wait for a message's acknowledgement before ``send`` answers ``timeout``; below
#: the CLI client's own allowance (60 s beyond the wait for a peer).
DELIVERY_TIMEOUT = 50.0
#: Time allowed to close a leaving session's channels cleanly before it is cancelled.
LEAVE_LINGER = 0.5
#: Role announced in ``hello``: the daemon both sends and receives, like ``chat``.
APP_ROLE = "chat"


class ServiceError(LocalError):
    """A request the service cannot honour: an HTTP status and a stable error code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(slots=True)
class _Wait:
    """A send waiting for its acknowledgement: filled in by the pump."""

    rtt: float | None = None
    lost: str | None = None


@dataclass(eq=False, slots=True)
class Session:
    """One passphrase's node and its event ring; see the module docstring."""

    id: str
    node: Node
    port: int = 0
    events: EventRing = field(default_factory=EventRing)
    connected: dict[bytes, str] = field(default_factory=dict)  # peer id -> fingerprint
    counters: Counter[str] = field(default_factory=Counter)
    api_sent: set[tuple[bytes, int]] = field(default_factory=set)
    waits: dict[tuple[bytes, int], _Wait] = field(default_factory=dict)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    ready: trio.Event = field(default_factory=trio.Event)
    done: trio.Event = field(default_factory=trio.Event)
    closing: bool = False
    _changed: trio.Event = field(default_factory=trio.Event)

    def record(self, name: str, data: dict[str, Any]) -> None:
        self.events.append(name, data)

    # -- waiting --------------------------------------------------------------------

    def wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        """Wait for the next change; :class:`ServiceError` if the session is closing."""
        self.check_open()
        await self._changed.wait()
        self.check_open()

    def check_open(self) -> None:
        if self.closing:
            raise ServiceError(404, "no_session", "the session was left or the daemon is stopping")

    def pick_peer(self, fingerprint: str | None) -> tuple[bytes, str] | None:
        for peer_id, fp in self.connected.items():
            if fingerprint is None or fp == fingerprint:
                return peer_id, fp
        return None

    # -- views ----------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        merged = Counter(self.node.stats())
        merged.update(self.counters)
        return dict(sorted(merged.items()))

    def describe(self) -> dict[str, Any]:
        """The contract's SESSION object."""
        peers = [
            {"fingerprint": p.fingerprint, "path": p.path, "addr": f"{p.addr[0]}:{p.addr[1]}"}
            for peer_id, p in self.node.peers.items()
            if not p.closed and peer_id in self.connected
        ]
        return {
            "id": self.id,
            "port": self.port,
            "peers": peers,
            "counters": self.stats(),
            "wan": self.node.wan_status(),
        }


class Service:
    """Every session of the daemon; its tasks live in ``nursery``."""

    def __init__(self, identity: Identity, node_config: NodeConfig, nursery: trio.Nursery) -> None:
        self.identity = identity
        self.node_config = node_config
        self.sessions: dict[str, Session] = {}
        self.closing = False
        self._nursery = nursery
        self._derive_limiter = trio.CapacityLimiter(DERIVE_SLOTS)

    def session(self, session_id: str) -> Session:
        session = self.sessions.get(session_id)
        if session is None or session.closing:
            raise ServiceError(404, "no_session", "no session with that id")
        return session

    # -- join and leave -------------------------------------------------------------

    async def derive(self, passphrase: str) -> Params:
        """The passphrase's parameters; Argon2id in a worker thread (at most
        :data:`DERIVE_SLOTS` at once)."""
        if len(passphrase.encode("utf-8", "surrogatepass")) > MAX_PASSPHRASE_BYTES:
            raise ServiceError(400, "bad_request", "the passphrase is too long")
        try:
            return await trio.to_thread.run_sync(derive, passphrase, limiter=self._derive_limiter)
        except WeakPassphraseError as exc:  # its message never quotes the passphrase
            raise ServiceError(400, "weak_passphrase", str(exc)) from None
        except (ValueError, UnicodeError):  # zxcvbn refuses very long input; lone surrogates
            raise ServiceError(
                400, "bad_request", "the passphrase cannot be checked (too long or not text)"
            ) from None

    async def join(self, passphrase: str) -> tuple[Session, bool]:
        """The session of ``passphrase`` and whether it is new (idempotent)."""
        if self.closing:
            raise ServiceError(404, "no_session", "the daemon is stopping")
        params = await self.derive(passphrase)
        return await self.join_params(params)

    async def join_params(self, params: Params) -> tuple[Session, bool]:
        session_id = params.rendezvous_id.hex()
        existing = self.sessions.get(session_id)
        if existing is not None and not existing.closing:
            await existing.ready.wait()
            existing.check_open()
            return existing, False
        if len(self.sessions) >= MAX_SESSIONS:
            raise ServiceError(
                429, "limit_reached", f"this daemon already runs {MAX_SESSIONS} sessions"
            )
        session = Session(session_id, Node(params, self.identity, self.node_config))
        self.sessions[session_id] = session
        try:
            await self._nursery.start(self._run_session, session)
        except OSError as exc:
            raise ServiceError(
                500, "internal", f"cannot open the session's UDP socket: {exc.strerror}"
            ) from None
        log_event(logging.INFO, "session_joined", session=session_id, port=session.port)
        return session, True

    async def leave(self, session_id: str) -> None:
        await self._close(self.session(session_id))
        log_event(logging.INFO, "session_left", session=session_id)

    async def close(self) -> None:
        """Close every session (concurrently, each within :data:`LEAVE_LINGER`)."""
        self.closing = True
        async with trio.open_nursery() as nursery:
            for session in list(self.sessions.values()):
                nursery.start_soon(self._close, session)

    async def _close(self, session: Session) -> None:
        if not session.closing:
            session.closing = True
            session.wake()
            for peer_id in list(session.connected):
                session.node.close_peer(peer_id)
            with trio.move_on_after(LEAVE_LINGER):
                while session.connected:
                    await session._changed.wait()
            session.scope.cancel()
        await session.done.wait()

    async def _run_session(
        self, session: Session, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        failure: OSError | None = None
        try:
            with session.scope:
                async with trio.open_nursery() as nursery:
                    try:
                        session.port = await nursery.start(session.node.run)
                    except OSError as exc:  # raised bare below, not inside an ExceptionGroup
                        failure = exc
                    else:
                        nursery.start_soon(self._pump, session)
                        session.ready.set()
                        task_status.started()
        except Exception as exc:  # the driver's edge: one session must not take the daemon down
            logging.getLogger(__name__).error(
                "session_failed", exc_info=exc, extra={"fields": {"session": session.id}}
            )
        finally:
            session.closing = True
            if self.sessions.get(session.id) is session:
                del self.sessions[session.id]
            session.ready.set()
            session.done.set()
            session.wake()
        if failure is not None:
            raise failure

    # -- the pump -------------------------------------------------------------------

    async def _pump(self, session: Session) -> None:
        node = session.node
        async for ev in node.events:
            if isinstance(ev, PeerUp):
                self._on_peer_up(session, ev)
            elif isinstance(ev, MessageIn) and ev.message.kind == "text":
                text = str(ev.message.fields["body"])
                session.counters["messages_in"] += 1
                session.record("message", {"peer": ev.fingerprint, "text": text})
                log_event(
                    logging.INFO,
                    "message_received",
                    session=session.id,
                    peer=ev.fingerprint,
                    length=len(text),
                )
            elif isinstance(ev, Delivered):
                self._on_delivered(session, ev)
            elif isinstance(ev, PeerDown):
                self._on_peer_down(session, ev)
            elif isinstance(ev, PathChanged):
                addr = f"{ev.addr[0]}:{ev.addr[1]}"
                fields = {"peer": ev.fingerprint, "path": ev.path, "from": ev.old_path}
                session.record("path", {**fields, "addr": addr})
                log_event(logging.INFO, "path_changed", session=session.id, **fields)
            session.wake()

    def _on_peer_up(self, session: Session, ev: PeerUp) -> None:
        session.connected[ev.peer_id] = ev.fingerprint
        session.counters["handshakes"] += 1
        try:
            session.node.send_message(ev.peer_id, messages.hello(APP_ROLE))
        except LocalError:
            return  # gone again already; its PeerDown follows
        addr = f"{ev.addr[0]}:{ev.addr[1]}"
        session.record("connected", {"peer": ev.fingerprint, "path": ev.path, "addr": addr})
        log_event(
            logging.INFO,
            "peer_connected",
            session=session.id,
            peer=ev.fingerprint,
            path=ev.path,
            addr=addr,
            elapsed_ms=round(ev.elapsed * 1000, 1),
        )

    def _on_delivered(self, session: Session, ev: Delivered) -> None:
        key = (ev.peer_id, ev.message_id)
        if key not in session.api_sent:
            return  # our hello
        session.api_sent.discard(key)
        session.counters["delivered"] += 1
        rtt_ms = round(ev.rtt * 1000, 2)
        session.record(
            "delivered",
            {
                "peer": ev.fingerprint,
                "path": ev.path,
                "rtt_ms": rtt_ms,
                "message_id": ev.message_id,
            },
        )
        wait = session.waits.get(key)
        if wait is not None:
            wait.rtt = ev.rtt

    def _on_peer_down(self, session: Session, ev: PeerDown) -> None:
        if session.connected.pop(ev.peer_id, None) is None:
            return
        session.api_sent = {k for k in session.api_sent if k[0] != ev.peer_id}
        for key, wait in session.waits.items():
            if key[0] == ev.peer_id and wait.rtt is None:
                wait.lost = ev.reason
        session.record("disconnected", {"peer": ev.fingerprint, "reason": ev.reason})
        log_event(
            logging.INFO,
            "peer_disconnected",
            session=session.id,
            peer=ev.fingerprint,
            reason=ev.reason,
        )

    # -- send -----------------------------------------------------------------------

    async def send(
        self,
        session_id: str,
        text: str,
        peer: str | None,
        wait_peer: float,
        wait_delivery: bool,
    ) -> dict[str, Any]:
        """Send ``text``; see the contract's ``POST /v1/sessions/{id}/send``."""
        session = self.session(session_id)
        target = session.pick_peer(peer)
        with trio.move_on_after(wait_peer):
            while target is None:
                await session.wait_changed()
                target = session.pick_peer(peer)
        if target is None:
            who = f"peer {peer}" if peer else "peer"
            raise ServiceError(409, "no_peer", f"no {who} connected within {wait_peer:g} s")
        peer_id, fingerprint = target
        try:
            message_id = session.node.send_message(peer_id, messages.text(text))
        except LocalError:
            raise ServiceError(409, "no_peer", "the peer disconnected") from None
        key = (peer_id, message_id)
        session.api_sent.add(key)
        session.counters["messages_out"] += 1
        log_event(
            logging.INFO,
            "message_sent",
            session=session.id,
            peer=fingerprint,
            message_id=message_id,
            length=len(text),
        )
        peer_state = session.node.peers.get(peer_id)
        result: dict[str, Any] = {
            "message_id": message_id,
            "peer": fingerprint,
            "path": peer_state.path if peer_state is not None else "lan",
            "rtt_ms": None,
            "delivered": False,
        }
        if not wait_delivery:
            return result
        wait = session.waits.setdefault(key, _Wait())
        try:
            with trio.move_on_after(DELIVERY_TIMEOUT):
                while wait.rtt is None and wait.lost is None:
                    await session.wait_changed()
        finally:
            session.waits.pop(key, None)
        if wait.rtt is not None:
            result.update(rtt_ms=round(wait.rtt * 1000, 2), delivered=True)
            return result
        if wait.lost is not None:
            raise ServiceError(
                504, "timeout", f"the peer left ({wait.lost}) before acknowledging the message"
            )
        raise ServiceError(504, "timeout", f"no acknowledgement within {DELIVERY_TIMEOUT:g} s")

    # -- views ----------------------------------------------------------------------

    def metrics(self) -> dict[str, Any]:
        per_session = {sid: s.stats() for sid, s in self.sessions.items()}
        totals: Counter[str] = Counter()
        drops: Counter[str] = Counter()
        for counters in per_session.values():
            totals.update(counters)
            for name, value in counters.items():
                reason = _drop_reason(name)
                if reason is not None:
                    drops[reason] += value
        out: dict[str, Any] = {
            name: totals.get(name, 0)
            for name in ("packets_in", "packets_out", "bytes_in", "bytes_out", "handshakes")
        }
        out["rekeys"] = sum(v for k, v in totals.items() if "rekey" in k)
        out.update({k: v for k, v in sorted(totals.items()) if k not in out})
        out["drops_by_reason"] = dict(sorted(drops.items()))
        out["sessions"] = len(per_session)
        return {"sessions": per_session, "totals": out}


#: Endpoint counters that count events, not dropped packets.
_ENDPOINT_NOT_DROPS = frozenset(
    {
        "connect_self",
        "cookie_sent",
        "cookie_received",
        "responding_evicted",
        "crossed",
        "early_data",
    }
)


def _drop_reason(counter: str) -> str | None:
    if counter.startswith("drop_"):
        return counter[len("drop_") :]
    if counter.startswith("endpoint_"):
        name = counter[len("endpoint_") :]
        return None if name in _ENDPOINT_NOT_DROPS or "rekey" in name else name
    return None
