"""NAT mapping classification from STUN observations, in RFC 4787 / RFC 5780 terms.

Theory of operation
-------------------
A STUN Binding response tells us the address a server saw our datagram come from: the
*mapping* our NAT (if any) made for that destination.  Comparing the mappings the same
local socket got towards several destinations classifies the NAT (RFC 4787 section 4.1,
the tests of RFC 5780 section 4.3):

- the mapped address is one of our own local addresses: there is no NAT ("no-nat"), and
  the mapping is trivially endpoint-independent;
- the same mapping towards servers at two different IP addresses: endpoint-independent
  (a home router; hole punching works with the one reflexive address);
- a different mapping towards different IPs, but the same towards two ports of one IP:
  address-dependent;
- a different mapping towards two ports of one IP: address-and-port-dependent (a
  "symmetric" NAT; punching needs port prediction or a relay).

Without two ports of one IP (a server offering OTHER-ADDRESS provides them) a mapping
that varies with the destination IP is reported as address-dependent, with
``port_dependence_tested`` False.  With fewer than two distinct server IPs nothing can be
said: "unknown".  The classification is pure: observations in, a frozen result out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

Addr = tuple[str, int]

#: RFC 4787 mapping behaviours, plus "unknown" when the observations cannot tell.
Mapping = Literal[
    "endpoint-independent", "address-dependent", "address-and-port-dependent", "unknown"
]
#: Whether a NAT sits between us and the servers: "unknown" when no server answered.
NatPresence = Literal["no-nat", "nat", "unknown"]

#: Fewest distinct server IP addresses whose answers can show how the mapping behaves.
MIN_DISTINCT_SERVER_IPS = 2


@dataclass(frozen=True, slots=True)
class Observation:
    """One STUN answer: the server we asked and the mapped address it saw us at."""

    server: Addr
    mapped: Addr


@dataclass(frozen=True, slots=True)
class NatClass:
    """What the STUN probes showed; see the module docstring for the rules."""

    presence: NatPresence
    mapping: Mapping
    #: Our address as the first answering server saw it, or None if none answered.
    reflexive: Addr | None
    observations: tuple[Observation, ...]
    #: Whether two ports of one server IP were compared (so ADM is told from APDM).
    port_dependence_tested: bool = False
    #: Whether the NAT kept our local port (None when the local port is not known).
    port_preserved: bool | None = None

    @property
    def endpoint_dependent(self) -> bool:
        """Whether the mapping changes with the destination (plain punching will not do)."""
        return self.mapping in ("address-dependent", "address-and-port-dependent")

    def describe(self) -> str:
        """One line for ``p2pd status``."""
        if self.reflexive is None:
            return "NAT: unknown (no STUN server answered)"
        where = f"{self.reflexive[0]}:{self.reflexive[1]}"
        if self.presence == "no-nat":
            return f"NAT: none, public address {where}"
        if self.mapping == "unknown":
            return f"NAT: mapping unknown (one server IP answered), reflexive {where}"
        if self.mapping == "endpoint-independent":
            return f"NAT: endpoint-independent mapping, reflexive {where} (punching works)"
        untested = "" if self.port_dependence_tested else "; port dependence not tested"
        return (
            f"NAT: {self.mapping} mapping, a new port per destination from "
            f"{self.reflexive[0]} (punching needs port prediction or a relay{untested})"
        )

    def as_dict(self) -> dict[str, object]:
        """The result for ``--json``: plain strings, numbers, booleans and lists."""
        return {
            "nat": self.presence,
            "mapping": self.mapping,
            "reflexive": _show(self.reflexive) if self.reflexive else None,
            "port_dependence_tested": self.port_dependence_tested,
            "port_preserved": self.port_preserved,
            "servers": [
                {"server": _show(o.server), "mapped": _show(o.mapped)} for o in self.observations
            ],
        }


def _show(addr: Addr) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def canonical(addr: Addr) -> Addr:
    """Addresses compared by value: ``::FFFF:1.2.3.4`` is ``1.2.3.4``; ValueError if no IP."""
    ip = ipaddress.ip_address(addr[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip), addr[1]


def classify(
    observations: Sequence[Observation],
    local: Collection[Addr] = (),
    *,
    local_port: int | None = None,
) -> NatClass:
    """Classify the mapping behaviour from ``observations`` (one local socket, in order).

    ``local`` holds our own ``(ip, port)`` addresses (the node's socket port on each local
    IP); a mapped address among them means no NAT.  ``local_port`` (the socket's port)
    lets the result say whether the NAT preserved it.
    """
    obs = tuple(Observation(canonical(o.server), canonical(o.mapped)) for o in observations)
    if not obs:
        return NatClass("unknown", "unknown", None, ())
    reflexive = obs[0].mapped
    preserved = None if local_port is None else reflexive[1] == local_port
    own = {canonical(a) for a in local}
    if any(o.mapped in own for o in obs):
        return NatClass("no-nat", "endpoint-independent", reflexive, obs, port_preserved=True)
    same_ip_pairs = [
        (a, b)
        for i, a in enumerate(obs)
        for b in obs[i + 1 :]
        if a.server[0] == b.server[0] and a.server[1] != b.server[1]
    ]
    port_tested = bool(same_ip_pairs)
    if any(a.mapped != b.mapped for a, b in same_ip_pairs):
        mapping: Mapping = "address-and-port-dependent"
    elif len({o.server[0] for o in obs}) < MIN_DISTINCT_SERVER_IPS:
        mapping = "unknown"
    elif len({o.mapped for o in obs}) == 1:
        mapping = "endpoint-independent"
    else:
        mapping = "address-dependent"
    return NatClass("nat", mapping, reflexive, obs, port_tested, preserved)
