"""The network lab's own tests: real namespaces, real packets, no mocks.

Each test builds a small lab (tens of milliseconds), runs tiny Python UDP programs inside its
namespaces with `Lab.python`, and reads back what they saw as JSON.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .fixtures import require_lab
from .lab import Lab, read_line
from .netns import LabError, list_labs, list_namespaces
from .nodes import Host
from .p2pd_procs import add_counters, read_counter
from .presets import PRESETS

pytestmark = pytest.mark.netlab

REPO = Path(__file__).resolve().parents[2]
SINK_PORT = 5000
CONTROL_PORT = 5001

# A UDP sink: binds the ports in argv[2:], says "ready", records every datagram until it has
# seen b"done" and then gone quiet for a moment (or been idle argv[1] seconds), prints JSON.
SINK = r"""
import json, selectors, socket, sys
idle, ports = float(sys.argv[1]), [int(p) for p in sys.argv[2:]]
sel = selectors.DefaultSelector()
for port in ports:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, 33, 1 << 22)  # SO_RCVBUFFORCE (root): no overflow drops
    s.bind(("0.0.0.0", port))
    sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
got, done = [], False
while True:
    events = sel.select(0.2 if done else idle)
    if not events:
        break
    for key, _ in events:
        data, (ip, sport) = key.fileobj.recvfrom(2048)
        if data == b"done":
            done = True
        else:
            got.append([data.decode(), ip, sport, key.fileobj.getsockname()[1]])
print(json.dumps(got), flush=True)
"""

# Sends argv[2] datagrams numbered from 0 to (argv[1], argv[3]), then b"done" to the control port.
BLAST = r"""
import socket, sys
ip, count, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(count):
    s.sendto(str(i).encode(), (ip, port))
for _ in range(3):
    s.sendto(b"done", (ip, int(sys.argv[4])))
"""


def start_sink(lab: Lab, host: Host, *ports: int, idle: float = 10.0) -> subprocess.Popen[str]:
    sink = lab.python(host, SINK, str(idle), *map(str, ports))
    assert read_line(sink) == "ready"
    return sink


def sink_result(sink: subprocess.Popen[str]) -> list[list[Any]]:
    out, _ = sink.communicate(timeout=15)
    result: list[list[Any]] = json.loads(out)
    return result


def blast(lab: Lab, sender: Host, to: Host, count: int, port: int = SINK_PORT) -> None:
    argv = [sys.executable, "-c", BLAST, to.ip, str(count), str(port), str(CONTROL_PORT)]
    lab.check_output(sender, argv)


def lan(lab: Lab) -> tuple[Host, Host]:
    PRESETS["lan2"](lab)
    return lab.hosts["host1"], lab.hosts["host2"]


def test_two_hosts_on_a_segment_exchange_udp(lab: Lab) -> None:
    a, b = lan(lab)
    echo = lab.python(b, """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 5000))
print("ready", flush=True)
data, peer = s.recvfrom(100); s.sendto(data.upper(), peer)
""")  # fmt: skip
    assert read_line(echo) == "ready"
    client = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
s.sendto(b"ping", (sys.argv[1], 5000)); data, peer = s.recvfrom(100)
print(data.decode(), peer[0])
"""
    out = lab.check_output(a, [sys.executable, "-c", client, b.ip])
    assert out.split() == ["PING", b.ip]


def test_subnet_broadcast_reaches_the_other_host(lab: Lab) -> None:
    a, b = lan(lab)
    sink = start_sink(lab, b, SINK_PORT, CONTROL_PORT)
    sender = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.sendto(b"hello", (sys.argv[1], 5000)); s.sendto(b"done", (sys.argv[2], 5001))
"""
    broadcast = lab.segments["lan"].broadcast
    assert broadcast == "10.7.0.255"
    lab.check_output(a, [sys.executable, "-c", sender, broadcast, b.ip])
    assert [(data, ip) for data, ip, _, _ in sink_result(sink)] == [("hello", a.ip)]


def test_limited_broadcast_is_unreachable_without_a_default_route(lab: Lab) -> None:
    a, _ = lan(lab)
    sender = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
try:
    s.sendto(b"hello", ("255.255.255.255", 5000))
except OSError as exc:
    print(exc.errno)
"""
    assert lab.check_output(a, [sys.executable, "-c", sender]).strip() == "101"  # ENETUNREACH


