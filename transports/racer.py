"""The race: try candidates one stagger apart, best path first, and report which one won.

Theory of operation
-------------------
Transports emit candidates in any order and at any time.  Waiting for all of them would
delay the common case (a LAN peer answers in a millisecond); starting all at once would
spray handshakes at every stale address.  So, in the spirit of Happy Eyeballs (RFC 8305):

- A new candidate waits in a queue ordered by path rank (``lan`` < ``mapped`` < ``direct``
  < ``punched`` < ``relay`` < ``tcp`` < ``tor``, see :data:`transports.base.PATHS`), then
  arrival.  An address is raced at most once per race: a repeat is dropped, or, while
  still queued, lifts the queued entry to the better path.
- Attempts start :data:`STAGGER_DELAY` apart: the first as soon as a candidate exists, the
  next one stagger after the previous start, unless an attempt failed first (then the next
  one starts at once, as RFC 8305 section 5).  Started attempts are never stopped by the
  racer; the node's handshake retries and times them out.
- The first ``won(addr, now)`` ends the race: the queue is dropped (kept in ``unraced`` for
  a caller that knows other peers may wait there), nothing more starts, and the result says
  which path won and how long after the start of the race.  A later
  ``won`` for another raced address (a second peer, an inbound session) still reports its
  path and time.  :meth:`RaceCore.restart` begins a new race, e.g. after the peer is lost.

:class:`RaceCore` is sans-IO (``now`` is the node's monotonic clock; ``get_timer`` and
``handle_timer`` as aioquic's connection).  :class:`Racer` is a thin trio driver for
callers that want the whole race as one ``await``.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import trio

from transports.base import Addr, Candidate, Path, Transport

#: Seconds between the starts of two attempts.  RFC 8305 recommends 250 ms ("Connection
#: Attempt Delay"): long enough for a LAN or nearby peer to answer first, short enough that
#: a dead candidate costs little.
STAGGER_DELAY = 0.25


@dataclass(frozen=True, slots=True)
class Attempt:
    """Start a connection attempt to ``candidate.addr`` (the node calls ``connect``)."""

    candidate: Candidate
    started_at: float


@dataclass(frozen=True, slots=True)
class RaceResult:
    """Which path won, to which address, and seconds from the start of the race."""

    path: Path
    addr: Addr
    elapsed: float


class RaceCore:
    """Sans-IO race state; see the module docstring.

    Usage: ``add`` candidates as they arrive; whenever ``now >= get_timer()``, call
    ``handle_timer(now)`` and start every attempt ``next_attempt()`` returns (or call
    ``due(now)`` for both at once); report ``failed`` and ``won``.
    """

    def __init__(self, now: float, *, stagger: float = STAGGER_DELAY) -> None:
        self.stagger = stagger
        self.dropped_duplicates = 0
        self._reset(now)

    def _reset(self, now: float) -> None:
        self.started_at = now
        self.winner: RaceResult | None = None
        self._seq = itertools.count()
        self._queue: list[tuple[int, int, Addr]] = []  # (rank, arrival, addr) heap
        self._queued: dict[Addr, Candidate] = {}
        self._raced: dict[Addr, Candidate] = {}
        self._in_flight: set[Addr] = set()
        self._next_start = -math.inf
        self._ready: list[Attempt] = []
        #: Candidates still queued when the race was won (other peers may be there).
        self.unraced: list[Candidate] = []

    def __repr__(self) -> str:
        return (
            f"RaceCore(queued={len(self._queued)}, raced={len(self._raced)}, winner={self.winner})"
        )

    def restart(self, now: float) -> None:
        """Forget everything and start a new race at ``now``."""
        self._reset(now)

    @property
    def over(self) -> bool:
        """Whether some candidate has won."""
        return self.winner is not None

    def add(self, candidate: Candidate, now: float) -> bool:
        """Queue ``candidate``; False if it changes nothing (raced, queued as good, race over)."""
        addr = candidate.addr
        if self.over or addr in self._raced:
            self.dropped_duplicates += 1
            return False
        queued = self._queued.get(addr)
        if queued is not None and queued.rank <= candidate.rank:
            self.dropped_duplicates += 1
            return False
        # A better path for a queued address: the stale heap entry is skipped when popped.
        self._queued[addr] = candidate
        heapq.heappush(self._queue, (candidate.rank, next(self._seq), addr))
        return True

    def get_timer(self) -> float | None:
        """When the next attempt may start, or None if nothing is waiting."""
        if self.over or not self._queued:
            return None
        return self._next_start

    def handle_timer(self, now: float) -> None:
        """Start the best queued candidate if its time has come (at most one per stagger)."""
        if self.over or not self._queued or now < self._next_start:
            return
        while self._queue:
            rank, _, addr = heapq.heappop(self._queue)
            candidate = self._queued.get(addr)
            if candidate is not None and candidate.rank == rank:
                break
        else:  # pragma: no cover - _queued and _queue are kept in step
            return
        del self._queued[addr]
        self._raced[addr] = candidate
        self._in_flight.add(addr)
        self._next_start = now + self.stagger
        self._ready.append(Attempt(candidate, now))

    def next_attempt(self) -> Attempt | None:
        """The next attempt to start, or None."""
        return self._ready.pop(0) if self._ready else None

    def due(self, now: float) -> list[Addr]:
        """``handle_timer(now)`` then every ready attempt's address: what the node connects to."""
        self.handle_timer(now)
        addrs = [attempt.candidate.addr for attempt in self._ready]
        self._ready.clear()
        return addrs

    def failed(self, addr: Addr, now: float) -> None:
        """The attempt to ``addr`` gave up: the next candidate may start at once."""
        if addr in self._in_flight:
            self._in_flight.discard(addr)
            self._next_start = min(self._next_start, now)

    def won(self, addr: Addr, now: float) -> RaceResult | None:
        """A session to ``addr`` is up; None if ``addr`` was never a candidate of this race."""
        candidate = self._raced.get(addr) or self._queued.get(addr)
        if candidate is None:
            return None
        result = RaceResult(candidate.path, addr, now - self.started_at)
        if self.winner is None:
            self.winner = result
            self.unraced = sorted(self._queued.values(), key=lambda c: c.rank)
            self._queue.clear()
            self._queued.clear()
            self._ready.clear()
        return result


