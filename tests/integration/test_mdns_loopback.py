"""mDNS between two nodes of one host, on loopback only (this runs in the root namespace).

zeroconf is restricted to ``127.0.0.1`` by ``interfaces=["lo"]``, so nothing is sent on the
machine's real interfaces (checked by hand with an nftables counter in a lab namespace:
every 5353/udp packet left through ``lo``).  The real-LAN case runs in
tests/netlab/test_lan_discovery.py.
"""

from __future__ import annotations

from collections import Counter

import trio

from transports.base import Candidate
from transports.mdns import CLOSE_TIMEOUT, MdnsTransport, run_mdns

RID = bytes.fromhex("5e" * 16)
OTHER_RID = bytes.fromhex("a7" * 16)
PORT_A, PORT_B, PORT_OTHER = 52101, 52102, 52103
# Seconds allowed for both to register (about 1.7 s of probing) and find each other.
DISCOVERY_TIMEOUT = 10.0


async def test_two_nodes_on_one_host_find_each_other_over_loopback() -> None:
    found: dict[str, list[tuple[str, int]]] = {"a": [], "b": []}
    both = trio.Event()

    def collector(name: str) -> object:
        def on_candidate(addr: tuple[str, int]) -> None:
            found[name].append(addr)
            if found["a"] and found["b"]:
                both.set()

        return on_candidate

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_mdns, RID, PORT_A, ["lo"], collector("a"))
        nursery.start_soon(run_mdns, RID, PORT_B, ["lo"], collector("b"))
        nursery.start_soon(run_mdns, OTHER_RID, PORT_OTHER, ["lo"], lambda addr: None)
        with trio.fail_after(DISCOVERY_TIMEOUT):
            await both.wait()
        nursery.cancel_scope.cancel()

    assert found == {"a": [("127.0.0.1", PORT_B)], "b": [("127.0.0.1", PORT_A)]}


async def test_cancelling_unregisters_and_closes_within_the_close_timeout() -> None:
    counters: Counter[str] = Counter()
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: run_mdns(RID, PORT_A, ["lo"], lambda addr: None, counters=counters)
            )
            with trio.fail_after(DISCOVERY_TIMEOUT):
                while not counters["mdns_registered"]:
                    await trio.sleep(0.05)
            cancelled_at = trio.current_time()
            scope.cancel()
    assert trio.current_time() - cancelled_at < CLOSE_TIMEOUT


async def test_interfaces_without_ipv4_end_mdns_quietly() -> None:
    counters: Counter[str] = Counter()
    with trio.fail_after(1.0):
        await run_mdns(RID, PORT_A, ["no-such-if0"], lambda addr: None, counters=counters)
    assert counters == {"mdns_no_interface": 1}


async def test_mdns_transport_emits_lan_candidates() -> None:
    got: list[Candidate] = []
    done = trio.Event()

    def emit(candidate: Candidate) -> None:
        got.append(candidate)
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(MdnsTransport(RID, PORT_A, ["lo"]).run, emit)
        nursery.start_soon(run_mdns, RID, PORT_B, ["lo"], lambda addr: None)
        with trio.fail_after(DISCOVERY_TIMEOUT):
            await done.wait()
        nursery.cancel_scope.cancel()

    assert [(c.addr, c.path) for c in got] == [(("127.0.0.1", PORT_B), "lan")]
