"""Peer exchange inside a space: the ``px`` frame and its limits.

Why: devices that share a space but no LAN and no bootstrap address still meet when one
peer they both reach tells each about the other (see :mod:`p2pd.space.driver`).
"""

from __future__ import annotations

import ipaddress
from typing import Any

import cbor2

from p2pd.errors import BadFrame
from p2pd.udp import Addr

#: Frame type of peer exchange (the driver's own; neither core knows it).
PX_TYPE = "px"
#: Seconds between peer-exchange rounds: peers come and go over minutes, not seconds.
PX_INTERVAL = 30.0
#: Seconds after a peer joins before a round, so a burst of joins makes one round.
PX_JOIN_DELAY = 0.5
#: Most addresses in one px frame (and most taken from one): a space is a few devices.
PX_MAX = 16
#: Seconds before an address heard by px is raced again.
PX_RETRY = 60.0
#: Most remembered px addresses (bounded memory against a chatty peer).
PX_SEEN_MAX = 1024
#: Highest UDP port.
MAX_PORT = 65535


def px_untrusted(frame: bytes) -> list[Addr]:
    """The addresses of a px frame (at most :data:`PX_MAX`); BadFrame if malformed."""
    obj: Any = cbor2.loads(frame)  # the caller decoded it once already
    addrs = obj.get("a")
    if not isinstance(addrs, list) or len(addrs) > PX_MAX:
        raise BadFrame("px_shape")
    out: list[Addr] = []
    for entry in addrs:
        if not isinstance(entry, list) or len(entry) != 2:
            raise BadFrame("px_shape")
        host, port = entry
        if not isinstance(host, str) or type(port) is not int or not 0 < port <= MAX_PORT:
            raise BadFrame("px_addr")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise BadFrame("px_addr") from None
        if ip.is_multicast or ip.is_unspecified:
            raise BadFrame("px_addr")
        out.append((str(ip), port))
    return out
