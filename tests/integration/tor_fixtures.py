"""The private Tor network for the integration tests that run p2pd over Tor.

Why a module: several test files need the same network, the same ``--tor-config`` file and
the same rule (tornet.require_tor: skip without tor, fail in CI).  Import the fixtures
into a test module with ``from tests.integration.tor_fixtures import net, torrc``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.netlab import tornet


@pytest.fixture(scope="module")
def net() -> Iterator[tornet.TorNet]:
    """One private, offline Tor network for the module."""
    tornet.require_tor()
    with tornet.TorNet() as network:
        yield network


@pytest.fixture
def torrc(net: tornet.TorNet, tmp_path: Path) -> Path:
    """A ``--tor-config`` file pointing a p2pd-launched tor at the network."""
    return net.write_p2pd_torrc(tmp_path / "torrc")


def json_events(out: str) -> list[dict[str, Any]]:
    """The ``--json`` events a command printed."""
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]
