"""p2pd's Tor path in the lab: ``--tor-only`` sends nothing outside Tor, ``--tor`` moves on
to a punched path and falls back to Tor when that path dies.

The tests run the lab's private Tor network (`tornet.TorNet`: three authorities and two
relays on one address of a lab namespace), and every p2pd node launches its own tor inside
its own namespace, pointed at that network by ``--tor-config`` (`TorNet.write_p2pd_torrc`).

1. ``--tor-only`` leaks nothing: the network sits on ``relays`` (10.66.0.1), alice and bob
   on one segment with it, and each of their namespaces routes everything else into a
   counted sink (`nftwatch.watch_outbound`). Both run ``p2pd send --tor-only``; both
   messages must arrive over path ``tor``, the ``allowed`` counter (packets to the Tor
   network) must be above 0 and the ``leaked`` ones exactly 0, and a canary sent to
   TEST-NET-1 afterwards must make ``leaked`` 1 (the counter works). The segment is a real
   LAN, so a beacon, mDNS query or STUN probe would have been counted too.

2. Tor, then a punched upgrade, from the passphrase alone: the eim/eim cell of the
   reachability matrix (`matrix.build_cell`, no assist) with the Tor network on the public
   server (203.0.113.1), reached through the two NAT routers. alice and bob run ``p2pd
   chat --json --tor --stun ... --no-upnp``: no assist, offer or target, and different LANs,
   so they can only meet at the passphrase's onion. Each must report ``connected`` over
   ``tor`` and then a ``path`` event from ``tor`` to ``punched`` (the addresses they sent
   each other over Tor, STUN's reflexive ones among them, let the WAN core punch). Then the
   server drops every TCP packet from outside (the Tor network itself talks over its
   loopback and keeps running), so the p2pd tors are cut off, and a line typed on each
   side must still reach the other: it can only have gone over the direct path.

3. The fallback, in the same setup: after the upgrade, alice's router drops every UDP
   packet it forwards (the punched path dies; Tor is TCP). Lines typed on both sides must
   arrive, each side reporting ``path`` punched -> tor, with no new meeting at the onion
   (the stream was kept warm). Then UDP is let through again and both must report tor ->
   punched (re-punching every 5 s) and exchange lines once more. Two runs here: lines
   crossed over Tor 15.1 s after the cut (bound: 12.5 s of silence, then the next 5 s
   keepalive), punched again 4.9 s after UDP came back; 57-68 s per test.

Measured here (2 CPUs, seven runs; bootstrap and connect from the node's own
``elapsed_ms`` since its start, the meeting from its own start; the upgrade from the
chat's output, stamped as it arrives):

- test 1 (--tor-only): tor bootstrapped 5.1-18.2 s, meeting 4.6-34.4 s, ``connected`` over
  tor 9.8-41.7 s after start; 19-49 s per test. Counted: 277-762 packets to the Tor network,
  0 elsewhere. The same run with ``--tor`` instead counts 21 leaked packets (and meets on
  the LAN in 0.2 s), so the assertions can fail.
- test 2 (--tor): tor bootstrapped 5.1-16.2 s, meeting 13.1-47.0 s, ``connected`` over tor
  19.2-54.2 s after start; the ``path`` event tor -> punched 12-56 ms after ``connected``
  (the cands go out with the session's first frames, STUN was done long before, and a
  punch in the lab takes a round trip); 22-56 s per test. After the cut, 25-26 TCP packets
  of the peers' tors were dropped while the lines still arrived.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import fresh_passphrase
from tests.netlab.lab import Lab
from tests.netlab.matrix import Cell, build_cell, matrix_unavailable_reason
from tests.netlab.nftwatch import outbound_counts, send_canary, watch_outbound
from tests.netlab.nodes import Host
from tests.netlab.p2pd_procs import REPO, P2pd, finish
from tests.netlab.presets import PUBLIC_SERVER
from tests.netlab.tornet import TorNet, require_tor

pytestmark = [pytest.mark.netlab, pytest.mark.slow]

#: The segment of test 1: the Tor network's host and both nodes (the sinks use 10.66.1-2.x).
TOR_SUBNET = "10.66.0.0/24"
RELAYS_ADDRESS = "10.66.0.1"
#: Seconds a --tor-only send gets: its tor bootstraps (7-26 s), then meets (5-90 s).
SEND_TIMEOUT = 150
#: Seconds beyond SEND_TIMEOUT a send may take to exit (close linger, tor shutdown).
EXIT_GRACE = 30
#: Seconds from start for a --tor chat to report ``connected`` (bootstrap, 5 s, meeting).
CONNECT_TIMEOUT = 150.0
#: Seconds after ``connected`` for the move to the punched path (measured: about 1 s; the
#: cands go out at once over the session, and punching eim/eim takes a round trip or two).
UPGRADE_TIMEOUT = 45.0
#: Seconds for a typed line to reach the other chat, and for a chat to exit after EOF.
LINE_TIMEOUT = 30.0


def require_coturn() -> None:
    reason = matrix_unavailable_reason("eim", "eim")
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI is set, so the matrix's STUN servers must run, but: {reason}")
    pytest.skip(reason=reason)


def events_of(out: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]


def first(events: list[dict[str, Any]], kind: str, **fields: object) -> dict[str, Any] | None:
    """The first event of this kind whose fields match, or None."""
    for event in events:
        if event["event"] == kind and all(event.get(k) == v for k, v in fields.items()):
            return event
    return None


def tor_times(events: list[dict[str, Any]]) -> str:
    """Bootstrap, meeting and connect times from a node's own events, for the report."""
    boot = first(events, "tor", state="bootstrapped")
    met = first(events, "tor", state="met")
    connected = first(events, "connected")
    parts = [
        f"{label} {event['elapsed_ms'] / 1000:.1f} s"
        for label, event in (("bootstrapped", boot), ("meeting", met), ("connected", connected))
        if event is not None
    ]
    return ", ".join(parts)


