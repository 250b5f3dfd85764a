"""Every explicit target is tried: the race times the first session, and the targets still
queued when it is won (other peers of the space) are connected to as well."""

from __future__ import annotations

import os

import trio

from p2pd.derive import params_from_master
from p2pd.identity import Identity
from p2pd.node import Node, NodeConfig, PeerUp

PARAMS = params_from_master(b"\x0c" * 32)


def loopback(targets: list[tuple[str, int]] | None = None) -> NodeConfig:
    return NodeConfig(
        port=0, interfaces=["lo"], beacons=False, mdns=False, portmap=False,
        targets=targets or [],
    )  # fmt: skip


async def test_a_node_with_four_targets_connects_to_all_four() -> None:
    hosts = [Node(PARAMS, Identity.from_private(os.urandom(32)), loopback()) for _ in range(4)]
    async with trio.open_nursery() as nursery:
        ports = [await nursery.start(host.run) for host in hosts]
        joiner = Node(
            PARAMS,
            Identity.from_private(os.urandom(32)),
            loopback([("127.0.0.1", port) for port in ports]),
        )
        await nursery.start(joiner.run)
        seen: set[bytes] = set()
        with trio.fail_after(15):
            async for event in joiner.events:
                if isinstance(event, PeerUp):
                    seen.add(event.peer_id)
                    if len(seen) == len(hosts):
                        break
        assert seen == {host.identity.public for host in hosts}
        nursery.cancel_scope.cancel()