# From one LAN host, NAT_TRIES sockets each send to two public hosts; the sinks report the
# (address, port) each datagram arrived from, i.e. the NAT's mapping per destination.
NAT_TRIES = 3
NAT_PROBE = r"""
import socket, sys
targets = [(ip, 5000) for ip in sys.argv[2:]]
for i in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 0))
    for ip, port in targets:
        s.sendto(str(i).encode(), (ip, port))
for ip, _ in targets:
    s.sendto(b"done", (ip, 5001))
"""


def nat_mappings(lab: Lab, preset: str) -> tuple[str, list[tuple[tuple[str, int], ...]]]:
    """Build preset plus a second public host; return the router's WAN address and, per try,
    the (source address, source port) seen by each of the two public hosts."""
    PRESETS[preset](lab)
    server2 = lab.host("server2")
    lab.attach(server2, lab.segments["pub"])
    servers = [lab.hosts["server"], server2]
    sinks = [start_sink(lab, server, SINK_PORT, CONTROL_PORT) for server in servers]
    argv = [sys.executable, "-c", NAT_PROBE, str(NAT_TRIES), *(s.ip for s in servers)]
    lab.check_output(lab.hosts["alice"], argv)
    seen = [{int(data): (ip, port) for data, ip, port, _ in sink_result(s)} for s in sinks]
    wan = lab.hosts["rtr1"].attachments[0].address
    return wan, [(seen[0][i], seen[1][i]) for i in range(NAT_TRIES)]


def test_eim_nat_maps_one_socket_to_one_public_port_for_all_destinations(lab: Lab) -> None:
    wan, tries = nat_mappings(lab, "nat-eim")
    assert wan == "203.0.113.11"
    for to_server, to_server2 in tries:
        assert to_server[0] == to_server2[0] == wan
        assert to_server[1] == to_server2[1]


def test_edm_nat_maps_each_destination_to_its_own_public_port(lab: Lab) -> None:
    wan, tries = nat_mappings(lab, "nat-edm")
    assert all(a[0] == b[0] == wan for a, b in tries)
    # fully-random picks each port at random: a clash has odds ~1/64k per try, so ask for 2 of 3.
    assert sum(a[1] != b[1] for a, b in tries) >= NAT_TRIES - 1


def test_loss_drops_about_the_configured_share(lab: Lab) -> None:
    a, b = lan(lab)
    lab.loss(b, 30, udp_port=SINK_PORT)
    sink = start_sink(lab, b, SINK_PORT, CONTROL_PORT)
    blast(lab, a, b, 1000)
    received = len(sink_result(sink))
    assert 550 <= received <= 850  # 15-45 % lost


def test_loss_on_one_port_spares_the_others(lab: Lab) -> None:
    a, b = lan(lab)
    lab.loss(b, 100, udp_port=SINK_PORT)
    sink = start_sink(lab, b, SINK_PORT, CONTROL_PORT, 5002)
    blast(lab, a, b, 200, SINK_PORT)
    blast(lab, a, b, 1000, 5002)
    ports = [port for _, _, _, port in sink_result(sink)]
    assert ports.count(SINK_PORT) == 0
    assert ports.count(5002) == 1000


def test_loss_of_zero_removes_the_drop(lab: Lab) -> None:
    a, b = lan(lab)
    lab.loss(b, 100)
    lab.loss(b, 0)
    sink = start_sink(lab, b, SINK_PORT, CONTROL_PORT)
    blast(lab, a, b, 100)
    assert len(sink_result(sink)) == 100


def test_block_udp_silently_drops_udp_to_the_host(lab: Lab) -> None:
    a, b = lan(lab)
    lab.block_udp(b)
    sink = start_sink(lab, b, SINK_PORT, CONTROL_PORT, idle=0.5)
    blast(lab, a, b, 20)
    assert sink_result(sink) == []


def test_block_udp_on_a_router_stops_forwarded_udp(lab: Lab) -> None:
    PRESETS["nat-eim"](lab)
    lab.block_udp(lab.hosts["rtr1"])
    sink = start_sink(lab, lab.hosts["server"], SINK_PORT, CONTROL_PORT, idle=0.5)
    blast(lab, lab.hosts["alice"], lab.hosts["server"], 20)
    assert sink_result(sink) == []


