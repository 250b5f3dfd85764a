"""Two ``p2pd`` processes that share only a passphrase meet through a private Tor network.

Each process launches its own tor (``--tor-config`` points it at the lab's authorities) and
meets the other at the onion derived from the passphrase: no address, no offer, no assist.
LAN discovery is off, so Tor is the only way they can find each other.  Nothing here ever
dials the real Tor network (tests/netlab/tornet.py builds the network offline).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

from stem.control import Controller

from tests.integration.conftest import Procs, fresh_passphrase, json_events, read_line
from tests.integration.daemon_fixture import Daemons, daemons_fixture  # noqa: F401  (fixture)
from tests.netlab import tornet

#: No LAN beacon, no mDNS, no gateway: the processes can meet only through Tor.
NO_LAN = ("--interface", "lo", "--no-mdns", "--no-beacon", "--no-upnp")
#: Seconds a process gets: its tor bootstraps (7-26 s here), then the meeting (5-90 s).
TIMEOUT = 240
#: The large message: 5 MiB (issue 6).
BIG = 5 * 1024 * 1024


def _send(procs: Procs, name: str, phrase: str, torrc: Path, *extra: str) -> subprocess.Popen[str]:
    return procs.start(
        name,
        "send",
        *extra,
        "--json",
        "--tor-config",
        str(torrc),
        "--timeout",
        str(TIMEOUT),
        *NO_LAN,
        env={"P2PD_PASSPHRASE": phrase},
    )


def test_started_at_the_same_instant_they_meet_over_tor_and_talk_both_ways(
    procs: Procs, torrc: Path
) -> None:
    """``--tor``: both start together, connect on path ``tor``, each gets the other's
    message.  On one host their candidates (loopback) then let the session move off Tor."""
    phrase = fresh_passphrase()
    a = _send(procs, "a", phrase, torrc, "--tor", "from a")
    b = _send(procs, "b", phrase, torrc, "--tor", "from b")
    results = {
        name: procs.finish(proc, timeout=TIMEOUT + 30) for name, proc in (("a", a), ("b", b))
    }
    for name, (rc, _out, err) in results.items():
        assert rc == 0, f"{name}: {err}"
    for name, other in (("a", "b"), ("b", "a")):
        events = json_events(results[name][1])
        connected = [e for e in events if e["event"] == "connected"]
        assert connected and connected[0]["path"] == "tor", events
        messages = [e for e in events if e["event"] == "message"]
        assert [m["text"] for m in messages] == [f"from {other}"], events
        assert any(e["event"] == "delivered" for e in events), events
        # Its own tor's bootstrap is shown as it goes, then once done.
        tor = [e for e in events if e["event"] == "tor"]
        booting = [e["percent"] for e in tor if e["state"] == "bootstrapping"]
        assert booting and booting == sorted(booting) and booting[-1] < 100, tor
        assert tor[len(booting)]["state"] == "bootstrapped", tor


def test_tor_only_carries_five_mib_intact(procs: Procs, torrc: Path, tmp_path: Path) -> None:
    """``--tor-only``: the session never leaves Tor, and 5 MiB arrive byte for byte."""
    phrase = fresh_passphrase()
    blob = tmp_path / "big.txt"
    # Text (the message is UTF-8): random hex, so nothing along the way could compress it.
    blob.write_text(os.urandom(BIG // 2).hex(), encoding="utf-8")
    receiver = procs.start(
        "r",
        "listen",
        "--json",
        "--tor-only",
        "--tor-config",
        str(torrc),
        "--count",
        "1",
        "--timeout",
        str(TIMEOUT),
        env={"P2PD_PASSPHRASE": phrase},
    )
    # Drain the receiver's stdout from now on (read_line starts a reader thread): a 10 MiB
    # line into a full pipe would block the receiver's event loop.
    assert json.loads(read_line(receiver, 60, stdout=True))["event"] == "listening"
    sender = procs.start(
        "s",
        "send",
        "--json",
        "--tor-only",
        "--tor-config",
        str(torrc),
        "--timeout",
        str(TIMEOUT),
        "--message-file",
        str(blob),
        env={"P2PD_PASSPHRASE": phrase},
    )
    rc_s, out_s, err_s = procs.finish(sender, timeout=TIMEOUT + 60)
    rc_r, out_r, err_r = procs.finish(receiver, timeout=TIMEOUT + 60)
    assert rc_s == 0, err_s
    assert rc_r == 0, err_r
    sent = json_events(out_s)
    assert {e["path"] for e in sent if e["event"] in ("connected", "delivered")} == {"tor"}
    assert not [e for e in sent if e["event"] == "path"], sent
    got = [e for e in json_events(out_r) if e["event"] == "message"]
    assert len(got) == 1
    digest = hashlib.sha256(got[0]["text"].encode()).hexdigest()
    assert digest == hashlib.sha256(blob.read_bytes()).hexdigest()


def test_tor_only_refuses_options_that_leave_tor(procs: Procs) -> None:
    rc, _, err = procs.finish(
        procs.start(
            "x",
            "send",
            "--tor-only",
            "--target",
            "127.0.0.1:9",
            "m",
            env={"P2PD_PASSPHRASE": fresh_passphrase()},
        )
    )
    assert rc == 2
    assert err.strip() == "p2pd: error: --tor-only sends nothing outside Tor: drop --target"


def test_attached_to_running_tors_they_meet_tor_only_and_leave_those_tors_running(
    procs: Procs, net: tornet.TorNet
) -> None:
    """``--tor-control HOST:PORT``: each node uses a tor that was running before it (cookie
    authentication, the cookie found through PROTOCOLINFO), meets the other over it, and
    on exit leaves that tor running with no onion service of its own left behind."""
    phrase = fresh_passphrase()
    procs_by_name: dict[str, subprocess.Popen[str]] = {}
    for name, text in (("a", "from a"), ("b", "from b")):
        control = f"127.0.0.1:{net.clients[name].control_port}"
        procs_by_name[name] = procs.start(
            name,
            "send",
            "--json",
            "--tor-only",
            "--tor-control",
            control,
            "--timeout",
            str(TIMEOUT),
            text,
            env={"P2PD_PASSPHRASE": phrase},
        )
    results = {
        name: procs.finish(proc, timeout=TIMEOUT + 30) for name, proc in procs_by_name.items()
    }
    for name, other in (("a", "b"), ("b", "a")):
        rc, out, err = results[name]
        assert rc == 0, f"{name}: {err}"
        events = json_events(out)
        assert {e["path"] for e in events if e["event"] == "connected"} == {"tor"}, events
        assert [e["text"] for e in events if e["event"] == "message"] == [f"from {other}"]
        tor_states = [e["state"] for e in events if e["event"] == "tor"]
        assert tor_states[:1] == ["bootstrapped"] and "met" in tor_states, events
    pids = net.pids
    for name in ("a", "b"):
        os.kill(pids[name], 0)  # still running: p2pd attached, so it did not stop it
        assert not (procs.tmp / name / "tor-nodes").exists()  # no tor of p2pd's own
        assert _detached_onions(net, name) == []  # none outlives p2pd's control link


def _detached_onions(net: tornet.TorNet, name: str) -> list[str]:
    """Onion services of a network client that outlive their control connection (an
    ephemeral one without ``Detach`` dies with it; another connection cannot see those)."""
    with Controller.from_port(port=net.clients[name].control_port) as controller:
        controller.authenticate()
        detached = controller.get_info("onions/detached", "")
    return [line for line in detached.splitlines() if line.strip()]


def test_a_daemon_configured_tor_only_in_its_file_reaches_a_tor_only_listener(
    procs: Procs, daemons: Daemons, net: tornet.TorNet, tmp_path: Path
) -> None:
    """The daemon's ``[tor]`` table (``only``, ``config``) makes its session Tor only: the
    session says so, and its message reaches a ``listen --tor-only`` peer on path ``tor``."""
    phrase = fresh_passphrase()
    phrase_file = tmp_path / "team.phrase"
    phrase_file.write_text(phrase + "\n")
    phrase_file.chmod(0o600)
    torrc = net.write_p2pd_torrc(tmp_path / "daemon.torrc")
    config = tmp_path / "p2pd.toml"
    config.write_text(
        f'[tor]\nonly = true\nconfig = "{torrc}"\n\n'
        f'[[sessions]]\npassphrase_file = "{phrase_file}"\n'
    )
    listener = procs.start(
        "l", "listen", "--json", "--tor-only", "--tor-config", str(torrc), "--count", "1",
        "--timeout", str(TIMEOUT), env={"P2PD_PASSPHRASE": phrase},
    )  # fmt: skip
    handle = daemons.start("d", "--config", str(config))
    (session,) = handle.get("/v1/sessions").json()["sessions"]
    assert session["wan"]["tor_only"] is True, session
    response = handle.post(
        f"/v1/sessions/{session['id']}/send",
        {"text": "from the daemon", "wait_peer": TIMEOUT},
        timeout=TIMEOUT + 30,
    )
    assert response.status_code == 200, response.text
    rc, out, err = procs.finish(listener, timeout=60)
    assert rc == 0, err
    events = json_events(out)
    assert {e["path"] for e in events if e["event"] == "connected"} == {"tor"}, events
    assert [e["text"] for e in events if e["event"] == "message"] == ["from the daemon"]
