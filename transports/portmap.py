"""Port mapping on the home gateway: UPnP first, then NAT-PMP, then PCP; the trio driver.

Theory of operation
-------------------
:func:`run_portmap` asks the gateway to forward an external port to the node's one UDP port
(and TCP on the same port, for the TCP fallback), and emits the external address as a
``"mapped"`` :class:`~transports.base.Candidate`. It tries, in order:

1. UPnP IGD (:mod:`transports.upnp`, miniupnpc): the most widely deployed;
2. NAT-PMP (RFC 6886) to the default gateway (:mod:`transports.natpmp`);
3. PCP (RFC 6887), only when the gateway answered NAT-PMP with an error: a PCP server
   answers NAT-PMP requests too (RFC 6887 section 9), so silence means nothing listens.

Whichever method holds a mapping keeps renewing it until cancelled, and removes it at exit
(shielded, bounded). A method that fails or loses its mapping hands over to the next; when
all fail, :class:`PortmapStatus` says why ("no gateway", "useless: gateway behind CGNAT" when
the gateway's own external address is private or absent, ...) and the driver tries again
after :data:`RETRY_INTERVAL`, since a router may come up later. Nothing here raises on
network trouble; garbage from the gateway is counted under ``portmap.drop.*`` and dropped.

The NAT-PMP/PCP socket is an ephemeral one of its own, connected to ``gateway:5351`` (the
kernel then passes only the gateway's datagrams), not the node's socket: answers come back
to the requesting port, and the node's socket must not see them.
"""

from __future__ import annotations

import math
import os
import socket
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from p2pd.errors import BadFrame
from transports.base import Addr, Candidate, Emit
from transports.natpmp import (
    BEHIND_CGNAT,
    NONCE_SIZE,
    SERVER_PORT,
    Deleted,
    Failed,
    Mapped,
    Method,
    PortMapCore,
    Protocol,
    State,
    external_address_problem,
)
from transports.upnp import OnMapped, run_upnp

#: Seconds between rounds when no method gave a mapping: a gateway may boot or get its
#: public address later, and one round costs a few small packets on the LAN.
RETRY_INTERVAL = 300.0
#: Seconds the NAT-PMP/PCP deletion at exit may take.
DELETE_TIMEOUT = 2.0
#: Largest answer read: a PCP message is at most 1100 bytes (RFC 6887 section 7).
MAX_ANSWER = 1100
#: The Linux routing table, for the default gateway when none is given.
PROC_NET_ROUTE = "/proc/net/route"
#: /proc/net/route: the route-flags bit for "via a gateway" (RTF_GATEWAY).
RTF_GATEWAY = 0x2
#: States of `PortmapStatus.state` besides `BEHIND_CGNAT`.
STARTING = "starting"
MAPPED = "mapped"
NO_GATEWAY = "no gateway"
REFUSED = "refused"
#: Every method, in the order tried.
METHODS = ("upnp", "natpmp", "pcp")
PMP_METHODS: tuple[Method, ...] = ("natpmp", "pcp")
#: What a NAT-PMP/PCP failure says when nothing answered.
NO_ANSWER = "no answer"


@dataclass
class PortmapStatus:
    """What port mapping achieved, for ``p2pd status``; `run_portmap` keeps it current."""

    method: str | None = None
    external: Addr | None = None
    state: str = STARTING
    detail: str = ""
    lifetime: int | None = None
    updated_at: float | None = None
    #: The protocols mapped on the external port (UDP first; TCP for the TCP fallback).
    protocols: tuple[Protocol, ...] = ()


def default_gateway(route_file: str = PROC_NET_ROUTE) -> str | None:
    """The IPv4 default route's gateway from /proc/net/route, or None."""
    try:
        with open(route_file, encoding="ascii") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        try:
            if fields[1] == "00000000" and int(fields[3], 16) & RTF_GATEWAY:
                return socket.inet_ntoa(int(fields[2], 16).to_bytes(4, "little"))
        except (IndexError, ValueError):
            continue
    return None


async def run_portmap(
    local_port: int,
    emit: Emit,
    *,
    counters: Counter[str],
    status: PortmapStatus | None = None,
    gateway: str | None = None,
    protocols: Sequence[Protocol] = ("udp", "tcp"),
    methods: Sequence[str] = METHODS,
) -> None:
    """Map ``local_port`` on the gateway, emit the external address, renew until cancelled.

    ``methods`` is a subset of :data:`METHODS`, tried in that order (tests and a user who
    wants one method only); PCP follows NAT-PMP only when NAT-PMP got an answer.
    """
    status = status if status is not None else PortmapStatus()

    def mapped_by(method: str) -> OnMapped:
        def on_mapped(external: Addr, lifetime: int, held: tuple[Protocol, ...]) -> None:
            now = trio.current_time()
            changed = status.external != external or status.state != MAPPED
            status.method, status.external, status.state = method, external, MAPPED
            status.detail, status.lifetime, status.updated_at = "", lifetime, now
            status.protocols = held
            if changed:
                counters[f"portmap.mapped.{method}"] += 1
                emit(Candidate(external, "mapped", now))

        return on_mapped

    while True:
        reasons: list[str] = []
        if "upnp" in methods:
            reasons.append(
                await run_upnp(
                    local_port, mapped_by("upnp"), counters=counters, protocols=protocols
                )
            )
        target = gateway or default_gateway()
        pmp_methods: list[Method] = [m for m in PMP_METHODS if m in methods]
        for method in pmp_methods:
            if target is None:
                break
            reason, answered = await _run_pmp(
                target,
                local_port,
                method,
                on_mapped=mapped_by(method),
                counters=counters,
                protocols=protocols,
            )
            reasons.append(reason)
            if not answered:
                break
        _record_failure(status, reasons, target, trio.current_time())
        await trio.sleep(RETRY_INTERVAL)


