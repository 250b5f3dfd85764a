"""``p2pd status`` says when a node is Tor only, and what its tor is doing."""

from __future__ import annotations

from pathlib import Path

from p2pd.cli import _wan_line
from p2pd.derive import params_from_master
from p2pd.identity import load_or_create
from p2pd.node import Node, NodeConfig
from p2pd.node_types import TorSettings


def test_a_tor_only_node_reports_it_before_and_after_start(tmp_path: Path) -> None:
    params = params_from_master(bytes(32))
    identity = load_or_create(tmp_path / "state")
    only = Node(params, identity, NodeConfig(tor=TorSettings(only=True)))
    plain = Node(params, identity, NodeConfig())
    assert only.tor_only and only.wan_status()["tor_only"] is True
    assert not plain.tor_only and plain.wan_status()["tor_only"] is False


def test_the_status_line_names_tor_only_and_the_tor_state() -> None:
    line = _wan_line({"tor_only": True, "tor": {"state": "met"}})
    assert line == "Tor only (nothing leaves outside Tor), tor met"
    assert _wan_line({"tor_only": False, "tor": {"state": "meeting"}}).endswith("tor meeting")
    assert "tor" not in _wan_line({"tor_only": False})
