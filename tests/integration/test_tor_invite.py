"""``p2pd invite``: a peer without the passphrase connects once, through a private Tor network.

The inviter prints an invite (a random onion and a one-time secret) and serves it; a joiner
given only that text runs ``p2pd send --invite``.  Both launch their own tor, pointed at the
lab's offline network by ``--tor-config`` (tests/netlab/tornet.py), so nothing here dials
the real Tor network.  The invite works once: after the first peer's handshake the inviter
withdraws the onion, and a second joiner with the same text gets nobody.  The malformed and
expired cases need no tor and run in a second or two.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from p2pd import vaddr
from p2pd.invite import new_invite
from tests.integration.conftest import Procs, json_events, read_line
from tests.netlab import tornet

#: Seconds a process gets: its tor bootstraps (7-26 s here), then connects (a few s).
TIMEOUT = 240
#: Seconds the second joiner tries: its tor bootstraps, then several connect attempts (the
#: first one of the first joiner succeeded in a few seconds).
SECOND_TIMEOUT = 60
#: What a tor log line about onion services says (shown when the join fails).
ONION_WORDS = r"hs_|onion|descriptor|rend|intro|hsdir|newnym"
#: Seconds the inviter gets to print its invite (it does so before tor starts).
PRINT_TIMEOUT = 30


def _next_event(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    while True:
        line = read_line(proc, timeout, stdout=True)
        if line.startswith("{"):
            event: dict[str, Any] = json.loads(line)
            return event


def _until(proc: subprocess.Popen[str], kind: str, timeout: float) -> list[dict[str, Any]]:
    """Events of ``proc`` up to and including the first of ``kind``."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while not seen or seen[-1]["event"] != kind:
        seen.append(_next_event(proc, max(0.1, deadline - time.monotonic())))
    return seen


def _virtual(addr: str) -> bool:
    host, _, port = addr.rpartition(":")
    return vaddr.is_virtual((host, int(port)))


def _join(procs: Procs, name: str, code: str, torrc: Path, timeout: int, text: str) -> Any:
    return procs.start(
        name,
        "send",
        "--json",
        "--invite",
        code,
        "--tor-config",
        str(torrc),
        "--timeout",
        str(timeout),
        text,
    )


def _logged_torrc(net: tornet.TorNet, procs: Procs, name: str) -> Path:
    """A ``--tor-config`` file whose tor writes its info log next to it."""
    return net.write_p2pd_torrc(procs.tmp / f"{name}.torrc", log=procs.tmp / f"{name}.tor.log")


def _onion_log(procs: Procs, *names: str) -> str:
    """What the named processes' tors said about onion services (for a failure message)."""
    said = []
    for name in names:
        path = procs.tmp / f"{name}.tor.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        onion = [line for line in lines if re.search(ONION_WORDS, line, re.IGNORECASE)]
        said.append(f"--- {name}'s tor ({len(lines)} lines), onion lines:")
        said.extend(onion[-40:])
    return "\n".join(said)


def test_a_joiner_with_only_the_invite_delivers_over_tor_and_the_invite_works_once(
    procs: Procs, net: tornet.TorNet
) -> None:
    """The joiner's message arrives at the inviter on path ``tor`` with no address of either
    side exchanged; then the onion is withdrawn, and a second joiner (the inviter still
    running) gets nobody and exits 3."""
    started = time.monotonic()
    host_torrc = _logged_torrc(net, procs, "host")
    inviter = procs.start(
        "host", "invite", "--json", "--tor-config", str(host_torrc), "--count", "2", "--ttl", "600"
    )
    shown = _next_event(inviter, PRINT_TIMEOUT)
    printed = time.monotonic() - started
    assert shown["event"] == "invite", shown
    code = shown["invite"]
    assert code.startswith("P2PD-INVITE:") and shown["ttl_s"] > 590

    join_started = time.monotonic()
    joiner = _join(procs, "j1", code, _logged_torrc(net, procs, "j1"), TIMEOUT, "one")
    rc, out, err = procs.finish(joiner, timeout=TIMEOUT + 30)
    joined = time.monotonic() - join_started
    assert rc == 0, f"{err}\n{out}\n{_onion_log(procs, 'host', 'j1')}"
    sent = json_events(out)
    connected = [e for e in sent if e["event"] == "connected"]
    assert connected and connected[0]["path"] == "tor", sent
    assert _virtual(connected[0]["addr"]), connected  # the inviter's address is not known
    assert {e["path"] for e in sent if e["event"] == "delivered"} == {"tor"}, sent
    assert not [e for e in sent if e["event"] == "path"], sent  # it never left Tor

    got = _until(inviter, "message", TIMEOUT)
    host_up = [e for e in got if e["event"] == "connected"]
    assert host_up and host_up[0]["path"] == "tor", got
    assert _virtual(host_up[0]["addr"]), host_up  # nor the joiner's
    assert got[-1]["text"] == "one"
    tor_states = [e["state"] for e in got if e["event"] == "tor"]
    if "invite_withdrawn" not in tor_states:
        tor_states += [e["state"] for e in _until(inviter, "tor", 30) if e["event"] == "tor"]
    assert "invite_published" in tor_states and tor_states[-1] == "invite_withdrawn", got

    second = _join(procs, "j2", code, _logged_torrc(net, procs, "j2"), SECOND_TIMEOUT, "two")
    rc2, out2, err2 = procs.finish(second, timeout=SECOND_TIMEOUT + 60)
    assert rc2 == 3, err2
    assert f"no peer answered within {SECOND_TIMEOUT} s: is the inviter still running" in err2
    assert not [e for e in json_events(out2) if e["event"] == "connected"], out2
    assert inviter.poll() is None, "the inviter left: the second joiner proved nothing"
    inviter.terminate()
    rc_host, out_host, err_host = procs.finish(inviter, timeout=30)
    assert rc_host == 143, err_host
    assert not [e for e in json_events(out_host) if e["event"] in ("message", "connected")]
    tor_dirs = procs.tmp / "host" / "tor-nodes"
    assert not tor_dirs.exists() or not any(tor_dirs.iterdir())  # the invite's tor dir went
    tor = {e["state"]: e["elapsed_ms"] / 1000 for e in sent if e["event"] == "tor"}
    published = [e["elapsed_ms"] / 1000 for e in got if e.get("state") == "invite_published"]
    print(
        f"\ninvite printed after {printed:.2f} s, published after {published[0]:.1f} s; "
        f"joiner: tor bootstrapped {tor['bootstrapped']:.1f} s, onion reached "
        f"{tor['met']:.1f} s later, delivered and exited after {joined:.1f} s; "
        f"test {time.monotonic() - started:.1f} s"
    )


