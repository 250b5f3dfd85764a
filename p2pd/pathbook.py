"""Which path a peer's address is: the label a session reports in ``connected``, ``path`` and
``delivered`` events.

Why a book: an address can be learned several ways (a punched check, the peer's own ``cands``
saying it is a port mapping, a LAN beacon), and the label must not depend on which came
first.  Each address keeps the best label it was given (lowest :data:`transports.base.
PATH_RANK`).  A local-scope address is always ``lan``, a public one never labelled is
``direct``; virtual addresses are labelled by their transport (``relay``/``tcp``/``tor``).

A direct UDP session is reported as ``mapped`` whenever a gateway port mapping carries it:
the peer said the address is its mapping, or we hold a mapping ourselves and the peer's
address is public (its datagrams enter through our mapped port, no punching needed).
"""

from __future__ import annotations

import ipaddress
from typing import Final

from p2pd import vaddr
from transports.base import PATH_RANK, Addr, Path

#: Local-scope networks: an address there is on our LAN (or the peer's, behind its NAT).
#: Python's ``is_private`` is not used: it also covers the TEST-NET ranges that stand for
#: the public internet in the lab.
LOCAL_NETWORKS: Final = tuple(
    ipaddress.ip_network(net)
    for net in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "127.0.0.0/8",
        "fc00::/7",
        "fe80::/10",
        "::1/128",
    )
)


def is_local(host: str) -> bool:
    """Whether ``host`` is a loopback, link-local, private or CGNAT address."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in LOCAL_NETWORKS)


class PathBook:
    """Labels by address; see the module docstring."""

    __slots__ = ("_labels", "mapped")

    def __init__(self) -> None:
        self._labels: dict[Addr, Path] = {}
        #: Our own gateway mapping, while we hold one.
        self.mapped: Addr | None = None

    def __repr__(self) -> str:
        return f"PathBook(labels={len(self._labels)}, mapped={self.mapped})"

    def note(self, addr: Addr, path: Path) -> None:
        """``addr`` was learned as ``path``; keeps the best label."""
        known = self._labels.get(addr)
        if known is None or PATH_RANK[path] < PATH_RANK[known]:
            self._labels[addr] = path

    def label(self, addr: Addr, virtual: Path | None = None) -> Path:
        """The path a session at ``addr`` is on (``virtual``: the label of a virtual one)."""
        if vaddr.is_virtual(addr):
            return virtual or "relay"
        if is_local(addr[0]):
            return "lan"  # however it was found (a punched check, an offer), it is one hop
        path: Path = self._labels.get(addr) or "direct"
        if path in ("direct", "punched") and self.mapped is not None:
            return "mapped"
        return path

    def rank(self, addr: Addr) -> int:
        """Roaming rank: real addresses are equals (plain roaming), virtual ones worse, and a
        Tor stream worst (the slowest path, kept only while nothing else works)."""
        target = vaddr.parse(addr)
        if target is None:
            return 0
        return PATH_RANK["tor" if isinstance(target, vaddr.TorPath) else "relay"]
