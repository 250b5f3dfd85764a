"""LAN discovery on a real bridged segment: beacons by subnet broadcast, and mDNS.

Three hosts share 10.7.0.0/24.  ``a`` and ``b`` hold one passphrase (one ``lan_key``, one
rendezvous id); ``c`` holds another.  Each runs a small trio program with the real
`run_beacons` / `run_mdns` and prints what it discovers as JSON lines; the test reads the
lines with timeouts and asks each program for its counters at the end.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.netlab.fixtures import lab  # noqa: F401
from tests.netlab.lab import Lab, read_line
from tests.netlab.nodes import Host

pytestmark = pytest.mark.netlab

REPO = str(Path(__file__).resolve().parents[2])
SUBNET = "10.7.0.0/24"
PORT = 51234
KEY_AB, KEY_C = "11" * 32, "22" * 32
RID_AB, RID_C = "ab" * 16, "cd" * 16
# Seconds to wait for one line; discovery itself takes about 1 s (beacons) or 2 s (mDNS).
LINE_TIMEOUT = 15.0

# argv: repo, lan_key hex, port, interface, family ("inet" or "dual").  Prints "ready", then
# one JSON [ip, port] per newly verified beacon source; on a line on stdin, prints counters.
BEACON_NODE = r"""
import json, socket, sys, time
sys.path.insert(0, sys.argv[1])
import trio
from transports.beacon import BEACON_TYPE, BeaconCore
from transports.lan import run_beacons

key, port, iface, family = bytes.fromhex(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]

async def main():
    if family == "dual":
        sock = trio.socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        await sock.bind(("::", port))
        def target(addr): return ("::ffff:" + addr[0], addr[1])
    else:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await sock.bind(("0.0.0.0", port))
        def target(addr): return addr
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    core, heard, heard_after, start = BeaconCore(key), [], [], trio.current_time()

    async def send(data, addr):
        await sock.sendto(data, target(addr))
        return True

    async def receive():
        while True:
            data, source = await sock.recvfrom(2048)
            source = (source[0].removeprefix("::ffff:"), source[1])
            if data[:1] == BEACON_TYPE and core.verify_untrusted(data, time.time()) \
                    and list(source) not in heard:
                heard.append(list(source))
                heard_after.append(trio.current_time() - start)
                print(json.dumps(list(source)), flush=True)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_beacons, send, core, port, [iface])
        nursery.start_soon(receive)
        print("ready", flush=True)
        await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
        print(json.dumps({"heard": heard, "heard_after": heard_after,
                          "counters": dict(core.counters)}), flush=True)
        nursery.cancel_scope.cancel()

trio.run(main)
"""

# argv: repo, rendezvous id hex, port, interface.  Prints "registered" once registered,
# "foreign" once it has ignored another rendezvous, one JSON [ip, port] per candidate; on a
# line on stdin, cancels run_mdns and prints the counters and how long closing took.
MDNS_NODE = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from collections import Counter
import trio
from transports.mdns import run_mdns

rid, port, iface = bytes.fromhex(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

async def main():
    counters, found, found_after, start = Counter(), [], [], trio.current_time()

    def on_candidate(addr):
        found.append(list(addr))
        found_after.append(trio.current_time() - start)
        print(json.dumps(list(addr)), flush=True)

    async def watch():
        said = set()
        while True:
            for key, line in (("mdns_registered", "registered"), ("mdns_foreign", "foreign")):
                if counters[key] and key not in said:
                    said.add(key)
                    print(line, flush=True)
            await trio.sleep(0.05)

    async with trio.open_nursery() as nursery:
        mdns_scope = trio.CancelScope()

        async def mdns():
            with mdns_scope:
                await run_mdns(rid, port, [iface], on_candidate, counters=counters)

        nursery.start_soon(mdns)
        nursery.start_soon(watch)
        await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
        started = trio.current_time()
        mdns_scope.cancel()
        while not mdns_scope.cancelled_caught:
            await trio.sleep(0.01)
        closed_in = trio.current_time() - started
        print(json.dumps({"found": found, "found_after": found_after,
                          "counters": dict(counters), "closed_in": closed_in}), flush=True)
        nursery.cancel_scope.cancel()

trio.run(main)
"""