def _next_of(proc: subprocess.Popen[str], kind: str, timeout: float) -> dict[str, Any]:
    return _until(proc, kind, timeout)[-1]


def test_invite_chat_and_chat_invite_talk_both_ways(procs: Procs, net: tornet.TorNet) -> None:
    """``p2pd invite --chat`` and ``p2pd chat --invite``: lines typed on either side reach
    the other over Tor; end of input ends both."""
    inviter = procs.start(
        "host", "invite", "--chat", "--json", "--tor-config",
        str(_logged_torrc(net, procs, "host")), "--ttl", "600", interactive=True,
    )  # fmt: skip
    code = _next_of(inviter, "invite", PRINT_TIMEOUT)["invite"]
    joiner = procs.start(
        "j1", "chat", "--json", "--invite", code, "--tor-config",
        str(_logged_torrc(net, procs, "j1")), interactive=True,
    )  # fmt: skip
    assert inviter.stdin is not None and joiner.stdin is not None
    joiner.stdin.write("typed before the inviter answered\n")
    joiner.stdin.flush()
    try:
        got = _next_of(inviter, "message", TIMEOUT)
    except Exception as exc:  # a timeout: show what the tors said
        raise AssertionError(_onion_log(procs, "host", "j1")) from exc
    assert got["text"] == "typed before the inviter answered"
    inviter.stdin.write("from the inviter\n")
    inviter.stdin.flush()
    assert _next_of(joiner, "message", 60)["text"] == "from the inviter"
    joiner.stdin.close()
    inviter.stdin.close()
    joiner.stdin = inviter.stdin = None
    assert procs.finish(joiner, timeout=60)[0] == 0
    assert procs.finish(inviter, timeout=60)[0] == 0


def test_invite_chat_takes_no_count(procs: Procs) -> None:
    rc, out, err = procs.finish(procs.start("host", "invite", "--chat", "--count", "1"))
    assert rc == 2 and out == ""
    assert (
        err.strip() == "p2pd: error: invite --chat ends at end of input, not after --count messages"
    )


def test_an_invite_nobody_used_expires_with_exit_code_3(procs: Procs, torrc: Path) -> None:
    started = time.monotonic()
    inviter = procs.start("host", "invite", "--tor-config", str(torrc), "--ttl", "4", "--no-qr")
    rc, out, err = procs.finish(inviter, timeout=60)
    assert rc == 3, err
    assert err.splitlines()[-1] == "p2pd: error: the invite expired unused"
    assert out.startswith("P2PD-INVITE:") and len(out.splitlines()) == 1  # no QR asked for
    assert "P2PD-INVITE" not in err  # the invite goes to stdout only
    assert time.monotonic() - started < 30


def test_the_text_form_prints_a_qr_code_and_the_invite_on_stdout(procs: Procs) -> None:
    """Without Tor reachable (a closed control port) the invite is still printed first."""
    inviter = procs.start("host", "invite", "--tor-control", "127.0.0.1:9", "--ttl", "60")
    rc, out, err = procs.finish(inviter, timeout=30)
    lines = out.splitlines()
    assert lines[-1].startswith("P2PD-INVITE:")
    assert len(lines) > 10 and set(lines[0]) <= {" ", "\u2580", "\u2584", "\u2588"}
    assert "valid 60 s" in err
    assert rc == 2 and err.splitlines()[-1].startswith("p2pd: error: cannot reach tor's control")


@pytest.mark.parametrize(
    ("invite", "message"),
    [
        ("hello", "this is not a p2pd invite"),
        ("P2PD-INVITE:ABC:DEF:1", "onion address is cut short"),
        (None, "expired"),
    ],
)
@pytest.mark.parametrize("command", ["send", "listen"])
def test_a_malformed_or_expired_invite_is_refused_in_one_line(
    procs: Procs, command: str, invite: str | None, message: str
) -> None:
    if invite is None:
        invite = new_invite(time.time() - 3600, 600)[0].text()
    words = ["hi"] if command == "send" else []
    rc, out, err = procs.finish(procs.start("j", command, "--invite", invite, *words))
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("p2pd: error: "), err
    assert message in err
    assert out == ""


def test_an_invite_replaces_the_passphrase(procs: Procs) -> None:
    invite = new_invite(time.time())[0].text()
    rc, _, err = procs.finish(
        procs.start("j", "listen", "--invite", invite, "some-passphrase-words-here")
    )
    assert rc == 2
    assert err.strip() == "p2pd: error: --invite replaces the passphrase: drop the passphrase"
