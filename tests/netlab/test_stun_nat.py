"""STUN through real NAT routers: coturn on the public segment, the prober inside a home LAN.

The server host gets a second public address, coturn listens on both (so it also offers
RFC 5780's OTHER-ADDRESS), and a probe run in alice's namespace classifies rtr1's mapping.
"""

from __future__ import annotations

import os

import pytest

from .coturn import STUN_PORT, add_address, run_probe, start_coturn, turnserver_missing_reason
from .lab import Lab
from .presets import HOMES, PRESETS, PUBLIC_SERVER

pytestmark = pytest.mark.netlab

SECOND_SERVER = "203.0.113.2"
RTR1_WAN = HOMES[0][3]
SERVERS = [(PUBLIC_SERVER, STUN_PORT), (SECOND_SERVER, STUN_PORT)]


def require_turnserver() -> None:
    reason = turnserver_missing_reason()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI is set, so coturn must run, but: {reason}", pytrace=False)
    pytest.skip(reason=reason)


def stun_lab(lab: Lab, preset: str) -> None:
    require_turnserver()
    PRESETS[preset](lab)
    add_address(lab, "server", SECOND_SERVER)
    start_coturn(lab, "server", [PUBLIC_SERVER, SECOND_SERVER])


def test_behind_an_endpoint_independent_nat(lab: Lab) -> None:
    stun_lab(lab, "nat-eim")
    result = run_probe(lab, "alice", SERVERS)
    assert result["nat"] == "nat"
    assert result["mapping"] == "endpoint-independent"
    assert result["reflexive"].rsplit(":", 1)[0] == RTR1_WAN
    # Plain masquerade keeps the source port when it is free.
    assert result["reflexive"] == f"{RTR1_WAN}:{result['local_port']}"
    assert result["port_preserved"] is True


def test_behind_an_endpoint_dependent_nat(lab: Lab) -> None:
    stun_lab(lab, "nat-edm")
    result = run_probe(lab, "alice", SERVERS)
    assert result["nat"] == "nat"
    assert result["mapping"] in ("address-dependent", "address-and-port-dependent")
    assert {s["mapped"].rsplit(":", 1)[0] for s in result["servers"]} == {RTR1_WAN}
    # fully-random gives each destination its own random port: three ports, all different
    # unless two of 64k collide; so the mapping is (in practice) address-and-port-dependent.
    assert len({s["mapped"] for s in result["servers"]}) >= 2
    assert result["reflexive"].rsplit(":", 1)[0] == RTR1_WAN


def test_coturn_offers_other_address_so_port_dependence_is_tested(lab: Lab) -> None:
    stun_lab(lab, "nat-eim")
    result = run_probe(lab, "alice", SERVERS)
    asked = {s["server"] for s in result["servers"]}
    assert f"{SECOND_SERVER}:{STUN_PORT + 1}" in asked
    assert result["port_dependence_tested"]


def test_a_router_on_the_public_segment_sees_no_nat(lab: Lab) -> None:
    stun_lab(lab, "nat-eim")
    result = run_probe(lab, "rtr1", SERVERS)
    assert (result["nat"], result["mapping"]) == ("no-nat", "endpoint-independent")
    assert result["reflexive"] == f"{RTR1_WAN}:{result['local_port']}"


def test_a_silent_server_fails_and_the_other_still_answers(lab: Lab) -> None:
    stun_lab(lab, "nat-eim")
    result = run_probe(lab, "alice", [(PUBLIC_SERVER, STUN_PORT), ("203.0.113.99", STUN_PORT)])
    assert {"event": "failed", "server": ["203.0.113.99", STUN_PORT]} in result["events"]
    assert result["mapping"] in ("unknown", "endpoint-independent")
