"""Virtual addresses: relayed and TCP paths named like UDP addresses, so the endpoint needs no
special case.

Why: the endpoint keys attempts and peers by address and roams a peer to the source of its
latest authentic packet.  A datagram that arrived through a relay (slot S at relay R) or on a
TCP connection (link L) gets a synthetic source address that names exactly that path; the
node's send side maps it back (wrap in a relay SEND, or frame it on the TCP link).  The
addresses come from the IPv6 discard-only prefix ``100::/64`` (RFC 6666): never routed, never
on the wire, so they can not collide with a real peer.  Their port is :data:`VIRTUAL_PORT`.

Layout (eight 16-bit groups)::

    100:0:0:0:7:R:S_hi:S_lo   relay number R, 32-bit slot S
    100:0:0:0:6:0:L_hi:L_lo   TCP link L (32-bit)
    100:0:0:0:5:0:L_hi:L_lo   Tor stream L (a TCP link id: the stream is framed the same way)
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final

from p2pd.errors import LocalError

Addr = tuple[str, int]

VIRTUAL_NETWORK: Final = ipaddress.IPv6Network("100::/64")
VIRTUAL_PORT: Final = 1
_RELAY_KIND: Final = 7
_TCP_KIND: Final = 6
_TOR_KIND: Final = 5
_U16: Final = 0xFFFF
_U32: Final = 0xFFFF_FFFF


@dataclass(frozen=True, slots=True)
class RelayPath:
    relay: int
    slot: int


@dataclass(frozen=True, slots=True)
class TcpPath:
    link: int


@dataclass(frozen=True, slots=True)
class TorPath:
    """A stream through Tor, carried as TCP link ``link``."""

    link: int


def _make(kind: int, a: int, b: int) -> Addr:
    value = (0x0100 << 112) | (kind << 48) | (a << 32) | b
    return str(ipaddress.IPv6Address(value)), VIRTUAL_PORT


def relay_addr(relay: int, slot: int) -> Addr:
    """The virtual address of the peer in ``slot`` at relay number ``relay``."""
    if not 0 <= relay <= _U16 or not 0 <= slot <= _U32:
        raise LocalError(f"relay {relay} / slot {slot} out of range")
    return _make(_RELAY_KIND, relay, slot)


def tcp_addr(link: int) -> Addr:
    """The virtual address of TCP link ``link``."""
    if not 0 <= link <= _U32:
        raise LocalError(f"TCP link {link} out of range")
    return _make(_TCP_KIND, 0, link)


def tor_addr(link: int) -> Addr:
    """The virtual address of the Tor stream carried as TCP link ``link``."""
    if not 0 <= link <= _U32:
        raise LocalError(f"Tor link {link} out of range")
    return _make(_TOR_KIND, 0, link)


def parse(addr: Addr) -> RelayPath | TcpPath | TorPath | None:
    """What a virtual address names; None for a real address."""
    host = addr[0]
    if not host.startswith("100:") or addr[1] != VIRTUAL_PORT:
        return None
    try:
        ip = ipaddress.IPv6Address(host)
    except ValueError:
        return None
    if ip not in VIRTUAL_NETWORK:
        return None
    value = int(ip)
    kind, middle, low = (value >> 48) & _U16, (value >> 32) & _U16, value & _U32
    if kind == _RELAY_KIND:
        return RelayPath(middle, low)
    if kind == _TCP_KIND and middle == 0:
        return TcpPath(low)
    if kind == _TOR_KIND and middle == 0:
        return TorPath(low)
    return None


def is_virtual(addr: Addr) -> bool:
    return parse(addr) is not None
