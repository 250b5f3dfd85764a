"""Named topologies for `tools/netlab up NAME` and for tests: functions that build into a Lab.

Theory of operation: a preset only calls the public `Lab` API, so what `tools/netlab up` shows
by hand is exactly what a test gets. Addresses are fixed (not auto-allocated) so people and later
configs can name them; the public server sits at 203.0.113.1, where LAB-NOTES runs coturn.
To add a topology, write a function taking a `Lab` and register it in `PRESETS`. The
reachability matrix's cells (`matrix.build_cell`, with coturn, miniupnpd and the assist relay)
are built from the same pieces and constants.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from .lab import Lab
from .nodes import Nat

# The single bridged LAN of `lan2`, the subnet LAB-NOTES' broadcast recipe was measured on.
LAN2_SUBNET = "10.7.0.0/24"
# The "internet" of the NAT presets: TEST-NET-3, never routed anywhere real.
PUBLIC_SUBNET = "203.0.113.0/24"
# The public host (STUN/TURN/rendezvous server in later presets).
PUBLIC_SERVER = "203.0.113.1"
# The IPv6-only segment of `lan2-v6`: a /64 of the documentation prefix (RFC 3849).
LAN2_V6_SUBNET = "2001:db8:7::/64"
# Home LANs behind the two routers: (segment, LAN subnet, router, router WAN address, peer host).
HOMES = (
    ("home1", "10.1.0.0/24", "rtr1", "203.0.113.11", "alice"),
    ("home2", "10.2.0.0/24", "rtr2", "203.0.113.12", "bob"),
)


def lan2(lab: Lab) -> None:
    """Two hosts, host1 (10.7.0.1) and host2 (10.7.0.2), on one bridged segment `lan`."""
    lan = lab.segment("lan", LAN2_SUBNET)
    for name in ("host1", "host2"):
        lab.attach(lab.host(name), lan)


def lan2_v6(lab: Lab) -> None:
    """host1 (2001:db8:7::1) and host2 (2001:db8:7::2) on one IPv6-only bridged segment `lan6`.

    No IPv4 at all (only loopback's 127.0.0.1) and no router: link-local fe80:: addresses and
    the two documentation addresses are all there is, as on an IPv6-only LAN.
    """
    lan6 = lab.segment("lan6", LAN2_V6_SUBNET)
    for name in ("host1", "host2"):
        lab.attach(lab.host(name), lan6)


def two_homes(lab: Lab, nat: Nat) -> None:
    """A public segment `pub` with `server`, and two home LANs behind NAT routers of one kind.

    alice (10.1.0.2) is behind rtr1 (10.1.0.1 / 203.0.113.11); bob (10.2.0.2) is behind rtr2
    (10.2.0.1 / 203.0.113.12). Neither router has a route beyond the public segment.
    """
    pub = lab.segment("pub", PUBLIC_SUBNET)
    lab.attach(lab.host("server"), pub, PUBLIC_SERVER)
    for segment, subnet, router, wan_address, peer in HOMES:
        home = lab.segment(segment, subnet)
        lab.router(router, pub, home, nat, wan_address=wan_address)
        lab.attach(lab.host(peer), home)


PRESETS: dict[str, Callable[[Lab], None]] = {
    "lan2": lan2,
    "nat-eim": partial(two_homes, nat="eim"),
    "nat-edm": partial(two_homes, nat="edm"),
    "nat-udp-blocked": partial(two_homes, nat="udp-blocked"),
    "lan2-v6": lan2_v6,
}