# One TCP connection: the server prints the peer address it saw, the client the reply.
TCP_SERVER = r"""
import socket
s = socket.create_server(("0.0.0.0", 5000)); print("ready", flush=True)
c, peer = s.accept(); c.sendall(c.recv(100).upper()); print(peer[0], flush=True)
"""
TCP_CLIENT = r"""
import socket, sys
c = socket.create_connection((sys.argv[1], 5000), timeout=5); c.sendall(b"syn")
print(c.recv(100).decode())
"""


def test_udp_blocked_router_forwards_no_udp(lab: Lab) -> None:
    PRESETS["nat-udp-blocked"](lab)
    sink = start_sink(lab, lab.hosts["server"], SINK_PORT, CONTROL_PORT, idle=0.5)
    blast(lab, lab.hosts["alice"], lab.hosts["server"], 20)
    assert sink_result(sink) == []


def test_udp_blocked_router_still_forwards_tcp_behind_its_nat(lab: Lab) -> None:
    PRESETS["nat-udp-blocked"](lab)
    server = lab.python(lab.hosts["server"], TCP_SERVER)
    assert read_line(server) == "ready"
    argv = [sys.executable, "-c", TCP_CLIENT, lab.hosts["server"].ip]
    assert lab.check_output(lab.hosts["alice"], argv).strip() == "SYN"
    assert read_line(server) == "203.0.113.11"  # masqueraded, as by a home router


def test_ipv6_only_segment_carries_udp_and_has_no_ipv4(lab: Lab) -> None:
    PRESETS["lan2-v6"](lab)
    a, b = lab.hosts["host1"], lab.hosts["host2"]
    assert (a.ip, b.ip) == ("2001:db8:7::1", "2001:db8:7::2")
    echo = lab.python(b, """
import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.bind(("::", 5000))
print("ready", flush=True)
data, peer = s.recvfrom(100); s.sendto(data.upper(), peer)
""")  # fmt: skip
    assert read_line(echo) == "ready"
    client = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.settimeout(5)
s.sendto(b"ping", (sys.argv[1], 5000)); data, peer = s.recvfrom(100)
print(data.decode(), peer[0])
"""
    out = lab.check_output(a, [sys.executable, "-c", client, b.ip])
    assert out.split() == ["PING", b.ip]
    for host in (a, b):
        v4 = json.loads(lab.check_output(host, ["ip", "-j", "-4", "addr", "show"]))
        assert [i["local"] for link in v4 for i in link.get("addr_info", [])] == ["127.0.0.1"]
        assert route_get(lab, host, "2001:4860:4860::8888") is None
        assert route_get(lab, host, "1.1.1.1") is None


def test_ipv6_outside_the_documentation_prefix_is_refused(lab: Lab) -> None:
    with pytest.raises(LabError, match="outside"):
        lab.segment("ula", "fd00:1::/64")


# Sends argv[2] GSO batches of argv[3] 1,200-byte datagrams (UDP_SEGMENT, as p2pd's node does).
GSO_BLAST = r"""
import socket, struct, sys
ip, batches, per_batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(batches):
    s.sendmsg([b"x" * 1200 * per_batch], [(socket.SOL_UDP, 103, struct.pack("=H", 1200))],
              0, (ip, 5000))
"""
GSO_BATCHES = 20
GSO_PER_BATCH = 50


def gso_packets_seen(lab: Lab) -> int:
    """Blast GSO batches host1 -> host2; the packets host2's prerouting hook saw."""
    a, b = lan(lab)
    add_counters(lab, b, "probe", "prerouting", {"gso": f"udp dport {SINK_PORT}"})
    argv = [sys.executable, "-c", GSO_BLAST, b.ip, str(GSO_BATCHES), str(GSO_PER_BATCH)]
    lab.check_output(a, argv)
    return read_counter(lab, b, "probe", "gso")


def test_gso_batches_cross_the_lab_as_single_datagrams(lab: Lab) -> None:
    assert gso_packets_seen(lab) == GSO_BATCHES * GSO_PER_BATCH


