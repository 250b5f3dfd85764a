"""What a node's TorRunner does when tor does not bootstrap: with ``--tor`` (Tor only the last
resort) it reports ``bootstrap_timeout`` and tries again, keeping the node alive; with
``--tor-only`` the node ends, since nothing else could carry the session.

The launcher is replaced by one that fails the way a real one does on a slow or blocked
network (tests/integration/test_tor_transport.py shows a real tor doing so); the clock is
trio's MockClock, so the 60-second retry costs nothing.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from p2pd.derive import params_from_master
from p2pd.node_tor import TOR_RETRY, TorRunner
from p2pd.node_types import NodeEvent, TorProgress, TorSettings
from transports.tor import TorBootstrapTimeout, bootstrap_percent


class _NeverBootstraps:
    """A launcher that fails to bootstrap after ``delay`` seconds, like TorLauncher."""

    state_dir = None

    def __init__(self, delay: float, launches: list[float]) -> None:
        self.delay = delay
        self.launches = launches

    async def __aenter__(self) -> Any:
        self.launches.append(trio.current_time())
        await trio.sleep(self.delay)
        raise TorBootstrapTimeout(f"tor did not bootstrap in {self.delay:.0f} s")

    async def __aexit__(self, *exc_info: object) -> None:  # pragma: no cover - never entered
        pass


class _Runner(TorRunner):
    def __init__(self, settings: TorSettings, launches: list[float], events: list[Any]) -> None:
        super().__init__(
            params_from_master(bytes(32)),
            settings,
            on_stream=lambda stream: None,
            needed=lambda: True,
            on_progress=events.append,
            counters=Counter(),
        )
        self._launches = launches

    def _launcher(self, since: float) -> Any:
        return _NeverBootstraps(120.0, self._launches)


def _runner(tmp_path: Path, *, only: bool) -> tuple[_Runner, list[float], list[NodeEvent]]:
    launches: list[float] = []
    events: list[NodeEvent] = []
    settings = TorSettings(only=only, state_dir=tmp_path)
    return _Runner(settings, launches, events), launches, events


async def test_with_tor_as_last_resort_a_failed_bootstrap_is_reported_and_retried(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    runner, launches, events = _runner(tmp_path, only=False)
    with trio.move_on_after(2 * (120.0 + TOR_RETRY) + 1):
        await runner.run()  # never raises: the node keeps its other paths
    assert [round(t) for t in launches] == [0, 180, 360]
    assert events == [TorProgress("bootstrap_timeout", 120.0)] * 2
    assert runner.counters["tor_bootstrap_timeout"] == 2
    assert runner.state == "bootstrap_timeout"


async def test_tor_only_ends_with_the_bootstrap_timeout(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    runner, launches, events = _runner(tmp_path, only=True)
    with pytest.raises(TorBootstrapTimeout, match="did not bootstrap in 120 s"):
        await runner.run()
    assert len(launches) == 1 and events == []


@pytest.mark.parametrize(
    ("phase", "percent"),
    [
        ('NOTICE BOOTSTRAP PROGRESS=45 TAG=requesting_descriptors SUMMARY="Asking"', 45),
        ('NOTICE BOOTSTRAP PROGRESS=100 TAG=done SUMMARY="Done"', 100),
        ("NOTICE BOOTSTRAP TAG=starting", None),
        ("PROGRESS=250", None),
        ("XPROGRESS=5", None),
        ("", None),
    ],
)
def test_the_bootstrap_percentage_is_read_from_the_phase(phase: str, percent: int | None) -> None:
    assert bootstrap_percent(phase) == percent


async def test_bootstrapping_is_shown_once_a_tenth_and_not_at_100(tmp_path: Path) -> None:
    runner, _, events = _runner(tmp_path, only=False)
    show = runner._bootstrap_shower(trio.current_time())
    for percent in (0, 5, 10, 14, 15, 25, 30, 45, 50, 89, 90, 95, 100):
        show(percent)
    shown = [e.percent for e in events if isinstance(e, TorProgress)]
    assert shown == [0, 10, 25, 30, 45, 50, 89, 90]
    assert {e.state for e in events if isinstance(e, TorProgress)} == {"bootstrapping"}
