"""Tor as one of the node's paths: a tor of our own (or the user's), the meeting at the
passphrase's onion, and the stream handed to the node as a link.

Why apart from :mod:`p2pd.node`: tor is slow to start and slow to meet (seconds to a
minute), and its failures are of another kind (a missing binary, a refused control port).
This runner owns all of that in one task; the node sees only "here is a stream to the
other peer" and "is a meeting still needed?".

When it meets: tor is launched (or attached) at once, because bootstrapping takes longer
than the other paths need; the meeting starts :attr:`TorSettings.after` seconds after the
node started (immediately with ``--tor-only``), and only while no peer is connected and no
Tor stream is open.  A session that moved to a direct path keeps its stream as a warm
standby (:mod:`p2pd.peer`), so losing the direct path needs no new meeting; a stream that
closes (the peer left, the Tor network lost it) makes the runner wait for the same
condition again, so a node left with nothing meets at the onion anew.

Errors: a setup failure (tor missing, control port refused) is the user's to fix and ends
the node with one clear line; a meeting that times out is counted and retried.  A tor that
does not bootstrap in time is the network's doing, not the user's: with ``--tor`` Tor is
only the last resort, so the node keeps its other paths, reports ``bootstrap_timeout`` and
launches (or asks) tor again after :data:`TOR_RETRY`; with ``--tor-only`` (or an invite)
nothing else could carry the session, so the node ends with that one line.

Invites (:mod:`p2pd.invite`, ``TorSettings.invite``) replace the meeting by two plain roles,
with no hello (the onion is not shared by the two ends, so nobody can reach itself):

* host: publish the invite's random onion and accept *one stream at a time* on a loopback
  listener, handing it to the node; when :meth:`TorRunner.spend` says a peer completed the
  handshake, withdraw the service (DEL_ONION) and close the listener, so nobody else can
  use the invite.  A stream that closes before that frees the listener for the next one.
* join: connect to the invite's onion, retrying with backoff (and a fresh descriptor
  lookup) until the invite expires, then end the node with :class:`InviteUnusedError`.

An invite's tor data directory is named by the invite's random rendezvous id, so it is
removed when the runner ends (it would only pile up: no invite is used twice).
"""

from __future__ import annotations

import contextlib
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Final

import trio

from p2pd.derive import Params
from p2pd.invite import CLOCK_SKEW, InviteUnusedError
from p2pd.node_types import NodeEvent, TorInvite, TorProgress, TorSettings
from transports.onion import OnionIdentity, Outcome, plan_after
from transports.socks5 import TorConnectError
from transports.tor import (
    LOOPBACK,
    TorBootstrapTimeout,
    TorControlError,
    TorLauncher,
    TorPublishTimeout,
)
from transports.tor_meet import CONNECT_TIMEOUT, MEET_PUBLISH_WAIT, ONION_PORT, TorStream, meet

#: Seconds one meeting may take before it is abandoned and started again; a meeting with a
#: withdrawal round took 91 s in the lab, and the real network is slower.
MEET_TIMEOUT: Final = 300.0
#: Pause after a meeting that timed out, before the next one.
MEET_RETRY: Final = 5.0
#: Pause after tor failed to bootstrap (``--tor`` only), before trying it again.
TOR_RETRY: Final = 60.0
#: Directory under the state directory holding one tor data directory per passphrase
#: (named by the public rendezvous id), so nodes of one daemon never share a tor lock.
TOR_NODES_DIR: Final = "tor-nodes"

OnStream = Callable[[TorStream], None]
Needed = Callable[[], bool]

#: Jitter of the joiner's retry delays (not secret, but not predictable either).
_SYSTEM_RANDOM = random.SystemRandom()


