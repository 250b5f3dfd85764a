"""LAN discovery glue: where beacons go, and the trio task that sends them.

Theory of operation
-------------------
The node owns one UDP socket per passphrase and hands :func:`run_beacons` its ``send``.
Every round, the task builds one beacon (:class:`~transports.beacon.BeaconCore`) and sends
it to each target of :func:`broadcast_targets`: the *subnet* broadcast address of every
IPv4 interface, at the rendezvous port, plus ``127.0.0.1`` so that two nodes on one host
find each other (the second one may be bound to another port; the first hears it and
connects back to the source).  Incoming beacons arrive on the node's socket; the node
verifies them and turns the *source address* into a ``lan`` candidate.

Choices:

- ``255.255.255.255`` is never used: without a default route (lab namespaces, many real
  LANs) ``sendto`` fails with ENETUNREACH; subnet broadcasts always work (LAB-NOTES).
- Targets are recomputed each round (interfaces come and go: Wi-Fi joins, DHCP renews);
  when they change, the fast start-up rate starts again, so a laptop joining a network
  is found at once.
- ``interfaces`` restricts everything to the named interfaces (``["lo"]`` in tests that
  run in the root namespace and must not broadcast on the machine's real network).  Names
  that do not exist select nothing.  Loopback interfaces contribute no broadcast address:
  ``127.0.0.1`` covers them and is always a target (it never leaves the host).
- Sending never crashes the task: an ``OSError`` (EPERM from a firewall, ENETUNREACH,
  an interface that just vanished) or a ``False`` from ``send`` is counted as
  ``send_error`` in ``core.counters`` and the round goes on.
- IPv6 is not beaconed: link-local multicast to ``ff02::1`` needs a scope id per
  interface and reaches every host on the link; IPv4 broadcast plus mDNS covers the LANs
  we target, and the handshake works over IPv6 once a candidate is known.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

import ifaddr
import trio

from transports.base import Addr
from transports.beacon import BeaconCore

log = logging.getLogger(__name__)

#: Where a node on the same host listens (loopback never leaves the host).
LOOPBACK_TARGET = "127.0.0.1"
#: The loopback network: its interfaces get no broadcast target of their own.
LOOPBACK_NETWORK = ipaddress.IPv4Network("127.0.0.0/8")
#: Prefixes this long have no broadcast address (/31 point-to-point per RFC 3021, /32 host).
NO_BROADCAST_PREFIXLEN = 31

#: The node's send: ``(datagram, (host, port))``; returns False (or raises OSError) on failure.
Send = Callable[[bytes, Addr], Awaitable[object]]


def ipv4_interfaces(interfaces: Sequence[str] | None) -> list[tuple[str, ipaddress.IPv4Interface]]:
    """``(interface name, address/prefix)`` of every IPv4 address, of the named interfaces only.

    ``None`` means every interface.  Order follows the system's adapter list.
    """
    wanted = None if interfaces is None else set(interfaces)
    found: list[tuple[str, ipaddress.IPv4Interface]] = []
    for adapter in ifaddr.get_adapters():
        if wanted is not None and adapter.name not in wanted and adapter.nice_name not in wanted:
            continue
        for ip in adapter.ips:
            if isinstance(ip.ip, str):  # ifaddr gives IPv4 as str, IPv6 as a tuple
                found.append(
                    (adapter.name, ipaddress.IPv4Interface(f"{ip.ip}/{ip.network_prefix}"))
                )
    return found


def broadcast_targets(port: int, interfaces: Sequence[str] | None) -> list[Addr]:
    """Every address a beacon is sent to: subnet broadcasts at ``port``, then loopback.

    No duplicates; ``255.255.255.255`` never (see the module docstring).
    """
    targets: list[Addr] = []
    for _name, iface in ipv4_interfaces(interfaces):
        network = iface.network
        if network.subnet_of(LOOPBACK_NETWORK) or network.prefixlen >= NO_BROADCAST_PREFIXLEN:
            continue
        target = (str(network.broadcast_address), port)
        if target not in targets:
            targets.append(target)
    targets.append((LOOPBACK_TARGET, port))
    return targets


async def send_round(send: Send, beacon: bytes, targets: Sequence[Addr], core: BeaconCore) -> None:
    """Send one beacon to each target, counting failures instead of raising."""
    for target in targets:
        try:
            ok = await send(beacon, target)
        except OSError as exc:
            log.debug("beacon to %s failed: %s", target, exc)
            ok = False
        core.counters["sent" if ok is not False else "send_error"] += 1


async def run_beacons(
    send: Send,
    core: BeaconCore,
    port: int,
    interfaces: Sequence[str] | None,
    *,
    wall_clock: Callable[[], float] = time.time,
    targets_of: Callable[[int, Sequence[str] | None], list[Addr]] = broadcast_targets,
) -> None:
    """Broadcast beacons on the schedule of :meth:`BeaconCore.next_delay` until cancelled.

    ``port`` is the rendezvous port (``params.port``) that peers listen on; the beacons
    leave from whatever port ``send``'s socket is bound to, which is what peers connect to.
    ``targets_of`` is :func:`broadcast_targets` (replaceable in tests).
    """
    targets: list[Addr] = []
    started = trio.current_time()
    while True:
        fresh = targets_of(port, interfaces)  # getifaddrs: microseconds, no thread needed
        if fresh != targets:
            if targets:
                log.info("beacon targets changed to %s", fresh)
            targets, started = fresh, trio.current_time()
        await send_round(send, core.make(wall_clock()), targets, core)
        await trio.sleep(core.next_delay(trio.current_time() - started))