def test_tor_only_nodes_talk_and_send_nothing_outside_tor(lab: Lab, tmp_path: Path) -> None:
    require_tor()
    segment = lab.segment("tor", TOR_SUBNET)
    relays, alice, bob = lab.host("relays"), lab.host("alice"), lab.host("bob")
    relays_ip = lab.attach(relays, segment, RELAYS_ADDRESS)
    nodes = (alice, bob)
    for sink, host in enumerate(nodes, start=1):
        lab.attach(host, segment)
        watch_outbound(lab, host, sink, [relays_ip])
    started = time.monotonic()
    with TorNet(address=relays_ip, netns=relays.netns) as net:
        torrc = net.write_p2pd_torrc(tmp_path / "torrc")
        p2pd, phrase = P2pd(lab, tmp_path), fresh_passphrase()
        procs = [
            p2pd.start(host, "send", phrase, f"from {host.name}", "--json", "--tor-only",
                       "--tor-config", str(torrc), "--timeout", str(SEND_TIMEOUT))
            for host in nodes
        ]  # fmt: skip
        results = [finish(proc, SEND_TIMEOUT + EXIT_GRACE) for proc in procs]
    print(f"--tor-only pair done in {time.monotonic() - started:.1f} s")
    for host, other, (rc, out, err) in zip(nodes, reversed(nodes), results, strict=True):
        assert rc == 0, f"{host.name}: {err}"
        events = events_of(out)
        print(f"{host.name}: {tor_times(events)}")
        assert [e["text"] for e in events if e["event"] == "message"] == [f"from {other.name}"]
        connected, delivered = first(events, "connected"), first(events, "delivered")
        assert connected is not None and connected["path"] == "tor", events
        assert delivered is not None and delivered["path"] == "tor", events
        assert first(events, "path") is None, events  # --tor-only never leaves Tor
    for host in nodes:
        counts = outbound_counts(lab, host)
        print(f"{host.name}: {counts}")
        assert counts["allowed"] > 0, counts  # its tor did talk to the Tor network
        assert (counts["leaked"], counts["leaked6"]) == (0, 0), counts
        send_canary(lab, host)
        assert outbound_counts(lab, host)["leaked"] == 1  # the counter sees a leak


