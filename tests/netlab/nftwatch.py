"""Count what leaves a lab namespace for anyone but an allowed set of addresses.

Why: "nothing but the Tor network is dialed" (the private Tor network's own test, and
``p2pd --tor-only`` in test_tor_lab) is a claim about packets, so it is checked with
nftables counters in the namespace's output hook, not by reading logs.

Theory of operation: `watch_outbound` routes the namespace's default into a sink, a veth
pair with both ends inside the namespace (no dummy module on every kernel) and a static
neighbour for the gateway (no ARP), so a packet to any address outside the lab is routed
there and counted, never delivered. Three named counters in ``table inet watch``, all in
the output hook and blind to loopback:

- ``leaked``: IPv4 to an address not in ``allowed`` (any interface: the sink, a lab segment,
  broadcast and multicast alike);
- ``leaked6``: IPv6 other than ICMPv6 (link-local autoconfiguration chatter: DAD, RS, MLD);
- ``allowed``: IPv4 to the allowed addresses (proof that the traffic under test went out).

`send_canary` sends one datagram to TEST-NET-1 through the sink: a test that reads
``leaked`` as 0 sends it afterwards and reads 1, which proves the counter sees what it
claims to.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from .lab import Lab
from .netns import LabError
from .nodes import Host

#: A TEST-NET-1 address outside every lab segment: the canary's destination.
CANARY_ADDRESS = "192.0.2.1"
DISCARD_PORT = 9
#: The sink gateway's made-up MAC address (locally administered).
SINK_MAC = "02:00:00:00:00:02"
#: The nftables table holding the counters.
TABLE = "watch"
COUNTERS = ("leaked", "leaked6", "allowed")


def watch_outbound(lab: Lab, host: Host, sink: int, allowed: Sequence[str]) -> None:
    """Route host's default into a counted sink (10.66.SINK.0/24) and count its output.

    ``allowed``: the IPv4 addresses host may send to; ``sink`` must differ per host of a
    lab that watches several (it names the sink's subnet).
    """
    address, gateway = f"10.66.{sink}.1", f"10.66.{sink}.2"
    lab.check_output(host, ["ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1"])
    lab.check_output(host, ["ip", "addr", "add", f"{address}/24", "dev", "d0"])
    for ifname in ("d0", "d1"):  # no IPv6 autoconfiguration chatter (DAD, RS, MLD)
        lab.sysctl(host, f"net.ipv6.conf.{ifname}.disable_ipv6", "1")
        lab.check_output(host, ["ip", "link", "set", ifname, "up"])
    lab.check_output(host, ["ip", "neigh", "add", gateway, "lladdr", SINK_MAC, "dev", "d0"])
    lab.check_output(host, ["ip", "route", "add", "default", "via", gateway])
    allowed_set = ", ".join(allowed)
    lab.nft(host, f"table inet {TABLE} {{\n"
                  + "".join(f" counter {name} {{}}\n" for name in COUNTERS)
                  + " chain out {\n type filter hook output priority 0;\n"
                  ' oifname "lo" accept\n'
                  f' ip daddr {{ {allowed_set} }} counter name "allowed"\n'
                  f' ip daddr != {{ {allowed_set} }} counter name "leaked"\n'
                  ' meta nfproto ipv6 meta l4proto != ipv6-icmp counter name "leaked6"\n'
                  " }\n}\n")  # fmt: skip


def send_canary(lab: Lab, host: Host) -> None:
    """One UDP datagram from host to TEST-NET-1 (it goes into the sink): ``leaked`` + 1."""
    canary = (
        f"import socket; socket.socket(2, 2).sendto(b'x', ({CANARY_ADDRESS!r}, {DISCARD_PORT}))"
    )
    lab.check_output(host, ["python3", "-c", canary])


def outbound_counts(lab: Lab, host: Host) -> dict[str, int]:
    """Packets counted so far in host, by counter name (see the module docstring)."""
    listing = json.loads(lab.check_output(host, ["nft", "-j", "list", "counters", "table",
                                                 "inet", TABLE]))  # fmt: skip
    counts = {
        item["counter"]["name"]: int(item["counter"]["packets"])
        for item in listing["nftables"]
        if "counter" in item
    }
    if set(counts) != set(COUNTERS):
        raise LabError(f"{host.name}: table inet {TABLE} holds counters {sorted(counts)}")
    return counts
