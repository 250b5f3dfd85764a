"""Hole punching through real Linux NAT (nftables masquerade) in the lab.

alice (10.1.0.2, behind rtr1 203.0.113.11) and bob (10.2.0.2, behind rtr2 203.0.113.12) each run
tests/netlab/punch_probe.py: a real UDP socket and a PunchCore.  Without STUN, each is told the
other's public candidate as "router WAN address : the peer's local port", which is right exactly
when masquerade preserves the source port: the endpoint-independent behaviour under test.

Router firewall.  The presets' routers drop unsolicited inbound *forwarding* but accept
everything addressed to themselves.  Then the first probe to reach a router before its LAN host
has sent creates a conntrack entry for ``peer:port -> router:port`` (delivered locally, answered
with ICMP port unreachable) and keeps it alive while the peer keeps probing; when the LAN host
then sends, masquerade finds its port taken by that entry and maps it to a random one, so
neither side's probes ever match.  Real home routers drop (or reject) unsolicited WAN input in
the input hook, before conntrack confirms an entry; :func:`home_router_input_firewall` adds that,
and :func:`test_routers_that_accept_wan_input_lose_port_preservation` keeps the stock cell.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from transports.punch import (
    FINAL_WAIT,
    MAX_INTERVAL,
    MAX_TRIES,
    SPRAY_BUDGET,
    SPRAY_RATE,
)

from .lab import Lab
from .nodes import Host, Nat
from .presets import HOMES, PRESETS, PUBLIC_SERVER, PUBLIC_SUBNET

pytestmark = pytest.mark.netlab

REPO = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("punch_probe.py")
ALICE_PORT = 40001
BOB_PORT = 40002
#: The issue's bound for an endpoint-independent pair: both validated within two seconds.
EIM_CONNECT_LIMIT = 2.0
#: Seconds a probe process may run: all ordinary tries (~7.5 s), the whole spray at the paced
#: rate (~10 s) and the final wait, with slack for a loaded machine.
GIVE_UP_LIMIT = MAX_TRIES * MAX_INTERVAL + SPRAY_BUDGET / SPRAY_RATE + FINAL_WAIT + 10.0
#: Seconds the second process starts after the first: a peer learning our candidate late.
STAGGER = 0.3

INPUT_FIREWALL = """
table inet lab_input {
    chain lab_in {
        type filter hook input priority filter; policy accept;
        ct state established,related accept
        iifname "wan0" drop
    }
}
"""


def home_router_input_firewall(lab: Lab) -> None:
    """Drop unsolicited WAN input on both routers, as home routers do (see module docstring)."""
    for _, _, router, _, _ in HOMES:
        lab.nft(lab.hosts[router], INPUT_FIREWALL)


def mixed_homes(lab: Lab, nats: tuple[Nat, Nat]) -> None:
    """The presets' two homes, but rtr1 and rtr2 of different kinds (public Lab API only)."""
    pub = lab.segment("pub", PUBLIC_SUBNET)
    lab.attach(lab.host("server"), pub, PUBLIC_SERVER)
    for (segment, subnet, router, wan_address, peer), nat in zip(HOMES, nats, strict=True):
        home = lab.segment(segment, subnet)
        lab.router(router, pub, home, nat, wan_address=wan_address)
        lab.attach(lab.host(peer), home)


