"""Tor as one of the node's paths: a tor of our own (or the user's), the meeting at the
passphrase's onion, and the stream handed to the node as a link.

Why apart from :mod:`p2pd.node`: tor is slow to start and slow to meet (seconds to a
minute), and its failures are of another kind (a missing binary, a refused control port).
This runner owns all of that in one task; the node sees only "here is a stream to the
other peer" and "is a meeting still needed?".

When it meets: tor is launched (or attached) at once, because bootstrapping takes longer
than the other paths need; the meeting starts :attr:`TorSettings.after` seconds after the
node started (immediately with ``--tor-only``), and only while no peer is connected and no
Tor stream is open.  A stream that closes (the peer left, or the session moved to a direct
path and the stream idled out) makes the runner wait for the same condition again, so a
node that loses its direct path meets at the onion anew.

Errors: a setup failure (tor missing, control port refused, no bootstrap) is the user's to
fix and ends the node with one clear line; a meeting that times out is counted and retried.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Final

import trio

from p2pd.derive import Params
from p2pd.node_types import NodeEvent, TorProgress, TorSettings
from transports.onion import OnionIdentity
from transports.tor import TorLauncher
from transports.tor_meet import TorStream, meet

#: Seconds one meeting may take before it is abandoned and started again; a meeting with a
#: withdrawal round took 91 s in the lab, and the real network is slower.
MEET_TIMEOUT: Final = 300.0
#: Pause after a meeting that timed out, before the next one.
MEET_RETRY: Final = 5.0
#: Directory under the state directory holding one tor data directory per passphrase
#: (named by the public rendezvous id), so nodes of one daemon never share a tor lock.
TOR_NODES_DIR: Final = "tor-nodes"

OnStream = Callable[[TorStream], None]
Needed = Callable[[], bool]


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
        self.identity = OnionIdentity.from_seed(params.onion_seed)
        self._rendezvous = params.rendezvous_id.hex()[:16]
        self._on_stream = on_stream
        self._needed = needed
        self._on_progress = on_progress
        self.counters = counters
        #: starting, ready (bootstrapped, not meeting), meeting, met.
        self.state = "starting"
        self._launched = False
        self._changed = trio.Event()

    def __repr__(self) -> str:
        return f"TorRunner(state={self.state}, only={self.settings.only})"

    def poke(self) -> None:
        """Something the meeting condition depends on changed (a peer, a Tor link)."""
        self._changed.set()

    def status(self) -> dict[str, object]:
        """For ``p2pd status``: what tor is doing, whether it is ours, the shared onion."""
        return {
            "state": self.state,
            "only": self.settings.only,
            "launched": self._launched,
            "onion": self.identity.address,
        }

    def _launcher(self) -> TorLauncher:
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
        )

    def _progress(self, state: str, since: float) -> None:
        self.state = state
        self._on_progress(TorProgress(state, trio.current_time() - since))

    async def run(self) -> None:
        """Launch or attach, then meet whenever needed, until cancelled."""
        started = trio.current_time()
        async with self._launcher() as tor:
            self._launched = tor.launched
            self.counters["tor_ready"] += 1
            self._progress("bootstrapped", started)
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
        while not self._needed():
            self._changed = trio.Event()
            await self._changed.wait()
