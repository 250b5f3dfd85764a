"""The port-mapping driver against a fake NAT-PMP/PCP gateway on loopback.

The fake gateway is a small trio UDP server on 127.0.0.1 (the driver's server port is
patched to its ephemeral port). UPnP is either left out (``methods``) or replaced by a fake
`run_upnp`, so nothing here sends SSDP multicast.
"""

from __future__ import annotations

import socket
import struct
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from transports import portmap
from transports.base import Candidate, Transport
from transports.natpmp import BEHIND_CGNAT, OP_MAP
from transports.portmap import (
    MAPPED,
    NO_GATEWAY,
    STARTING,
    PortmapStatus,
    PortmapTransport,
    default_gateway,
    run_portmap,
)

PORT = 40000
PUBLIC = "198.51.100.7"
#: How long any wait in these tests may take before it counts as a failure.
TEST_DEADLINE = 10.0

ROUTE_HEADER = (
    "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
)


def test_default_gateway_reads_proc_net_route(tmp_path: Path) -> None:
    route = tmp_path / "route"
    route.write_text(
        ROUTE_HEADER
        + "eth0\t0001010A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
        + "eth0\t00000000\t0101010A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
    )
    assert default_gateway(str(route)) == "10.1.1.1"


def test_default_gateway_is_none_without_a_default_route(tmp_path: Path) -> None:
    route = tmp_path / "route"
    route.write_text(ROUTE_HEADER + "eth0\t0001010A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n")
    assert default_gateway(str(route)) is None
    assert default_gateway(str(tmp_path / "missing")) is None


class FakeGateway:
    """Answers NAT-PMP like miniupnpd, with a chosen external address and result code."""

    def __init__(self, external: str = PUBLIC, result: int = 0, lifetime: int = 7200) -> None:
        self.external = external
        self.result = result
        self.lifetime = lifetime
        self.requests: list[bytes] = []
        self.garbage_first = False
        self.deleted: set[int] = set()
        self.all_deleted = trio.Event()
        self.sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    async def serve(self, task_status: trio.TaskStatus[int]) -> None:
        with self.sock:
            await self.sock.bind(("127.0.0.1", 0))
            task_status.started(self.sock.getsockname()[1])
            while True:
                data, source = await self.sock.recvfrom(2048)
                self.requests.append(data)
                if self.garbage_first:
                    self.garbage_first = False
                    await self.sock.sendto(b"\x07garbage", source)
                await self.sock.sendto(self.answer(data), source)

    def answer(self, data: bytes) -> bytes:
        if data[0] != 0:  # PCP: this gateway speaks NAT-PMP only (RFC 6887 section 9)
            return struct.pack("!BBHI", 0, 0x80 | data[1], 1, 1)
        if self.result:
            return struct.pack("!BBHI", 0, 0x80 | data[1], self.result, 1)
        if data[1] == 0:
            return struct.pack("!BBHI4s", 0, 0x80, 0, 1, socket.inet_aton(self.external))
        _, op, _, internal, external, lifetime = struct.unpack("!BBHHHI", data)
        if lifetime == 0:
            self.deleted.add(op)
            if self.deleted == set(OP_MAP.values()):
                self.all_deleted.set()
        granted = min(lifetime, self.lifetime)
        return struct.pack("!BBHIHHI", 0, 0x80 | op, 0, 1, internal, external or internal, granted)


async def wait_until(condition: Callable[[], bool]) -> None:
    """Poll a condition the driver has no event for, failing after TEST_DEADLINE."""
    with trio.fail_after(TEST_DEADLINE):
        while not condition():
            await trio.sleep(0.01)


async def start_gateway(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, gateway: FakeGateway
) -> None:
    port = await nursery.start(gateway.serve)
    monkeypatch.setattr(portmap, "SERVER_PORT", port)


