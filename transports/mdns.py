"""mDNS/DNS-SD discovery (zeroconf): advertise our port under the rendezvous, browse for peers.

Theory of operation
-------------------
Beacons need IPv4 broadcast; mDNS is the LAN's standard directory and also crosses setups
where broadcast is filtered but multicast is not.  Each node registers one service::

    type      _p2pd._udp.local.
    instance  <rendezvous_id[:8] hex>-<4 random hex>._p2pd._udp.local.
    port      the node's bound UDP port          addresses  the chosen interfaces' IPv4

and browses the type.  An instance whose name starts with our prefix (and is not our own)
is resolved and each of its IPv4 addresses becomes a candidate ``(ip, port)``.

Invariants:

- The name derives from the *public* rendezvous id (docs/protocol.md, "Derivation"),
  never from the passphrase or a key; the random suffix lets several nodes of one
  rendezvous coexist on a host.  As with the UDP port, an observer can tell that two
  nodes share a rendezvous; that is what the id is for.
- Only addresses inside the subnets of the chosen interfaces become candidates (mDNS is
  link-local, so real peers always are).  A record pointing elsewhere, or at loopback
  when loopback was not chosen, is dropped and counted: mDNS is unauthenticated, and
  this keeps a forged record from aiming our handshakes off the LAN.
- zeroconf runs its own asyncio loop in a thread.  Our code only ever touches it through
  :func:`asyncio.run_coroutine_threadsafe` (awaited from trio without a thread), blocking
  calls in :func:`trio.to_thread.run_sync`, and browser callbacks that only schedule work
  on the trio loop (:meth:`trio.lowlevel.TrioToken.run_sync_soon`) and never block.
- Cancelling :func:`run_mdns` unregisters (goodbye packets) and closes zeroconf within
  :data:`CLOSE_TIMEOUT`, shielded from the cancellation that triggered it.

Interfaces: ``interfaces=None`` means every interface with IPv4 except loopback;
``["lo"]`` restricts zeroconf to ``127.0.0.1`` (on Linux mDNS then works between processes
of one host, and nothing leaves it).  An interface without the MULTICAST flag (other than
loopback) is skipped.  If nothing is left, or zeroconf fails to start or to register,
the failure is logged and counted and :func:`run_mdns` returns or keeps browsing quietly:
beacons still work, and discovery never takes the node down.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import ipaddress
import logging
import os
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import trio
import zeroconf
from zeroconf import IPVersion, ServiceBrowser, ServiceInfo, ServiceStateChange, Zeroconf

from transports.base import Addr, Candidate, Emit
from transports.lan import ipv4_interfaces

log = logging.getLogger(__name__)

T = TypeVar("T")

#: DNS-SD service type of p2pd rendezvous (RFC 6763: ``_<name>._udp``).
SERVICE_TYPE = "_p2pd._udp.local."
#: Bytes of the rendezvous id in the instance name: 64 bits tell rendezvous apart on a LAN.
NAME_ID_BYTES = 8
#: Random bytes in the instance name: distinguishes nodes of one rendezvous on one host.
NAME_SUFFIX_BYTES = 2
#: Seconds allowed for unregistering and closing after cancellation (measured: 0.25 s).
CLOSE_TIMEOUT = 1.0
#: Milliseconds to wait for a discovered instance's SRV/A records (zeroconf's default).
RESOLVE_TIMEOUT_MS = 3000
#: Instance names queued from zeroconf's thread to trio; beyond this, names are dropped
#: (and counted) rather than letting a flood of records grow memory.
NAME_QUEUE_SIZE = 64
#: Linux interface flags (``/sys/class/net/IF/flags``): loopback and multicast-capable.
IFF_LOOPBACK = 0x8
IFF_MULTICAST = 0x1000
#: TXT record: the protocol version, so a future version can tell peers apart.
TXT_PROPERTIES = {"v": "1"}

OnCandidate = Callable[[Addr], None]


def instance_prefix(rendezvous_id: bytes) -> str:
    """The part of the instance name shared by every node of a rendezvous."""
    return rendezvous_id[:NAME_ID_BYTES].hex()


def instance_name(rendezvous_id: bytes, suffix: bytes) -> str:
    """Our full service instance name (``suffix`` is fresh randomness)."""
    return f"{instance_prefix(rendezvous_id)}-{suffix.hex()}.{SERVICE_TYPE}"


def _multicast_capable(name: str) -> bool:
    try:
        flags = int(Path(f"/sys/class/net/{name}/flags").read_text(), 16)
    except (OSError, ValueError):
        return True  # not Linux, or unknown: let zeroconf try
    return bool(flags & (IFF_MULTICAST | IFF_LOOPBACK))


def mdns_interfaces(interfaces: Sequence[str] | None) -> list[ipaddress.IPv4Interface]:
    """The IPv4 interface addresses mDNS uses (see the module docstring), without duplicates."""
    chosen: list[ipaddress.IPv4Interface] = []
    for name, iface in ipv4_interfaces(interfaces):
        if interfaces is None and iface.ip.is_loopback:
            continue
        if _multicast_capable(name) and iface not in chosen:
            chosen.append(iface)
    return chosen


async def _wait_future(future: concurrent.futures.Future[T]) -> T:
    """Await a future completed by another thread, without a thread; cancel it if cancelled."""
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()

    def wake(_: concurrent.futures.Future[T]) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(done.set)

    future.add_done_callback(wake)
    try:
        await done.wait()
    finally:
        future.cancel()  # no effect once done
    return future.result()


async def _on_zeroconf_loop(zc: Zeroconf, coro: Coroutine[Any, Any, T]) -> T:
    assert zc.loop is not None
    return await _wait_future(asyncio.run_coroutine_threadsafe(coro, zc.loop))


async def _register_and_announce(zc: Zeroconf, info: ServiceInfo) -> None:
    announced = await zc.async_register_service(info)
    await announced


class _Mdns:
    """One run of :func:`run_mdns`: its zeroconf instance, names seen and candidates given."""

    def __init__(
        self,
        zc: Zeroconf,
        *,
        rendezvous_id: bytes,
        own_name: str,
        networks: Sequence[ipaddress.IPv4Network],
        on_candidate: OnCandidate,
        counters: Counter[str],
    ) -> None:
        self.zc = zc
        self.prefix = instance_prefix(rendezvous_id) + "-"
        self.own_name = own_name
        self.networks = networks
        self.on_candidate = on_candidate
        self.counters = counters
        self.resolving: set[str] = set()
        self.given: set[Addr] = set()

    async def register(self, info: ServiceInfo) -> None:
        try:
            await _on_zeroconf_loop(self.zc, _register_and_announce(self.zc, info))
        except (OSError, zeroconf.Error, concurrent.futures.CancelledError) as exc:
            self.counters["mdns_register_error"] += 1
            log.warning("mDNS registration failed (%s); browsing only", type(exc).__name__)
        else:
            self.counters["mdns_registered"] += 1

    def wants(self, name: str) -> bool:
        if name == self.own_name:
            return False
        if not name.startswith(self.prefix):
            self.counters["mdns_foreign"] += 1
            return False
        return name not in self.resolving

    async def resolve(self, name: str) -> None:
        self.resolving.add(name)
        try:
            info = await _on_zeroconf_loop(
                self.zc, self.zc.async_get_service_info(SERVICE_TYPE, name, RESOLVE_TIMEOUT_MS)
            )
        except (OSError, zeroconf.Error, concurrent.futures.CancelledError):
            info = None
        finally:
            self.resolving.discard(name)
        if info is None or info.port is None:
            self.counters["mdns_unresolved"] += 1
            return
        for ip in info.parsed_addresses(IPVersion.V4Only):
            addr = (ip, info.port)
            if not any(ipaddress.IPv4Address(ip) in net for net in self.networks):
                self.counters["mdns_off_subnet"] += 1
            elif addr not in self.given:
                self.given.add(addr)
                self.counters["mdns_candidate"] += 1
                self.on_candidate(addr)


def _close(zc: Zeroconf, browser: ServiceBrowser | None) -> None:
    if browser is not None:
        browser.cancel()
    zc.close()  # sends goodbyes for our service, then stops zeroconf's thread


async def run_mdns(
    rendezvous_id: bytes,
    port: int,
    interfaces: Sequence[str] | None,
    on_candidate: OnCandidate,
    *,
    counters: Counter[str] | None = None,
    rng: Callable[[int], bytes] = os.urandom,
) -> None:
    """Advertise ``port`` under the rendezvous and report peers' ``(ip, port)`` until cancelled.

    ``on_candidate`` is called in the trio thread, once per new address.  Returns early
    (quietly, counted in ``counters``) when mDNS cannot work on ``interfaces``.
    """
    counters = Counter() if counters is None else counters
    chosen = mdns_interfaces(interfaces)
    if not chosen:
        counters["mdns_no_interface"] += 1
        log.info("mDNS: no usable interface among %s; relying on beacons", interfaces)
        return
    addresses = list(dict.fromkeys(iface.ip for iface in chosen))
    try:
        zc = await trio.to_thread.run_sync(
            functools.partial(
                Zeroconf,
                interfaces=[str(ip) for ip in addresses],
                ip_version=IPVersion.V4Only,
                use_asyncio=False,
            )
        )
    except (OSError, zeroconf.Error) as exc:
        counters["mdns_start_error"] += 1
        log.warning("mDNS could not start (%s); relying on beacons", exc)
        return

    own_name = instance_name(rendezvous_id, rng(NAME_SUFFIX_BYTES))
    mdns = _Mdns(
        zc,
        rendezvous_id=rendezvous_id,
        own_name=own_name,
        networks=[i.network for i in chosen],
        on_candidate=on_candidate,
        counters=counters,
    )
    token = trio.lowlevel.current_trio_token()
    send_name, receive_name = trio.open_memory_channel[str](NAME_QUEUE_SIZE)

    def deliver(name: str) -> None:  # trio thread
        try:
            send_name.send_nowait(name)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            counters["mdns_name_dropped"] += 1

    def on_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:  # zeroconf's browser thread: never block here
        if state_change is not ServiceStateChange.Removed:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(deliver, name)

    browser: ServiceBrowser | None = None
    try:
        browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[on_change])
        info = ServiceInfo(
            SERVICE_TYPE,
            own_name,
            port=port,
            addresses=[ip.packed for ip in addresses],
            properties=TXT_PROPERTIES,
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(mdns.register, info)
            async for name in receive_name:
                if mdns.wants(name):
                    nursery.start_soon(mdns.resolve, name)
    finally:
        send_name.close()
        receive_name.close()
        with trio.CancelScope(shield=True, deadline=trio.current_time() + CLOSE_TIMEOUT):
            await trio.to_thread.run_sync(_close, zc, browser, abandon_on_cancel=True)


class MdnsTransport:
    """mDNS discovery as a :class:`~transports.base.Transport`; candidates have path ``lan``."""

    name = "mdns"

    def __init__(self, rendezvous_id: bytes, port: int, interfaces: Sequence[str] | None) -> None:
        self.rendezvous_id = rendezvous_id
        self.port = port
        self.interfaces = interfaces
        self.counters: Counter[str] = Counter()

    async def run(self, emit: Emit) -> None:
        """Advertise and browse until cancelled; see :func:`run_mdns`."""

        def on_candidate(addr: Addr) -> None:
            emit(Candidate(addr, "lan", trio.current_time()))

        await run_mdns(
            self.rendezvous_id, self.port, self.interfaces, on_candidate, counters=self.counters
        )