class Chat:
    """A ``p2pd chat --json`` in a lab host: its stdin, and its events stamped on arrival.

    A thread reads stdout as it comes (two chats run at once, and the stamps give the wall
    time of each event whichever chat the test is waiting on).
    """

    def __init__(self, host: Host, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.host, self.proc, self.log = host, proc, log
        self.started = time.monotonic()
        self.events: list[tuple[float, dict[str, Any]]] = []
        self._queue: queue.Queue[tuple[float, dict[str, Any]] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(b"{"):
                self._queue.put((time.monotonic() - self.started, json.loads(line)))
        self._queue.put(None)

    def wait_for(self, kind: str, timeout: float) -> tuple[float, dict[str, Any]]:
        """Events until one of this kind: (seconds since start, event). Fails the test with
        what the chat printed if none comes within timeout."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                stamped = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                stamped = None
            if stamped is None:
                pytest.fail(
                    f"{self.host.name}: no {kind!r} event within {timeout} s (exit "
                    f"{self.proc.poll()}); events: {[e for _, e in self.events]}; "
                    f"stderr: {self.log.read_text()[-2000:]}",
                    pytrace=False,
                )
            self.events.append(stamped)
            if stamped[1]["event"] == kind:
                return stamped

    def type_line(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{text}\n".encode())
        self.proc.stdin.flush()

    def end_input(self) -> int:
        """Close stdin (chat waits for its lines' delivery, then exits); the exit code.
        The events not yet waited for are in :attr:`events` afterwards."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        code = self.proc.wait(LINE_TIMEOUT)
        while (stamped := self._queue.get(timeout=LINE_TIMEOUT)) is not None:
            self.events.append(stamped)
        return code


def start_chat(lab: Lab, p2pd: P2pd, host: Host, *args: str) -> Chat:
    log = p2pd.tmp / f"{host.name}.stderr"
    env = {k: v for k, v in os.environ.items() if k != "P2PD_PASSPHRASE"}
    with log.open("wb") as err:
        proc: subprocess.Popen[bytes] = lab.run(
            host, p2pd.argv(host, "chat", *args), cwd=REPO, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
        )  # fmt: skip
    return Chat(host, proc, log)


def cut_off_tor(lab: Lab, server: Host) -> None:
    """Drop every TCP packet reaching the server from outside: the peers' tors lose the Tor
    network (which keeps talking to itself over the server's loopback); STUN is UDP."""
    lab.nft(server, "table inet torcut {\n chain in {\n"
                    " type filter hook input priority filter; policy accept;\n"
                    ' iifname != "lo" meta l4proto tcp counter drop\n }\n}\n')  # fmt: skip


def tor_packets_dropped(lab: Lab, server: Host) -> int:
    ruleset = lab.check_output(server, ["nft", "list", "table", "inet", "torcut"])
    match = re.search(r"counter packets (\d+) ", ruleset)
    assert match is not None, ruleset
    return int(match.group(1))


@contextlib.contextmanager
def upgraded_chats(lab: Lab, tmp_path: Path) -> Iterator[tuple[Cell, list[Chat]]]:
    """The eim/eim cell with the Tor network on its server, and two ``chat --tor`` that met
    over Tor and then moved to the punched path (both checked, times printed)."""
    require_tor()
    require_coturn()
    cell = build_cell(lab, "eim", "eim", assist=False)
    with TorNet(address=PUBLIC_SERVER, netns=cell.server.netns) as net:
        torrc = net.write_p2pd_torrc(tmp_path / "torrc")
        p2pd, phrase = P2pd(lab, tmp_path), fresh_passphrase()
        stun = [arg for server in cell.stun for arg in ("--stun", server)]
        chats = [
            start_chat(lab, p2pd, host, phrase, "--json", "--tor", "--tor-config", str(torrc),
                       *stun, "--no-upnp")
            for host in (cell.alice, cell.bob)
        ]  # fmt: skip
        for chat in chats:
            at, connected = chat.wait_for("connected", CONNECT_TIMEOUT)
            assert connected["path"] == "tor", connected
            moved_at, moved = chat.wait_for("path", UPGRADE_TIMEOUT)
            assert (moved["from"], moved["path"]) == ("tor", "punched"), moved
            events, upgrade_ms = [e for _, e in chat.events], (moved_at - at) * 1000
            print(f"{chat.host.name}: {tor_times(events)}; connected {at:.1f} s after spawn, "
                  f"tor -> punched {upgrade_ms:.0f} ms later ({moved['addr']})")  # fmt: skip
        yield cell, chats


def exchange_lines(chats: list[Chat], text: str) -> None:
    """Each chat types ``text, from NAME``; each must receive the other's."""
    for chat in chats:
        chat.type_line(f"{text}, from {chat.host.name}")
    for chat, other in zip(chats, reversed(chats), strict=True):
        _, message = chat.wait_for("message", LINE_TIMEOUT)
        assert message["text"] == f"{text}, from {other.host.name}", message


def test_tor_session_moves_to_the_punched_path_with_the_passphrase_alone(
    lab: Lab, tmp_path: Path
) -> None:
    started = time.monotonic()
    with upgraded_chats(lab, tmp_path) as (cell, chats):
        cut_off_tor(lab, cell.server)
        exchange_lines(chats, "over the direct path")
        for chat in chats:
            assert chat.end_input() == 0, chat.log.read_text()[-2000:]
        print(f"TCP packets to the Tor network dropped after the cut: "
              f"{tor_packets_dropped(lab, cell.server)}")  # fmt: skip
    print(f"tor -> punched pair done in {time.monotonic() - started:.1f} s")


def cut_udp(lab: Lab, router: Host) -> None:
    """Drop every UDP packet the router forwards: the punched path dies, Tor (TCP) lives."""
    lab.nft(router, "table inet udpcut {\n chain cut {\n"
                    " type filter hook forward priority filter; policy accept;\n"
                    " meta l4proto udp counter drop\n }\n}\n")  # fmt: skip


def test_a_dead_direct_path_falls_back_to_the_warm_tor_stream_and_comes_back(
    lab: Lab, tmp_path: Path
) -> None:
    """After the upgrade the Tor stream stays open as the standby (keepalives on both
    paths).  When alice's router starts dropping UDP, lines typed on both sides arrive over
    Tor with no new meeting, each side reporting ``path`` punched -> tor; once UDP flows
    again, re-punching brings both back to ``punched``."""
    started = time.monotonic()
    with upgraded_chats(lab, tmp_path) as (cell, chats):
        meetings = [len([e for _, e in chat.events if e.get("state") == "met"]) for chat in chats]
        cut_udp(lab, cell.routers[0])
        cut = time.monotonic()
        exchange_lines(chats, "after the direct path died")
        for chat in chats:
            moved = [e for _, e in chat.events if e["event"] == "path"][-1]
            assert (moved["from"], moved["path"]) == ("punched", "tor"), chat.events
        fell_back = time.monotonic() - cut
        lab.nft(cell.routers[0], "delete table inet udpcut\n")
        restored = time.monotonic()
        for chat in chats:
            _, back = chat.wait_for("path", UPGRADE_TIMEOUT)
            assert (back["from"], back["path"]) == ("tor", "punched"), back
        punched_again = time.monotonic() - restored
        exchange_lines(chats, "direct again")
        for chat, before in zip(chats, meetings, strict=True):
            assert chat.end_input() == 0, chat.log.read_text()[-2000:]
            met = [e for _, e in chat.events if e.get("state") == "met"]
            assert len(met) == before, "the fallback needed a new meeting at the onion"
    print(
        f"lines crossed over Tor {fell_back:.1f} s after UDP was cut; punched again "
        f"{punched_again:.1f} s after it was restored; test {time.monotonic() - started:.1f} s"
    )