def three_hosts(the_lab: Lab) -> tuple[Host, Host, Host]:
    segment = the_lab.segment("lan", SUBNET)
    hosts = the_lab.host("a"), the_lab.host("b"), the_lab.host("c")
    for host in hosts:
        the_lab.attach(host, segment)
    return hosts


def read_until(proc: subprocess.Popen[str], wanted: set[str]) -> list[str]:
    """Read lines until every line in ``wanted`` has been seen; return all lines read."""
    lines: list[str] = []
    while not wanted <= set(lines):
        lines.append(read_line(proc, LINE_TIMEOUT))
    return lines


def finish(proc: subprocess.Popen[str]) -> dict[str, Any]:
    """Ask the program for its summary, then let it exit."""
    assert proc.stdin is not None
    proc.stdin.write("stop\n")
    proc.stdin.flush()
    while True:  # skip any discovery lines still in flight
        line = read_line(proc, LINE_TIMEOUT)
        if line.startswith("{"):
            summary: dict[str, Any] = json.loads(line)
            break
    proc.wait(LINE_TIMEOUT)
    return summary


@pytest.mark.parametrize("family", ["inet", "dual"])
def test_beacons_find_the_neighbour_and_only_holders_verify(
    lab: Lab,  # noqa: F811
    family: str,
) -> None:
    a, b, c = three_hosts(lab)
    procs = {}
    for host, key in ((c, KEY_C), (a, KEY_AB), (b, KEY_AB)):
        procs[host.name] = lab.python(host, BEACON_NODE, REPO, key, str(PORT), "eth0", family)
        assert read_line(procs[host.name], LINE_TIMEOUT) == "ready"

    read_until(procs["a"], {json.dumps([b.ip, PORT])})
    read_until(procs["b"], {json.dumps([a.ip, PORT])})
    summaries = {name: finish(proc) for name, proc in procs.items()}
    print("beacon discovery after", {n: s["heard_after"] for n, s in summaries.items()})

    assert summaries["a"]["heard"] == [[b.ip, PORT]]
    assert summaries["b"]["heard"] == [[a.ip, PORT]]
    assert summaries["a"]["counters"]["drop_own"] >= 1  # its own 127.0.0.1 copy at least
    assert summaries["c"]["heard"] == []
    assert summaries["c"]["counters"]["drop_mac"] >= 2  # it did hear a's and b's beacons
    assert "send_error" not in summaries["a"]["counters"]


def test_mdns_finds_the_neighbour_of_the_same_rendezvous_only(lab: Lab) -> None:  # noqa: F811
    a, b, c = three_hosts(lab)
    port_of = {"a": 52001, "b": 52002, "c": 52003}
    procs = {"c": lab.python(c, MDNS_NODE, REPO, RID_C, str(port_of["c"]), "eth0")}
    read_until(procs["c"], {"registered"})  # so a and b browse while c is already there
    for host in (a, b):
        procs[host.name] = lab.python(
            host, MDNS_NODE, REPO, RID_AB, str(port_of[host.name]), "eth0"
        )

    read_until(procs["a"], {json.dumps([b.ip, port_of["b"]]), "foreign", "registered"})
    read_until(procs["b"], {json.dumps([a.ip, port_of["a"]]), "registered"})
    summaries = {name: finish(proc) for name, proc in procs.items()}
    print("mDNS", {n: (s["found_after"], s["closed_in"]) for n, s in summaries.items()})

    assert summaries["a"]["found"] == [[b.ip, port_of["b"]]]
    assert summaries["b"]["found"] == [[a.ip, port_of["a"]]]
    assert summaries["c"]["found"] == []
    for summary in summaries.values():
        assert summary["counters"].get("mdns_registered") == 1
        assert summary["closed_in"] < 1.0