#: A connection attempt: True when a session is up, False (or OSError) when it gave up.
AttemptFn = Callable[[Candidate], Awaitable[bool]]


class Racer:
    """Run transports and attempts under trio until one attempt (or :meth:`won`) wins."""

    def __init__(self, attempt: AttemptFn, *, stagger: float = STAGGER_DELAY) -> None:
        self._attempt = attempt
        self._stagger = stagger
        self._core: RaceCore | None = None
        self._early: list[Candidate] = []
        self._kick = trio.Event()

    @property
    def core(self) -> RaceCore | None:
        """The race in progress (None before :meth:`run`)."""
        return self._core

    def emit(self, candidate: Candidate) -> None:
        """Add a candidate (a transport's ``emit``); safe before :meth:`run` starts."""
        if self._core is None:
            self._early.append(candidate)
        else:
            self._core.add(candidate, trio.current_time())
        self._kick.set()

    def won(self, addr: Addr) -> RaceResult | None:
        """Report a session that came up some other way (e.g. the peer connected to us)."""
        result = self._core.won(addr, trio.current_time()) if self._core else None
        self._kick.set()
        return result

    async def run(self, transports: Sequence[Transport] = ()) -> RaceResult:
        """Race until something wins; cancels transports and attempts still running."""
        core = self._core = RaceCore(trio.current_time(), stagger=self._stagger)
        for candidate in self._early:
            core.add(candidate, core.started_at)
        self._early.clear()
        async with trio.open_nursery() as nursery:
            for transport in transports:
                nursery.start_soon(transport.run, self.emit, name=f"transport-{transport.name}")
            while (result := core.winner) is None:
                core.handle_timer(trio.current_time())
                while (attempt := core.next_attempt()) is not None:
                    nursery.start_soon(self._run_attempt, core, attempt.candidate)
                timer = core.get_timer()
                with trio.move_on_at(math.inf if timer is None else timer):
                    await self._kick.wait()
                self._kick = trio.Event()
            nursery.cancel_scope.cancel()
        return result

    async def _run_attempt(self, core: RaceCore, candidate: Candidate) -> None:
        try:
            ok = await self._attempt(candidate)
        except OSError:
            ok = False
        if ok:
            core.won(candidate.addr, trio.current_time())
        else:
            core.failed(candidate.addr, trio.current_time())
        self._kick.set()
