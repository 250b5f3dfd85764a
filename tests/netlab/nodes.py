"""The lab's nodes as plain records: segments (bridges with a subnet), hosts, routers.

Theory of operation: these classes only remember what `lab.Lab` built and hand out addresses;
they run no commands. A `Segment` allocates addresses from its subnet (lowest free first, so a
router made first on a LAN gets ``.1``) and refuses any address outside it, which together with
`ALLOWED_NETWORKS` keeps every lab address in TEST-NET, 10/8 or the IPv6 documentation prefix.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Literal

from .netns import LabError

# The only networks the lab may use (TEST-NET-1/2/3, 10/8 and the IPv6 documentation prefix
# 2001:db8::/32 of RFC 3849); nothing else is ever assigned.
ALLOWED_NETWORKS: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = tuple(
    ipaddress.ip_network(net)
    for net in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "10.0.0.0/8", "2001:db8::/32")
)
# Node names become part of namespace names; keep them short and shell-safe.
NODE_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9]{0,23}$")
# Linux interface names are at most 15 bytes (IFNAMSIZ 16 with the NUL).
IFNAME_PATTERN = re.compile(r"^[a-z][a-z0-9]{0,14}$")

# Router kinds: "eim" endpoint-independent masquerade (a home router), "edm" endpoint-dependent
# ("symmetric"), "udp-blocked" like "eim" for TCP but forwarding no UDP at all (a strict firewall).
Nat = Literal["eim", "edm", "udp-blocked"]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def allowed(network: Network) -> bool:
    """Whether a network lies inside one of the `ALLOWED_NETWORKS` (of its own IP version)."""
    return any(
        network.version == net.version and network.subnet_of(net)  # type: ignore[arg-type]
        for net in ALLOWED_NETWORKS
    )


@dataclass
class Segment:
    """A LAN segment: a bridge in its own namespace, with one IPv4 or IPv6 subnet to hand out."""

    name: str
    netns: str
    subnet: Network
    gateway: str | None = None  # The LAN address of the router serving this segment, if any.
    used: set[Address] = field(default_factory=set, repr=False)
    ports: int = 0  # Bridge ports made so far (names the switch-side veth ends p0, p1, ...).

    @property
    def broadcast(self) -> str:
        """The subnet broadcast address (what LAN discovery must use; see LAB-NOTES)."""
        return str(self.subnet.broadcast_address)

    def allocate(self, address: str | None) -> Address:
        """Reserve the given address, or the lowest free one, after checking it fits the subnet."""
        if address is None:
            for candidate in self.subnet.hosts():
                if candidate not in self.used:
                    self.used.add(candidate)
                    return candidate
            raise LabError(f"segment {self.name}: subnet {self.subnet} is full")
        wanted = ipaddress.ip_address(address)
        if wanted not in self.subnet or wanted in (
            self.subnet.network_address,
            self.subnet.broadcast_address,
        ):
            raise LabError(f"segment {self.name}: {wanted} is not a host address of {self.subnet}")
        if wanted in self.used:
            raise LabError(f"segment {self.name}: {wanted} is already in use")
        self.used.add(wanted)
        return wanted


@dataclass
class Attachment:
    """One host interface on one segment."""

    segment: Segment = field(repr=False)
    ifname: str
    address: str


@dataclass
class Host:
    """A network namespace with loopback up; its interfaces are its attachments."""

    name: str
    netns: str
    attachments: list[Attachment] = field(default_factory=list)
    has_default_route: bool = False
    extra_addresses: list[str] = field(default_factory=list)  # From `Lab.add_address`.

    def on(self, segment: Segment) -> Attachment:
        """This host's attachment to a segment."""
        for attachment in self.attachments:
            if attachment.segment is segment:
                return attachment
        raise LabError(f"host {self.name} is not attached to segment {segment.name}")

    @property
    def ip(self) -> str:
        """The address of the host's first attachment (the usual single-homed case)."""
        if not self.attachments:
            raise LabError(f"host {self.name} has no address yet")
        return self.attachments[0].address


@dataclass
class Router(Host):
    """A host forwarding between a WAN and a LAN segment, optionally masquerading."""

    wan: Attachment | None = None
    lan: Attachment | None = None
    nat: Nat | None = None
