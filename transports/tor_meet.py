"""Meeting the other peer at the shared onion: both publish it and connect to it; the rules
that make them end on one stream (no deadlock, no self-connection) are in
:mod:`transports.onion`, the tor plumbing in :mod:`transports.tor`.
"""

from __future__ import annotations

import contextlib
import random
import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from p2pd.errors import BadFrame, single_errors
from transports.onion import (
    ACCEPT,
    HELLO_SIZE,
    NONCE_SIZE,
    RETRY_BASE,
    Action,
    OnionIdentity,
    Outcome,
    Peer,
    classify_hello,
    encode_hello,
    parse_hello_untrusted,
    plan_after,
)
from transports.socks5 import TorConnectError, receive_exactly, socks5_connect
from transports.tor import (
    LOOPBACK,
    TorControlError,
    TorLauncher,
    TorPublishTimeout,
)

#: Jitter source of the retry plans (not secret, but not predictable either).
_SYSTEM_RANDOM = random.SystemRandom()

#: Virtual port of the shared onion service (any fixed value works: both peers use it).
ONION_PORT = 4242
#: Seconds one connect through tor gets, hello and answer included: a few circuit builds.
CONNECT_TIMEOUT = 60.0
#: Seconds an accepted stream gets to send its hello.
HELLO_TIMEOUT = 30.0
#: Seconds the listener stays open after the first stream, so a stream the other peer
#: opened at the same time is seen by both ends and the same one is kept.
MEET_GRACE = 3.0
#: Seconds meet waits for its descriptor upload before connecting anyway; uploads in the
#: lab take about one second, on the Tor network a few.
MEET_PUBLISH_WAIT = 30.0


# --- meeting the other peer at the shared onion (rules in transports.onion) ------------


@dataclass(eq=False, slots=True)
class TorStream:
    """A stream to the other peer, past the hello: framed datagrams from here on."""

    stream: trio.SocketStream
    outbound: bool
    #: The connector's hello nonce: both ends know it, so both keep the same stream.
    nonce: bytes


@dataclass(eq=False, slots=True)
class _Meeting:
    """State shared by one :func:`meet`'s tasks (all in the trio thread)."""

    identity: OnionIdentity
    port: int
    target: int
    jitter: Callable[[], float]
    connect_timeout: float
    service: str | None = None
    own_nonces: set[bytes] = field(default_factory=set)
    self_hits: set[bytes] = field(default_factory=set)
    found: list[TorStream] = field(default_factory=list)
    first: trio.Event = field(default_factory=trio.Event)
    counters: Counter[str] = field(default_factory=Counter)

    def add(self, found: TorStream) -> None:
        self.found.append(found)
        self.first.set()


async def _receive_exactly_or_none(stream: trio.SocketStream, size: int) -> bytes | None:
    try:
        return await receive_exactly(stream, size)
    except (TorConnectError, trio.BrokenResourceError):
        return None


async def _answer(meeting: _Meeting, stream: trio.SocketStream) -> None:
    """The listener side of one accepted stream: SELF is closed, OTHER gets ACCEPT."""
    keep = False
    try:
        with trio.move_on_after(HELLO_TIMEOUT):
            data = await _receive_exactly_or_none(stream, HELLO_SIZE)
            nonce = parse_hello_untrusted(data or b"")
            if classify_hello(nonce, meeting.own_nonces) is Peer.SELF:
                meeting.self_hits.add(nonce)
                meeting.counters["hello_self"] += 1
                return
            await stream.send_all(ACCEPT)
            meeting.add(TorStream(stream, outbound=False, nonce=nonce))
            keep = True
    except BadFrame as exc:
        meeting.counters[exc.reason] += 1
    except trio.BrokenResourceError:
        meeting.counters["hello_broken"] += 1
    finally:
        if not keep:
            await trio.aclose_forcefully(stream)


async def _attempt(meeting: _Meeting, tor: TorLauncher) -> Outcome:
    """One connect with a fresh nonce; OTHER streams are recorded in ``meeting``."""
    nonce = secrets.token_bytes(NONCE_SIZE)
    meeting.own_nonces.add(nonce)
    try:
        with trio.fail_after(meeting.connect_timeout):
            stream = await socks5_connect(
                tor.require_socks(), meeting.identity.address, meeting.port
            )
            try:
                await stream.send_all(encode_hello(nonce))
                reply = await _receive_exactly_or_none(stream, len(ACCEPT))
            except trio.BrokenResourceError:
                reply = None
    except (TorConnectError, trio.TooSlowError) as exc:
        meeting.counters[f"connect_{getattr(exc, 'reason', 'timeout')}"] += 1
        return Outcome.FAILED
    if reply == ACCEPT:
        meeting.add(TorStream(stream, outbound=True, nonce=nonce))
        return Outcome.OTHER
    await trio.aclose_forcefully(stream)
    return Outcome.SELF if nonce in meeting.self_hits else Outcome.FAILED