def test_with_segment_offload_a_gso_batch_crosses_as_one_packet() -> None:
    """The control: what per-datagram loss would face without WIRE_GSO_MAX_SEGS."""
    require_lab()
    with Lab(segment_offload=True) as lab:
        assert gso_packets_seen(lab) == GSO_BATCHES


def test_cut_udp_drops_between_two_public_addresses_until_healed(lab: Lab) -> None:
    PRESETS["nat-eim"](lab)
    pub, server = lab.segments["pub"], lab.hosts["server"]
    lab.cut_udp(pub, "203.0.113.11", server.ip)
    sink = start_sink(lab, server, SINK_PORT, CONTROL_PORT, idle=0.5)
    blast(lab, lab.hosts["alice"], server, 20)
    blast(lab, lab.hosts["bob"], server, 20)
    assert {ip for _, ip, _, _ in sink_result(sink)} == {"203.0.113.12"}
    lab.heal(pub)
    sink = start_sink(lab, server, SINK_PORT, CONTROL_PORT)
    blast(lab, lab.hosts["alice"], server, 20)
    assert len(sink_result(sink)) == 20


def test_a_second_address_on_a_host_answers(lab: Lab) -> None:
    PRESETS["nat-eim"](lab)
    server = lab.hosts["server"]
    assert lab.add_address(server, lab.segments["pub"], "203.0.113.2") == "203.0.113.2"
    sink = start_sink(lab, server, SINK_PORT, CONTROL_PORT)
    argv = [sys.executable, "-c", BLAST, "203.0.113.2", "5", str(SINK_PORT), str(CONTROL_PORT)]
    lab.check_output(lab.hosts["alice"], argv)
    assert len(sink_result(sink)) == 5


# From the server's SINK_PORT, one datagram to a router's WAN address and POISON_PORT; then
# alice sends from POISON_PORT to that SINK_PORT, the flow whose reply tuple it would clash with.
POISON_PORT = 40001
POISON = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", int(sys.argv[2])))
s.sendto(b"early probe", (sys.argv[1], int(sys.argv[3])))
"""
FROM_PORT = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", int(sys.argv[2])))
s.sendto(b"0", (sys.argv[1], int(sys.argv[3]))); s.sendto(b"done", (sys.argv[1], int(sys.argv[4])))
"""


@pytest.mark.parametrize("drop_wan_input", [True, False])
def test_dropping_wan_input_keeps_an_early_probe_from_stealing_the_port(
    lab: Lab, drop_wan_input: bool
) -> None:
    pub, home = lab.segment("pub", "203.0.113.0/24"), lab.segment("home1", "10.1.0.0/24")
    server, alice = lab.host("server"), lab.host("alice")
    lab.attach(server, pub, "203.0.113.1")
    lab.router("rtr1", pub, home, "eim", wan_address="203.0.113.11", drop_wan_input=drop_wan_input)
    lab.attach(alice, home)
    poison = [sys.executable, "-c", POISON, "203.0.113.11", str(SINK_PORT), str(POISON_PORT)]
    lab.check_output(server, poison)
    sink = start_sink(lab, server, SINK_PORT, CONTROL_PORT)
    argv = [sys.executable, "-c", FROM_PORT, server.ip, str(POISON_PORT), str(SINK_PORT),
            str(CONTROL_PORT)]  # fmt: skip
    lab.check_output(alice, argv)
    [(_, ip, port, _)] = sink_result(sink)
    assert ip == "203.0.113.11"
    assert (port == POISON_PORT) == drop_wan_input


def test_teardown_removes_every_namespace_even_when_the_body_raises() -> None:
    require_lab()
    with pytest.raises(RuntimeError), Lab() as lab:
        PRESETS["nat-edm"](lab)
        assert len(list_labs()[lab.prefix]) == 8
        raise RuntimeError("test body failed")
    assert lab.prefix not in list_labs()