class TorRunner:
    """One node's tor; see the module docstring."""

    def __init__(
        self,
        params: Params,
        settings: TorSettings,
        *,
        on_stream: OnStream,
        needed: Needed,
        on_progress: Callable[[NodeEvent], None],
        counters: Counter[str],
    ) -> None:
        self.settings = settings
        invite = settings.invite
        seed = invite.seed if invite is not None and invite.seed is not None else None
        self.identity = OnionIdentity.from_seed(seed or params.onion_seed)
        #: The onion this node publishes or connects to.
        self.onion = invite.address if invite is not None else self.identity.address
        self._rendezvous = params.rendezvous_id.hex()[:16]
        self._on_stream = on_stream
        self._needed = needed
        self._on_progress = on_progress
        self.counters = counters
        #: starting, ready (bootstrapped, not meeting), meeting, met.
        self.state = "starting"
        self._launched = False
        self._changed = trio.Event()
        #: Host of an invite: a peer completed the handshake, the onion is to be withdrawn.
        self._spent = False

    def __repr__(self) -> str:
        return f"TorRunner(state={self.state}, only={self.settings.only})"

    def poke(self) -> None:
        """Something the meeting condition depends on changed (a peer, a Tor link)."""
        self._changed.set()

    def spend(self) -> None:
        """The invite's peer completed the handshake: withdraw the onion (host role)."""
        self._spent = True
        self._changed.set()

    def status(self) -> dict[str, object]:
        """For ``p2pd status``: what tor is doing, whether it is ours, the shared onion."""
        return {
            "state": self.state,
            "only": self.settings.only,
            "launched": self._launched,
            "onion": self.onion,
            "invite": None if self.settings.invite is None else self._invite_role(),
        }

    def _invite_role(self) -> str:
        assert self.settings.invite is not None
        return "host" if self.settings.invite.host else "join"

    def _launcher(self, since: float) -> TorLauncher:
        settings = self.settings
        state_dir: Path | None = None
        if settings.control is None:
            if settings.state_dir is None:
                raise ValueError("TorSettings.state_dir is needed to launch tor")
            state_dir = settings.state_dir / TOR_NODES_DIR / self._rendezvous
        return TorLauncher(
            state_dir=state_dir,
            control=settings.control,
            password=settings.password,
            cookie_path=settings.cookie_path,
            torrc=settings.torrc,
            on_bootstrap=self._bootstrap_shower(since),
        )

    def _progress(self, state: str, since: float, percent: int | None = None) -> None:
        self.state = state
        self._on_progress(TorProgress(state, trio.current_time() - since, percent))

    def _bootstrap_shower(self, since: float) -> Callable[[int], None]:
        """What the launcher calls as tor bootstraps: a ``bootstrapping`` event each time
        the percentage enters a new tenth (below 100, which ``bootstrapped`` says)."""
        shown = -1

        def show(percent: int) -> None:
            nonlocal shown
            if percent // 10 > shown and percent < 100:
                shown = percent // 10
                self._progress("bootstrapping", since, percent)

        return show

    async def run(self) -> None:
        """Launch or attach, then meet whenever needed (or serve the invite), until cancelled;
        a tor that does not bootstrap is tried again unless Tor is the only path."""
        while True:
            started = trio.current_time()
            launcher = self._launcher(started)
            try:
                await self._run(launcher)
            except TorBootstrapTimeout:
                if self.settings.only:
                    raise
                self.counters["tor_bootstrap_timeout"] += 1
                self._progress("bootstrap_timeout", started)
            finally:
                if self.settings.invite is not None and launcher.state_dir is not None:
                    shutil.rmtree(launcher.state_dir, ignore_errors=True)
            await trio.sleep(TOR_RETRY)

    async def _run(self, launcher: TorLauncher) -> None:
        started = trio.current_time()
        async with launcher as tor:
            self._launched = tor.launched
            self.counters["tor_ready"] += 1
            self._progress("bootstrapped", started)
            invite = self.settings.invite
            if invite is not None and invite.host:
                await self._host(tor)
            elif invite is not None:
                await self._join(tor, invite)
            await trio.sleep(max(0.0, started + self.settings.after - trio.current_time()))
            while True:
                await self._until_needed()
                began = trio.current_time()
                self._progress("meeting", began)
                found: TorStream | None = None
                with trio.move_on_after(MEET_TIMEOUT):
                    found, meet_counters = await meet(tor, self.identity)
                    self.counters.update({f"tor_{k}": v for k, v in meet_counters.items()})
                if found is None:
                    self.counters["tor_meet_timeout"] += 1
                    self._progress("meet_timeout", began)
                    await trio.sleep(MEET_RETRY)
                    continue
                self.counters["tor_met"] += 1
                self._progress("met", began)
                self._on_stream(found)

    async def _until_needed(self) -> None:
        await self._until(self._needed)

    async def _until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            self._changed = trio.Event()
            await self._changed.wait()

    async def _host(self, tor: TorLauncher) -> None:
        """Publish the invite's onion, hand over one stream at a time until one became a
        peer (:meth:`spend`), then withdraw the onion and idle until cancelled."""
        began = trio.current_time()
        listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
        listener = listeners[0]
        target = int(listener.socket.getsockname()[1])
        service: str | None = None
        try:
            try:
                service = await tor.publish(
                    self.identity.key_blob, ONION_PORT, target, timeout=MEET_PUBLISH_WAIT
                )
            except TorPublishTimeout as exc:  # up in tor; the upload report is late
                service = exc.service_id
                self.counters["tor_publish_timeout"] += 1
            self._progress("invite_published", began)
            while not self._spent:
                stream = await listener.accept()
                self.counters["tor_invite_streams"] += 1
                self._on_stream(TorStream(stream, outbound=False, nonce=b""))
                # Until it became a peer (spent), or closed first (needed again).
                await self._until(lambda: self._spent or self._needed())
        finally:
            await trio.aclose_forcefully(listener)
            if service is not None:
                with trio.CancelScope(shield=True), contextlib.suppress(TorControlError):
                    await tor.remove(service)
        self.counters["tor_invite_withdrawn"] += 1
        self._progress("invite_withdrawn", began)
        await trio.sleep_forever()

    async def _join(self, tor: TorLauncher, invite: TorInvite) -> None:
        """Connect to the invite's onion whenever no stream is open, until it expires."""
        began = trio.current_time()
        self._progress("joining", began)
        failures = 0
        met = False
        while True:
            await self._until_needed()
            remaining = invite.expires_at + CLOCK_SKEW - time.time()
            if remaining <= 0:
                if met:
                    raise InviteUnusedError("the invite expired and the inviter is gone")
                raise InviteUnusedError("the invite expired before the inviter answered")
            try:
                stream = await tor.connect(
                    invite.address, ONION_PORT, min(CONNECT_TIMEOUT, remaining)
                )
            except TorConnectError as exc:
                failures += 1
                self.counters[f"tor_connect_{exc.reason}"] += 1
                # The descriptor may be missing or stale (intro points gone): look again.
                await tor.forget_descriptors()
                plan = plan_after(Outcome.FAILED, failures, 0, _SYSTEM_RANDOM.random())
                await trio.sleep(min(plan.delay, max(0.0, remaining)))
                continue
            failures = 0
            met = True
            self.counters["tor_met"] += 1
            self._progress("met", began)
            self._on_stream(TorStream(stream, outbound=True, nonce=b""))
