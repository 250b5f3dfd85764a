"""UPnP IGD port mapping through miniupnpc: map our port, keep the lease, remove it at exit.

Theory of operation
-------------------
miniupnpc (the reference client, C with a Python binding) does SSDP discovery, the device
description and SOAP; it blocks, so every call runs in a worker thread via
``trio.to_thread.run_sync``, one at a time on one ``UPnP`` object. :func:`run_upnp`:

1. discovers for at most :data:`DISCOVER_DELAY_MS` and selects an Internet Gateway Device;
2. asks its external address and refuses to go on when it is empty or not public
   (:func:`transports.natpmp.external_address_problem`): such a gateway sits behind
   carrier-grade NAT and a mapping on it is useless, so nothing is emitted;
3. maps UDP ``local_port`` to the same external port for :data:`LEASE` seconds, and TCP on
   the same port when asked (best effort: UDP is what the node needs);
4. calls ``on_mapped((external_ip, port), lease, protocols_held)`` and renews at half the
   lease;
5. in a ``finally``, shielded and bounded by :data:`DELETE_TIMEOUT`, deletes what it added.

It returns a reason string when UPnP cannot give a mapping (or loses it), and otherwise
runs until cancelled. It never raises on network trouble: miniupnpc reports every failure as
a bare ``Exception``, which is caught only around miniupnpc calls and turned into a reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import miniupnpc
import trio

from transports.natpmp import Protocol, external_address_problem

#: Milliseconds SSDP discovery listens for gateways: they answer within a few ms on a LAN,
#: and the whole port-mapping step must not hold up a node's start for long.
DISCOVER_DELAY_MS = 1000
#: Lease asked for: one hour, renewed at half. Some IGDs reject other than 0 (infinite), and
#: a crashed node's mapping must not live forever, so a finite lease is tried first.
LEASE = 3600
#: Seconds the deletion at exit may take (two SOAP calls on a LAN take milliseconds).
DELETE_TIMEOUT = 3.0
#: The description other tools see in the router's mapping table.
DESCRIPTION = "p2pd"
#: SOAP protocol names.
SOAP_PROTOCOL: dict[Protocol, str] = {"udp": "UDP", "tcp": "TCP"}

#: Called with the external address, the lifetime granted, and the protocols now mapped.
OnMapped = Callable[[tuple[str, int], int, tuple[Protocol, ...]], None]


class _Igd:
    """One miniupnpc handle; each method runs one blocking call in a worker thread."""

    def __init__(self) -> None:
        self._upnp: Any = miniupnpc.UPnP()
        self._upnp.discoverdelay = DISCOVER_DELAY_MS

    async def call(self, name: str, *args: object) -> Any:
        # abandon_on_cancel: a cancelled node must not wait out miniupnpc's socket timeouts.
        return await trio.to_thread.run_sync(
            lambda: getattr(self._upnp, name)(*args), abandon_on_cancel=True
        )

    @property
    def lan_address(self) -> str:
        return str(self._upnp.lanaddr)


async def run_upnp(
    local_port: int,
    on_mapped: OnMapped,
    *,
    counters: Counter[str],
    protocols: Sequence[Protocol] = ("udp", "tcp"),
    lease: int = LEASE,
) -> str:
    """Map ``local_port`` on the UPnP gateway and keep it until cancelled; else return why not."""
    igd = _Igd()
    try:
        found = await igd.call("discover")
        if not found:
            counters["upnp.no_gateway"] += 1
            return "upnp: no gateway answered discovery"
        await igd.call("selectigd")
        external_ip = str(await igd.call("externalipaddress") or "")
    except Exception as exc:  # miniupnpc raises bare Exception for everything
        counters["upnp.no_gateway"] += 1
        return f"upnp: no usable gateway ({exc})"
    problem = external_address_problem(external_ip)
    if problem is not None:
        counters["upnp.useless"] += 1
        return problem
    mapped: list[Protocol] = []
    try:
        while True:
            reason = await _add_mappings(
                igd, local_port, protocols=protocols, lease=lease, mapped=mapped, counters=counters
            )
            if reason is not None:
                return reason
            on_mapped((external_ip, local_port), lease, tuple(mapped))
            await trio.sleep(lease / 2)
            counters["upnp.renewals"] += 1
    finally:
        with trio.move_on_after(DELETE_TIMEOUT) as scope:
            scope.shield = True
            for protocol in mapped:
                try:
                    await igd.call("deleteportmapping", local_port, SOAP_PROTOCOL[protocol])
                    counters["upnp.deleted"] += 1
                except Exception:  # as above; the lease ends it anyway
                    counters["upnp.delete_failed"] += 1


async def _add_mappings(
    igd: _Igd,
    port: int,
    *,
    protocols: Sequence[Protocol],
    lease: int,
    mapped: list[Protocol],
    counters: Counter[str],
) -> str | None:
    """(Re)add each protocol's mapping; None when UDP (or the first asked) is held."""
    for index, protocol in enumerate(protocols):
        try:
            await igd.call(
                "addportmapping",
                port,
                SOAP_PROTOCOL[protocol],
                igd.lan_address,
                port,
                DESCRIPTION,
                "",
                lease,
            )
        except Exception as exc:  # as above
            counters[f"upnp.add_failed.{protocol}"] += 1
            if index == 0:
                return f"upnp: AddPortMapping {SOAP_PROTOCOL[protocol]} {port} failed ({exc})"
            continue
        if protocol not in mapped:
            mapped.append(protocol)
    return None