def test_teardown_kills_processes_started_in_the_lab() -> None:
    require_lab()
    with Lab() as lab:
        host = lab.host("h")
        proc = lab.python(host, "import sys; print('up', flush=True); sys.stdin.read()")
        assert read_line(proc) == "up"
        # A grandchild in its own session escapes the process group; teardown still finds it.
        stray = lab.python(host, """
import subprocess, sys
p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                     start_new_session=True)
print(p.pid, flush=True)
""")  # fmt: skip
        grandchild = int(read_line(stray))
    assert proc.returncode is not None
    assert not Path(f"/proc/{grandchild}").exists() or _is_zombie(grandchild)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_two_labs_with_the_same_node_names_do_not_collide(lab: Lab) -> None:
    lan(lab)
    with Lab() as other:
        lan(other)
        assert lab.prefix != other.prefix
    assert lab.prefix in list_labs()
    assert other.prefix not in list_labs()


def root_ipv4_addresses() -> list[ipaddress.IPv4Address]:
    """The root namespace's own IPv4 addresses (read only)."""
    out = subprocess.run(
        ["ip", "-j", "-4", "addr", "show"], capture_output=True, text=True, check=True
    ).stdout
    return [
        ipaddress.IPv4Address(info["local"])
        for link in json.loads(out)
        for info in link.get("addr_info", [])
        if link["ifname"] != "lo"
    ]


def route_get(lab: Lab, host: Host, address: str) -> str | None:
    """`ip route get` inside host: the output, or None when the kernel has no route."""
    try:
        return lab.check_output(host, ["ip", "route", "get", address])
    except subprocess.CalledProcessError:
        return None


def test_no_lab_namespace_has_a_route_out_of_the_lab(lab: Lab) -> None:
    PRESETS["nat-eim"](lab)
    lab_nets = [segment.subnet for segment in lab.segments.values()]
    outside = ["1.1.1.1"] + [
        str(a) for a in root_ipv4_addresses() if not any(a in net for net in lab_nets)
    ]
    gateways = {s.gateway: s for s in lab.segments.values() if s.gateway}
    for host in lab.hosts.values():
        for address in outside:
            route = route_get(lab, host, address)
            if route is None:
                continue
            # Only a LAN host may have a route, and only via its lab router, which has none.
            gateway = route.split(" via ")[1].split()[0]
            assert gateway in gateways, route
            router = next(
                h for h in lab.hosts.values() if any(a.address == gateway for a in h.attachments)
            )
            assert route_get(lab, router, address) is None
    for segment in lab.segments.values():
        switch = Host(segment.name, segment.netns)
        assert all(route_get(lab, switch, address) is None for address in outside)


def root_links() -> list[tuple[str, str]]:
    out = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True, check=True)
    return sorted(
        (link["ifname"], info["local"])
        for link in json.loads(out.stdout)
        for info in link.get("addr_info", [{"local": ""}])
    )


def test_the_root_namespace_interfaces_are_untouched() -> None:
    require_lab()
    before = root_links()
    for preset in PRESETS.values():
        with Lab() as lab:
            preset(lab)
    assert root_links() == before


def test_addresses_outside_test_net_and_ten_slash_eight_are_refused(lab: Lab) -> None:
    with pytest.raises(LabError, match="outside"):
        lab.segment("home", "192.168.1.0/24")
    segment = lab.segment("ok", "10.9.0.0/24")
    with pytest.raises(LabError, match="not a host address"):
        lab.attach(lab.host("h"), segment, "10.8.0.1")


def test_cli_up_list_down(lab: Lab) -> None:
    prefix = lab.prefix + "cli"
    cli = [sys.executable, str(REPO / "tools" / "netlab")]
    try:
        up = subprocess.run([*cli, "up", "nat-edm", "--prefix", prefix], capture_output=True,
                            text=True, check=True, timeout=30)  # fmt: skip
        assert "203.0.113.11/24 (wan0)" in up.stdout
        listed = subprocess.run([*cli, "list"], capture_output=True, text=True, check=True)
        assert f"{prefix}-alice" in listed.stdout
        subprocess.run([*cli, "down", prefix], capture_output=True, check=True, timeout=30)
        assert not [ns for ns in list_namespaces() if ns.startswith(prefix + "-")]
    finally:
        if prefix in list_labs():
            subprocess.run([*cli, "down", prefix], capture_output=True, check=False)


def test_ci_turns_a_missing_lab_into_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    from . import fixtures

    monkeypatch.setattr(fixtures, "lab_unavailable_reason", lambda: "no root here")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no root here"):
        require_lab()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="no root here"):
        require_lab()