async def _pause(meeting: _Meeting, seconds: float) -> None:
    """Sleep ``seconds``, or less if a stream to the other peer came up meanwhile."""
    with trio.move_on_after(seconds):
        await meeting.first.wait()


async def _publish(meeting: _Meeting, tor: TorLauncher) -> None:
    """Publish the shared service; a late upload report is counted, not fatal (the
    service is up in tor, and connecting meanwhile costs nothing)."""
    identity = meeting.identity
    try:
        meeting.service = await tor.publish(
            identity.key_blob, meeting.port, meeting.target, timeout=MEET_PUBLISH_WAIT
        )
    except TorPublishTimeout as exc:
        meeting.service = exc.service_id
        meeting.counters["publish_timeout"] += 1


async def _seek(meeting: _Meeting, tor: TorLauncher) -> None:
    """Publish and connect by :func:`transports.onion.plan_after` until a stream is found."""
    jitter = meeting.jitter
    await _publish(meeting, tor)
    failures = selfs = 0
    while not meeting.first.is_set():
        outcome = await _attempt(meeting, tor)
        failures = failures + 1 if outcome is Outcome.FAILED else 0
        selfs += outcome is Outcome.SELF
        plan = plan_after(outcome, failures, selfs, jitter())
        meeting.counters[plan.action.value] += 1
        if plan.action is Action.DONE:
            return
        # Whatever tor fetched led nowhere useful (our own service, or intro points that
        # are gone): the next attempt should look at the HSDirs again.
        await tor.forget_descriptors()
        if plan.action is not Action.WITHDRAW:
            await _pause(meeting, plan.delay)
            continue
        if meeting.service is not None:
            await tor.remove(meeting.service)
            meeting.service = None
        # Connect only, never cutting an attempt short (the other end may count it).
        deadline = trio.current_time() + plan.delay
        while not meeting.first.is_set() and trio.current_time() < deadline:
            if await _attempt(meeting, tor) is Outcome.OTHER:
                return
            await tor.forget_descriptors()
            await _pause(meeting, RETRY_BASE * (1.0 + jitter()))
        if not meeting.first.is_set():
            await _publish(meeting, tor)
            selfs = 0


async def meet(
    tor: TorLauncher,
    identity: OnionIdentity,
    *,
    virtual_port: int = ONION_PORT,
    connect_timeout: float = CONNECT_TIMEOUT,
    grace: float = MEET_GRACE,
    jitter: Callable[[], float] | None = None,
) -> tuple[TorStream, Counter[str]]:
    """One stream to the other peer of ``identity``, chosen the same way at both ends.

    Runs the tie-break of :mod:`transports.onion`; after the first stream is up, the
    listener stays open for ``grace`` and attempts in flight finish, then every stream
    but the one with the lowest connector nonce is closed and the service withdrawn.
    Bound the whole call with ``trio.fail_after(RENDEZVOUS_TIMEOUT)`` or similar.
    """
    listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
    target = int(listeners[0].socket.getsockname()[1])
    meeting = _Meeting(
        identity, virtual_port, target, jitter or _SYSTEM_RANDOM.random, connect_timeout
    )
    try:
        # Attempts in flight and hellos being answered are never cancelled (each is
        # bounded): a stream one end counted is then counted by the other end too.
        with single_errors():
            async with trio.open_nursery() as nursery:
                accepting = trio.CancelScope()

                async def accept_loop() -> None:
                    with accepting:
                        while True:
                            stream = await listeners[0].accept()
                            nursery.start_soon(_answer, meeting, stream)

                nursery.start_soon(accept_loop)
                nursery.start_soon(_seek, meeting, tor)
                await meeting.first.wait()
                await trio.sleep(grace)
                accepting.cancel()
    except BaseException:
        for found in meeting.found:
            await trio.aclose_forcefully(found.stream)
        raise
    finally:
        await trio.aclose_forcefully(listeners[0])
        if meeting.service is not None:
            with trio.CancelScope(shield=True), contextlib.suppress(TorControlError):
                await tor.remove(meeting.service)
    keep = min(meeting.found, key=lambda found: found.nonce)
    for other in meeting.found:
        if other is not keep:
            await trio.aclose_forcefully(other.stream)
    meeting.counters["streams_found"] = len(meeting.found)
    return keep, meeting.counters