async def test_natpmp_mapping_is_emitted_renewed_and_deleted_at_exit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gateway = FakeGateway(lifetime=1)  # renewal due after half a second
    emitted: list[Candidate] = []
    counters: Counter[str] = Counter()
    status = PortmapStatus()
    async with trio.open_nursery() as nursery:
        await start_gateway(nursery, monkeypatch, gateway)
        async with trio.open_nursery() as driver:
            driver.start_soon(_run, emitted.append, counters, status, ("natpmp",))
            await wait_until(lambda: sum(r[1] == 1 for r in gateway.requests) >= 2)
            driver.cancel_scope.cancel()
        # The deletion ran (shielded) before the driver returned.
        assert gateway.all_deleted.is_set()
        nursery.cancel_scope.cancel()
    assert [(c.addr, c.path) for c in emitted] == [((PUBLIC, PORT), "mapped")]  # once
    assert (status.state, status.method, status.external) == (MAPPED, "natpmp", (PUBLIC, PORT))
    assert status.protocols == ("udp", "tcp")
    assert counters["portmap.natpmp.deleted"] == 2


async def test_garbage_from_the_gateway_is_counted_and_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gateway = FakeGateway()
    gateway.garbage_first = True
    emitted: list[Candidate] = []
    counters: Counter[str] = Counter()
    async with trio.open_nursery() as nursery:
        await start_gateway(nursery, monkeypatch, gateway)
        nursery.start_soon(_run, emitted.append, counters, None, ("natpmp",))
        await wait_until(lambda: bool(emitted))
        nursery.cancel_scope.cancel()
    assert sum(n for key, n in counters.items() if key.startswith("portmap.drop.")) == 1


async def test_private_external_address_is_useless_and_emits_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gateway = FakeGateway(external="100.64.0.5")
    emitted: list[Candidate] = []
    status = PortmapStatus()
    async with trio.open_nursery() as nursery:
        await start_gateway(nursery, monkeypatch, gateway)
        nursery.start_soon(_run, emitted.append, Counter(), status, ("natpmp",))
        await wait_until(lambda: status.state != STARTING)
        nursery.cancel_scope.cancel()
    assert status.state == BEHIND_CGNAT and emitted == []
    assert 1 in gateway.deleted  # the useless UDP mapping was removed at once


async def test_useless_upnp_and_refusing_natpmp_say_behind_cgnat_after_trying_pcp(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def useless_upnp(*args: object, **kwargs: object) -> str:
        return f"{BEHIND_CGNAT} (it has no public external address)"

    monkeypatch.setattr(portmap, "run_upnp", useless_upnp)
    gateway = FakeGateway(result=3)
    emitted: list[Candidate] = []
    status = PortmapStatus()
    async with trio.open_nursery() as nursery:
        await start_gateway(nursery, monkeypatch, gateway)
        nursery.start_soon(_run, emitted.append, Counter(), status, None)
        await wait_until(lambda: status.state != STARTING)
        nursery.cancel_scope.cancel()
    assert status.state == BEHIND_CGNAT and emitted == []
    assert "natpmp: network failure" in status.detail
    assert any(request[0] == 2 for request in gateway.requests)  # PCP was tried too


async def test_closed_port_means_no_gateway_and_no_pcp(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    monkeypatch.setattr(portmap, "SERVER_PORT", closed_port)
    counters: Counter[str] = Counter()
    status = PortmapStatus()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_run, _never, counters, status, ("natpmp", "pcp"))
        await wait_until(lambda: status.state != STARTING)
        nursery.cancel_scope.cancel()
    assert status.state == NO_GATEWAY
    assert "pcp" not in status.detail
    assert counters["portmap.natpmp.oserror"] == 1


def _never(candidate: Candidate) -> None:
    raise AssertionError(f"nothing should be emitted, got {candidate}")


async def _run(
    emit: Callable[[Candidate], None],
    counters: Counter[str],
    status: PortmapStatus | None,
    methods: tuple[str, ...] | None,
) -> None:
    options = {} if methods is None else {"methods": methods}
    await run_portmap(PORT, emit, counters=counters, status=status, gateway="127.0.0.1", **options)


async def test_transport_wrapper_runs_the_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_upnp(*args: object, **kwargs: object) -> str:
        return "upnp: no gateway answered discovery"

    monkeypatch.setattr(portmap, "run_upnp", no_upnp)
    transport: Transport = PortmapTransport(PORT, Counter(), gateway="127.0.0.1")
    emitted: list[Candidate] = []
    async with trio.open_nursery() as nursery:
        await start_gateway(nursery, monkeypatch, FakeGateway())
        nursery.start_soon(transport.run, emitted.append)
        await wait_until(lambda: bool(emitted))
        nursery.cancel_scope.cancel()
    assert transport.name == "portmap" and emitted[0].addr == (PUBLIC, PORT)