def start_probe(lab: Lab, host: Host, port: int, peer: str, *extra: str) -> subprocess.Popen[str]:
    argv = [sys.executable, str(PROBE), "--port", str(port), "--peer", peer,
            "--deadline", str(GIVE_UP_LIMIT), *extra]  # fmt: skip
    proc: subprocess.Popen[str] = lab.run(
        host, argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    return proc


def outcome(proc: subprocess.Popen[str]) -> dict[str, dict[str, Any]]:
    """The probe's JSON lines by event name (each event at most once)."""
    out, err = proc.communicate(timeout=GIVE_UP_LIMIT + 10.0)
    assert proc.returncode == 0, err
    events: dict[str, dict[str, Any]] = {}
    for line in out.splitlines():
        record = json.loads(line)
        assert record["event"] not in events, out
        events[record["event"]] = record
    assert "done" in events, out
    return events


def punch(
    lab: Lab, *extra: str, alice_extra: tuple[str, ...] = ()
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Start alice, then bob STAGGER later, each aimed at the other's router:local-port."""
    (_, _, _, wan1, _), (_, _, _, wan2, _) = HOMES
    alice = start_probe(
        lab, lab.hosts["alice"], ALICE_PORT, f"{wan2}:{BOB_PORT}", *extra, *alice_extra
    )
    time.sleep(STAGGER)  # not waiting for anything: the lateness itself is under test
    bob = start_probe(lab, lab.hosts["bob"], BOB_PORT, f"{wan1}:{ALICE_PORT}", *extra)
    result = outcome(alice), outcome(bob)
    for name, events in zip(("alice", "bob"), result, strict=True):
        # The recorded outcome (pytest -s or -rP shows it): when, where, at what cost.
        summary = {key: events[key] for key in ("validated", "gave_up") if key in events}
        print(name, json.dumps({**summary, "budget_used": events["done"]["budget_used"]}))
    return result


def assert_gave_up_within_budget(events: dict[str, dict[str, Any]]) -> None:
    assert "validated" not in events
    assert "gave_up" in events
    done = events["done"]
    assert done["budget_used"] <= SPRAY_BUDGET
    assert done["counters"]["spray_sent"] == done["budget_used"]
    assert done["counters"]["probes_sent"] <= MAX_TRIES
    assert done["t"] < GIVE_UP_LIMIT


def test_eim_routers_punch_both_ways_within_two_seconds(lab: Lab) -> None:
    PRESETS["nat-eim"](lab)
    home_router_input_firewall(lab)
    alice, bob = punch(lab)
    (_, _, _, wan1, _), (_, _, _, wan2, _) = HOMES
    # Validated at router:local-port on both sides: masquerade preserved the source ports.
    assert alice["validated"]["addr"] == [wan2, BOB_PORT]
    assert bob["validated"]["addr"] == [wan1, ALICE_PORT]
    # alice started STAGGER earlier; bob's clock starts when he does.
    assert alice["validated"]["t"] < STAGGER + EIM_CONNECT_LIMIT
    assert bob["validated"]["t"] < EIM_CONNECT_LIMIT
    for side in (alice, bob):
        assert side["validated"]["source"] == "offer"
        assert side["done"]["budget_used"] == 0
        assert side["done"]["counters"].get("drop_mac", 0) == 0


@pytest.mark.slow
def test_edm_routers_spray_within_budget_then_give_up_cleanly(lab: Lab) -> None:
    """Both sides symmetric (fully-random ports): prediction cannot win (module docstring of
    transports.punch), so the outcome recorded is a clean give-up within the budget."""
    PRESETS["nat-edm"](lab)
    home_router_input_firewall(lab)
    alice, bob = punch(lab, "--peer-nat", "dependent")
    for side in (alice, bob):
        assert_gave_up_within_budget(side)
        assert side["done"]["budget_used"] == SPRAY_BUDGET


@pytest.mark.slow
def test_routers_that_accept_wan_input_lose_port_preservation(lab: Lab) -> None:
    """The stock preset router: alice's early probe poisons rtr2's conntrack (module
    docstring), bob is mapped to another port, and the pair gives up within budget."""
    PRESETS["nat-eim"](lab)
    alice, bob = punch(lab)
    for side in (alice, bob):
        assert_gave_up_within_budget(side)


@pytest.mark.slow
def test_eim_against_edm_prediction_keeps_its_budget_and_records_the_outcome(lab: Lab) -> None:
    """alice behind an EIM router knows bob's is symmetric and sprays bob's router: the odds
    are SPRAY_BUDGET / 64512 = 1.6 % per attempt (transports.punch docstring), so this mostly
    records a clean give-up; a lucky win must then be a real, symmetric validation."""
    mixed_homes(lab, ("eim", "edm"))
    home_router_input_firewall(lab)
    alice, bob = punch(lab, alice_extra=("--peer-nat", "dependent"))
    assert alice["done"]["budget_used"] <= SPRAY_BUDGET
    assert bob["done"]["budget_used"] <= SPRAY_BUDGET
    if "validated" in alice:
        assert alice["validated"]["source"] == "predicted"
        assert alice["validated"]["addr"][0] == HOMES[1][3]
        assert bob["validated"]["addr"] == [HOMES[0][3], ALICE_PORT]
    else:
        assert_gave_up_within_budget(alice)
        assert alice["done"]["budget_used"] == SPRAY_BUDGET
        assert "gave_up" in bob


def mapped_port(lab: Lab, router: str, src: str, dst: str, dport: int) -> int | None:
    """The public port router's NAT gave the UDP flow src -> dst:dport, from its conntrack."""
    table = lab.check_output(lab.hosts[router], ["cat", "/proc/net/nf_conntrack"])
    for line in table.splitlines():
        fields = line.split()
        if "udp" not in fields or f"src={src}" not in fields or f"dport={dport}" not in fields:
            continue
        if f"dst={dst}" not in fields:
            continue
        # Original tuple first, then the reply tuple, whose dport is the NAT's public port.
        _, reply_dport = (int(f.split("=")[1]) for f in fields if f.startswith("dport="))
        return reply_dport
    return None


#: Distance between bob's real mapping and the port alice is told: inside the spray window.
WINDOW_OFFSET = 10


def test_a_prediction_hit_through_real_edm_validates_both_ways(lab: Lab) -> None:
    """Rig the guess, not the NAT: bob starts first, his router's conntrack shows the random
    port it gave his flow to alice, and alice is told a port WINDOW_OFFSET away, so her spray
    window reaches the real one.  Proves spray, ACK and symmetric validation through real
    masquerade random,fully-random."""
    mixed_homes(lab, ("eim", "edm"))
    home_router_input_firewall(lab)
    (_, _, _, wan1, _), (_, _, _, wan2, _) = HOMES
    bob = start_probe(lab, lab.hosts["bob"], BOB_PORT, f"{wan1}:{ALICE_PORT}")
    bob_ip = lab.hosts["bob"].ip
    deadline = time.monotonic() + EIM_CONNECT_LIMIT
    while (port := mapped_port(lab, "rtr2", bob_ip, wan1, ALICE_PORT)) is None:
        assert time.monotonic() < deadline, "bob's first probe never left rtr2"
    guess = port + WINDOW_OFFSET if port + WINDOW_OFFSET <= 65535 else port - WINDOW_OFFSET
    alice = start_probe(lab, lab.hosts["alice"], ALICE_PORT, f"{wan2}:{guess}",
                        "--peer-nat", "dependent")  # fmt: skip
    a, b = outcome(alice), outcome(bob)
    print("bob mapped to", port, "alice", json.dumps(a.get("validated")))
    assert a["validated"]["addr"] == [wan2, port]
    assert a["validated"]["source"] == "predicted"
    assert b["validated"]["addr"] == [wan1, ALICE_PORT]
    assert a["done"]["budget_used"] <= 2 * WINDOW_OFFSET + SPRAY_RATE * EIM_CONNECT_LIMIT
