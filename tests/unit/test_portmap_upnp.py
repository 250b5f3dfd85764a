"""The UPnP driver (transports.upnp) with a fake miniupnpc: lease, renewal, removal, refusals.

The fake stands in for ``miniupnpc.UPnP`` (no SSDP leaves the machine) and records calls;
the trio clock is a MockClock that jumps once the test has been idle for
:data:`IDLE_JUMP` real seconds, so an hour's lease runs in a moment. (It must not jump at
once: a task waiting for miniupnpc's worker thread counts as idle.)
"""

from __future__ import annotations

from collections import Counter

import miniupnpc
import pytest
import trio
import trio.testing

from transports.natpmp import BEHIND_CGNAT
from transports.upnp import LEASE, run_upnp

PORT = 40000
LAN = "10.1.0.2"
#: Real seconds of idleness before the mock clock jumps; worker threads finish far sooner.
IDLE_JUMP = 0.05


class FakeUPnP:
    """Records calls; behaves like an IGD with the given external address."""

    external = "203.0.113.11"
    devices = 1
    refuse: set[str] = set()  # noqa: RUF012 - set per test on the class
    calls: list[tuple[object, ...]] = []  # noqa: RUF012

    def __init__(self) -> None:
        self.discoverdelay = 0
        self.lanaddr = LAN

    def discover(self) -> int:
        return self.devices

    def selectigd(self) -> str:
        if not self.devices:
            raise Exception("No UPnP device discovered")  # as miniupnpc does
        return "http://10.1.0.1:5000/ctl/IPConn"

    def externalipaddress(self) -> str:
        return self.external

    def addportmapping(self, *args: object) -> bool:
        FakeUPnP.calls.append(("add", *args))
        if args[1] in self.refuse:
            raise Exception("ConflictInMappingEntry")  # as miniupnpc does
        return True

    def deleteportmapping(self, port: int, protocol: str) -> bool:
        FakeUPnP.calls.append(("delete", port, protocol))
        return True


@pytest.fixture(autouse=True)
def fake_miniupnpc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(miniupnpc, "UPnP", FakeUPnP)
    monkeypatch.setattr(FakeUPnP, "calls", [])
    monkeypatch.setattr(FakeUPnP, "refuse", set())


async def test_maps_udp_and_tcp_renews_at_half_lease_and_deletes_at_exit(
    mock_clock: trio.testing.MockClock,
) -> None:
    mock_clock.autojump_threshold = IDLE_JUMP
    granted: list[tuple[tuple[str, int], int, tuple[str, ...]]] = []
    counters: Counter[str] = Counter()
    with trio.move_on_after(LEASE * 0.75):
        await run_upnp(PORT, lambda *a: granted.append(a), counters=counters)
    add = [c for c in FakeUPnP.calls if c[0] == "add"]
    assert add[0] == ("add", PORT, "UDP", LAN, PORT, "p2pd", "", LEASE)
    assert [c[2] for c in add] == ["UDP", "TCP", "UDP", "TCP"]  # first grant and one renewal
    assert granted == [(("203.0.113.11", PORT), LEASE, ("udp", "tcp"))] * 2
    assert FakeUPnP.calls[-2:] == [("delete", PORT, "UDP"), ("delete", PORT, "TCP")]
    assert counters["upnp.deleted"] == 2 and counters["upnp.renewals"] == 1


@pytest.mark.parametrize("external", ["", "10.0.0.138", "100.64.3.4", "192.168.1.20"])
async def test_gateway_without_public_address_is_useless(external: str) -> None:
    FakeUPnP.external = external
    try:
        reason = await run_upnp(PORT, _never, counters=Counter())
    finally:
        FakeUPnP.external = "203.0.113.11"
    assert reason.startswith(BEHIND_CGNAT)
    assert FakeUPnP.calls == []  # nothing was mapped, so nothing to delete


async def test_refused_udp_mapping_returns_the_error_and_emits_nothing() -> None:
    FakeUPnP.refuse = {"UDP"}
    counters: Counter[str] = Counter()
    reason = await run_upnp(PORT, _never, counters=counters)
    assert "AddPortMapping UDP 40000 failed (ConflictInMappingEntry)" in reason
    assert counters["upnp.add_failed.udp"] == 1
    assert [c[0] for c in FakeUPnP.calls] == ["add"]


async def test_refused_tcp_mapping_keeps_udp(mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = IDLE_JUMP
    FakeUPnP.refuse = {"TCP"}
    granted: list[tuple[str, ...]] = []
    with trio.move_on_after(1):
        await run_upnp(PORT, lambda ext, lease, held: granted.append(held), counters=Counter())
    assert granted == [("udp",)]
    assert FakeUPnP.calls[-1] == ("delete", PORT, "UDP")  # only what was added is deleted


async def test_no_device_is_reported_not_raised() -> None:
    FakeUPnP.devices = 0
    try:
        reason = await run_upnp(PORT, _never, counters=Counter())
    finally:
        FakeUPnP.devices = 1
    assert reason == "upnp: no gateway answered discovery"


def _never(*args: object) -> None:
    raise AssertionError(f"nothing should be mapped, got {args}")