@dataclass
class PortmapTransport:
    """`run_portmap` as a `transports.base.Transport` for the node's nursery."""

    local_port: int
    counters: Counter[str]
    status: PortmapStatus = field(default_factory=PortmapStatus)
    gateway: str | None = None
    name: str = "portmap"

    async def run(self, emit: Emit) -> None:
        """Map and renew until cancelled (see `run_portmap`)."""
        await run_portmap(
            self.local_port, emit, counters=self.counters, status=self.status, gateway=self.gateway
        )


def _record_failure(
    status: PortmapStatus, reasons: list[str], gateway: str | None, now: float
) -> None:
    status.method = status.external = status.lifetime = None
    status.protocols = ()
    status.updated_at = now
    status.detail = "; ".join(reasons)
    if any(reason.startswith(BEHIND_CGNAT) for reason in reasons):
        status.state = BEHIND_CGNAT
    elif gateway is None or all(NO_ANSWER in r or "no gateway" in r for r in reasons):
        status.state = NO_GATEWAY
    else:
        status.state = REFUSED


async def _run_pmp(
    gateway: str,
    port: int,
    method: Method,
    *,
    on_mapped: OnMapped,
    counters: Counter[str],
    protocols: Sequence[Protocol],
) -> tuple[str, bool]:
    """Hold a NAT-PMP or PCP mapping until it fails; return (why, whether the gateway answered).

    One core per protocol shares the socket; the first protocol's mapping is the one that
    matters (its failure ends the method), the others are best effort.
    """
    answered = False
    try:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    except OSError as exc:
        return f"{method}: no socket ({exc})", False
    with sock:
        cores: list[PortMapCore] = []
        try:
            await sock.connect((gateway, SERVER_PORT))
            client_ip = sock.getsockname()[0]
            now = trio.current_time()
            cores = [
                PortMapCore(
                    method,
                    protocol,
                    port,
                    now=now,
                    client_ip=client_ip,
                    nonce=os.urandom(NONCE_SIZE),
                )
                for protocol in protocols
            ]
            while True:
                await _pump(sock, cores, trio.current_time())
                for core in cores:
                    while (event := core.next_event()) is not None:
                        if isinstance(event, Failed) and core is not cores[0]:
                            counters[f"portmap.{method}.{core.protocol}_failed"] += 1
                        elif isinstance(event, Failed):
                            return event.reason, answered or event.result is not None
                        elif isinstance(event, Mapped):
                            answered = True
                            problem = external_address_problem(event.external[0])
                            if problem is not None:
                                counters[f"portmap.{method}.useless"] += 1
                                return problem, True
                            _report(cores, on_mapped)
                timers = [t for core in cores if (t := core.get_timer()) is not None]
                with trio.move_on_at(min(timers, default=math.inf)):
                    data = await sock.recv(MAX_ANSWER)
                    if _feed(cores, data, trio.current_time(), counters):
                        answered = True
        except OSError as exc:
            counters[f"portmap.{method}.oserror"] += 1
            return f"{method}: {NO_ANSWER} ({exc.strerror or exc})", answered
        finally:
            with trio.move_on_after(DELETE_TIMEOUT) as scope:
                scope.shield = True
                await _delete(sock, cores, counters)


def _report(cores: list[PortMapCore], on_mapped: OnMapped) -> None:
    """Tell on_mapped about the primary mapping and which protocols are held now."""
    primary = cores[0]
    if primary.external is not None:
        held = tuple(core.protocol for core in cores if core.external is not None)
        on_mapped(primary.external, primary.granted, held)


def _feed(cores: list[PortMapCore], data: bytes, now: float, counters: Counter[str]) -> bool:
    """Offer a datagram to each core until one takes it; True if one did."""
    reason = "portmap: no core"
    for core in cores:
        try:
            core.receive_untrusted(data, now)
        except BadFrame as exc:
            reason = exc.reason
            continue
        return True
    counters[f"portmap.drop.{reason}"] += 1
    return False


async def _pump(sock: trio.socket.SocketType, cores: list[PortMapCore], now: float) -> None:
    for core in cores:
        core.handle_timer(now)
        for datagram in core.datagrams_to_send(now):
            await sock.send(datagram)


async def _delete(
    sock: trio.socket.SocketType, cores: list[PortMapCore], counters: Counter[str]
) -> None:
    """Send each held mapping's deletion and wait for the answers (or the attempts)."""
    now = trio.current_time()
    for core in cores:
        core.close(now)
    try:
        while True:
            await _pump(sock, cores, trio.current_time())
            for core in cores:
                while (event := core.next_event()) is not None:
                    if isinstance(event, Deleted) and event.confirmed:
                        counters[f"portmap.{core.method}.deleted"] += 1
            if all(core.state is State.CLOSED for core in cores):
                return
            timers = [t for core in cores if (t := core.get_timer()) is not None]
            with trio.move_on_at(min(timers, default=math.inf)):
                _feed(cores, await sock.recv(MAX_ANSWER), trio.current_time(), counters)
    except OSError:
        counters["portmap.delete_failed"] += 1
