"""A SOCKS5 client (RFC 1928) for tor's SocksPort: the one way p2pd opens a stream through Tor.

Written by hand: it is four small messages (a greeting with "no authentication", its answer,
CONNECT by domain name so tor resolves the ``.onion``, the reply), and a library would add a
dependency for less than this module.  Tor's extended reply codes (prop 304, 0xF0-0xF7) say
why an onion connect failed; they surface as :attr:`TorConnectError.reason`, the short name
``p2pd`` reports and the meeting logic (:mod:`transports.tor_meet`) decides on.  The request
and reply parsing are sans-IO functions; :func:`socks5_connect` only moves their bytes.
"""

from __future__ import annotations

import trio

from p2pd.errors import LocalError, P2pdError
from transports.base import Addr

#: Longest host name SOCKS5 can carry (one length byte).
MAX_SOCKS_HOST = 255

SOCKS_VERSION = 5
SOCKS_NO_AUTH = 0
SOCKS_CONNECT = 1
SOCKS_ATYP_IPV4 = 1
SOCKS_ATYP_DOMAIN = 3
SOCKS_ATYP_IPV6 = 4
SOCKS_SUCCEEDED = 0
#: SOCKS5 reply codes, with tor's extended ones (prop 304), as short reasons.
SOCKS_REPLIES = {
    0x01: "general_failure",
    0x02: "not_allowed",
    0x03: "network_unreachable",
    0x04: "host_unreachable",
    0x05: "refused",
    0x06: "ttl_expired",
    0x07: "command_not_supported",
    0x08: "address_type_not_supported",
    0xF0: "onion_descriptor_not_found",
    0xF1: "onion_descriptor_invalid",
    0xF2: "onion_intro_failed",
    0xF3: "onion_rendezvous_failed",
    0xF4: "onion_client_auth_missing",
    0xF5: "onion_client_auth_wrong",
    0xF6: "onion_address_invalid",
    0xF7: "onion_intro_timed_out",
}
_ADDRESS_SIZES = {SOCKS_ATYP_IPV4: 4, SOCKS_ATYP_IPV6: 16}


class TorConnectError(P2pdError):
    """A connect through tor failed; :attr:`reason` is a short name for why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def socks_greeting() -> bytes:
    """Version 5, one method: no authentication (tor's SocksPort needs none)."""
    return bytes([SOCKS_VERSION, 1, SOCKS_NO_AUTH])


def socks_connect_request(host: str, port: int) -> bytes:
    """CONNECT to ``host:port`` by domain name, so tor (not we) resolves it."""
    name = host.encode("ascii")
    if not 0 < len(name) <= MAX_SOCKS_HOST or not 0 < port < 2**16:
        raise LocalError(f"cannot ask SOCKS for {host!r} port {port}")
    head = bytes([SOCKS_VERSION, SOCKS_CONNECT, 0, SOCKS_ATYP_DOMAIN, len(name)])
    return head + name + port.to_bytes(2, "big")


def socks_reply_length_untrusted(head: bytes) -> int:
    """Bytes after the first five of a CONNECT reply; TorConnectError on a refusal."""
    version, reply, _reserved, atyp, first = head
    if version != SOCKS_VERSION:
        raise TorConnectError("socks_malformed")
    if reply != SOCKS_SUCCEEDED:
        raise TorConnectError(SOCKS_REPLIES.get(reply, f"socks_{reply:#04x}"))
    if atyp == SOCKS_ATYP_DOMAIN:
        return first + 2
    if atyp in _ADDRESS_SIZES:
        return _ADDRESS_SIZES[atyp] - 1 + 2
    raise TorConnectError("socks_malformed")


async def receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        if not chunk:
            raise TorConnectError("socks_eof")
        data += chunk
    return bytes(data)


async def socks5_connect(socks: Addr, host: str, port: int) -> trio.SocketStream:
    """A stream to ``host:port`` through the SOCKS5 proxy at ``socks`` (no timeout here)."""
    try:
        stream = await trio.open_tcp_stream(*socks)
    except OSError as exc:
        raise TorConnectError("socks_unreachable") from exc
    try:
        await stream.send_all(socks_greeting())
        if await receive_exactly(stream, 2) != bytes([SOCKS_VERSION, SOCKS_NO_AUTH]):
            raise TorConnectError("socks_auth_refused")
        await stream.send_all(socks_connect_request(host, port))
        rest = socks_reply_length_untrusted(await receive_exactly(stream, 5))
        await receive_exactly(stream, rest)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream
