"""The daemon's ``[tor]`` table: the Tor flags, from the config file, under the command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pd.cli import build_parser
from p2pd.daemon import config
from p2pd.daemon.config import ConfigError, DaemonConfig
from p2pd.node_types import TOR_AFTER


def _load(tmp_path: Path, toml: str, *flags: str) -> DaemonConfig:
    path = tmp_path / "p2pd.toml"
    path.write_text(toml, encoding="utf-8")
    args = build_parser().parse_args(
        ["--state-dir", str(tmp_path / "state"), "daemon", "--config", str(path), *flags]
    )
    return config.load(args)


def test_without_a_tor_table_there_is_no_tor(tmp_path: Path) -> None:
    assert _load(tmp_path, 'log_level = "info"\n').node.tor is None


def test_enabled_races_a_tor_of_our_own_as_the_last_resort(tmp_path: Path) -> None:
    tor = _load(tmp_path, "[tor]\nenabled = true\n").node.tor
    assert tor is not None
    assert (tor.only, tor.control, tor.after) == (False, None, TOR_AFTER)


def test_only_turns_off_every_path_outside_tor(tmp_path: Path) -> None:
    node = _load(tmp_path, "[tor]\nonly = true\n").node
    assert node.tor is not None and node.tor.only
    assert not (node.mdns or node.beacons or node.portmap or node.tcp)


def test_control_and_config_are_read(tmp_path: Path) -> None:
    torrc = tmp_path / "torrc"
    torrc.write_text("UseBridges 1\n", encoding="utf-8")
    tor = _load(tmp_path, f'[tor]\nconfig = "{torrc}"\n').node.tor
    assert tor is not None and tor.torrc == {"UseBridges": "1"}
    tor = _load(tmp_path, '[tor]\ncontrol = "127.0.0.1:9051"\n').node.tor
    assert tor is not None and tor.control == ("127.0.0.1", 9051)


def test_the_command_line_wins_over_the_file(tmp_path: Path) -> None:
    toml = '[tor]\ncontrol = "127.0.0.1:9051"\n'
    tor = _load(tmp_path, toml, "--tor-control", "127.0.0.1:9151").node.tor
    assert tor is not None and tor.control == ("127.0.0.1", 9151)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[tor]\npassword = "x"\n', "set the environment variable P2PD_TOR_PASSWORD instead"),
        ("[tor]\nbridges = 1\n", "unknown key 'bridges' in [tor]"),
        ('[tor]\nenabled = "yes"\n', "tor.enabled must be a bool"),
        ("[tor]\ncontrol = 9051\n", "tor.control must be a str"),
        ('[tor]\nonly = true\n[node]\nstun = ["192.0.2.1:3478"]\n', "sends nothing outside Tor"),
        ("tor = 1\n", "[tor] must be a table"),
    ],
)
def test_bad_tor_tables_are_one_clear_error(tmp_path: Path, toml: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, toml)
    assert message in str(caught.value)
