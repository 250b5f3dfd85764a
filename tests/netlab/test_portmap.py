"""Port mapping against a real miniupnpd router: UPnP, NAT-PMP and PCP grant, forward, remove.

Topology (built here with the Lab API): ``outside`` (203.0.113.1) on the public segment;
``rtr`` masquerades the home LAN 10.1.0.0/24 behind 203.0.113.11 and runs miniupnpd on its
LAN side; ``inside`` (10.1.0.2) runs `transports.portmap.run_portmap` in a Python process
that also listens on the mapped UDP port and prints JSON lines: candidates, datagrams, the
status, and its counters when told to stop.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from .lab import Lab, read_line
from .miniupnpd import miniupnpd_log, miniupnpd_unavailable_reason, start_miniupnpd
from .nodes import Host, Router

pytestmark = pytest.mark.netlab

PUBLIC_SUBNET = "203.0.113.0/24"
OUTSIDE = "203.0.113.1"
ROUTER_WAN = "203.0.113.11"
HOME_SUBNET = "10.1.0.0/24"
#: The node's port on the inside host (any unprivileged port miniupnpd's rules allow).
PORT = 41641
#: Seconds to wait for a driver line: UPnP discovery alone takes 1 s, a failed round a few.
LINE_TIMEOUT = 30.0

DRIVER = r"""
import json, socket, sys
from collections import Counter
import trio
from transports.portmap import STARTING, PortmapStatus, run_portmap

def out(**fields):
    print(json.dumps(fields), flush=True)

async def main():
    port, methods = int(sys.argv[1]), sys.argv[2].split(",")
    counters, status = Counter(), PortmapStatus()
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind(("0.0.0.0", port))

    def emit(candidate):
        out(kind="candidate", addr=list(candidate.addr), path=candidate.path)

    async def receive():
        while True:
            data, source = await sock.recvfrom(2048)
            out(kind="datagram", data=data.decode(), source=list(source))

    async def report_status():
        # Print each new status (state, method, protocols held); polled, it has no events.
        last = None
        while True:
            now = (status.state, status.method, status.protocols, status.detail)
            if status.state != STARTING and now != last:
                out(kind="status", state=status.state, method=status.method,
                    protocols=list(status.protocols), detail=status.detail)
                last = now
            await trio.sleep(0.05)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: run_portmap(
            port, emit, counters=counters, status=status, methods=methods))
        nursery.start_soon(receive)
        nursery.start_soon(report_status)
        await trio.to_thread.run_sync(sys.stdin.readline)
        nursery.cancel_scope.cancel()
    out(kind="stopped", counters=dict(counters))

trio.run(main)
"""

SEND = r"""
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))
"""


def home(lab: Lab, *, patched: bool = True, **services: bool) -> tuple[Host, Router, Host]:
    """outside, the miniupnpd router and inside; skips (fails in CI) without the binary."""
    reason = miniupnpd_unavailable_reason(patched=patched)
    if reason is not None:
        # The lab fixture's policy: skip on a developer machine, fail where CI must run it.
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    pub = lab.segment("pub", PUBLIC_SUBNET)
    outside = lab.host("outside")
    lab.attach(outside, pub, OUTSIDE)
    lan = lab.segment("home", HOME_SUBNET)
    router = lab.router("rtr", pub, lan, "eim", wan_address=ROUTER_WAN)
    inside = lab.host("inside")
    lab.attach(inside, lan)
    start_miniupnpd(lab, router, patched=patched, **services)
    return outside, router, inside


def start_driver(lab: Lab, inside: Host, methods: str) -> subprocess.Popen[str]:
    return lab.python(inside, DRIVER, str(PORT), methods)


def wait_for(proc: subprocess.Popen[str], kind: str, seen: list[dict[str, Any]]) -> dict[str, Any]:
    """Read the driver's lines into seen until one of kind; return that one."""
    while True:
        line: dict[str, Any] = json.loads(read_line(proc, LINE_TIMEOUT))
        seen.append(line)
        if line["kind"] == kind:
            return line


def stop(proc: subprocess.Popen[str], seen: list[dict[str, Any]]) -> dict[str, int]:
    """Tell the driver to stop; its counters."""
    assert proc.stdin is not None
    proc.stdin.write("stop\n")
    proc.stdin.flush()
    counters: dict[str, int] = wait_for(proc, "stopped", seen)["counters"]
    return counters


def redirects(lab: Lab, router: Router) -> str:
    """miniupnpd's DNAT rules (one per mapping) in the router's ruleset."""
    return lab.check_output(
        router, ["nft", "list", "chain", "inet", "filter", "prerouting_miniupnpd"]
    )


def assert_mapping_works(lab: Lab, methods: str, deleted_counter: str, **services: bool) -> None:
    outside, router, inside = home(lab, **services)
    driver = start_driver(lab, inside, methods)
    seen: list[dict[str, Any]] = []
    line = wait_for(driver, "candidate", seen)
    assert line == {"kind": "candidate", "addr": [ROUTER_WAN, PORT], "path": "mapped"}, (
        seen,
        miniupnpd_log(lab, router),
    )
    while wait_for(driver, "status", seen)["protocols"] != ["udp", "tcp"]:
        pass
    rules = redirects(lab, router)
    assert f"dport {PORT} dnat ip to {inside.ip}:{PORT}" in rules
    assert rules.count(f"dport {PORT} dnat") == 2, rules  # UDP and TCP

    lab.check_output(outside, [sys.executable, "-c", SEND, ROUTER_WAN, str(PORT), "hello"])
    line = wait_for(driver, "datagram", seen)
    assert (line["data"], line["source"][0]) == ("hello", OUTSIDE)
    counters = stop(driver, seen)
    assert counters.get(deleted_counter) == 2, (counters, miniupnpd_log(lab, router))
    assert f"dport {PORT}" not in redirects(lab, router)
    methods_seen = {(line["state"], line["method"]) for line in seen if line["kind"] == "status"}
    assert methods_seen == {("mapped", methods)}, seen


def test_upnp_maps_forwards_and_removes(lab: Lab) -> None:
    assert_mapping_works(lab, "upnp", "upnp.deleted")


def test_natpmp_maps_forwards_and_removes(lab: Lab) -> None:
    assert_mapping_works(lab, "natpmp", "portmap.natpmp.deleted", upnp=False)


def test_pcp_maps_forwards_and_removes(lab: Lab) -> None:
    assert_mapping_works(lab, "pcp", "portmap.pcp.deleted", upnp=False)


def test_stock_miniupnpd_is_a_useless_gateway_behind_cgnat(lab: Lab) -> None:
    _, router, inside = home(lab, patched=False)
    driver = start_driver(lab, inside, "upnp,natpmp,pcp")
    seen: list[dict[str, Any]] = []
    status = wait_for(driver, "status", seen)
    assert status["state"] == "useless: gateway behind CGNAT", (seen, miniupnpd_log(lab, router))
    counters = stop(driver, seen)
    assert [line for line in seen if line["kind"] == "candidate"] == []
    assert counters.get("upnp.useless") == 1, counters
    assert f"dport {PORT}" not in redirects(lab, router)
