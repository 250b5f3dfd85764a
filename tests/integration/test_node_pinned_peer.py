"""The hybrid offer's resume token pins the peer: a node told to expect one static key
completes a session with that node only, even when another passphrase holder answers first.
"""

from __future__ import annotations

import os

import trio

from p2pd.derive import params_from_master
from p2pd.identity import Identity
from p2pd.node import Node, NodeConfig, PeerUp

PARAMS = params_from_master(b"\x09" * 32)


def loopback(**fields: object) -> NodeConfig:
    return NodeConfig(
        port=0,
        interfaces=["lo"],
        beacons=False,
        mdns=False,
        portmap=False,
        **fields,  # type: ignore[arg-type]
    )


async def test_a_pinned_node_refuses_every_other_passphrase_holder() -> None:
    offerer = Node(PARAMS, Identity.from_private(os.urandom(32)), loopback())
    stranger = Node(PARAMS, Identity.from_private(os.urandom(32)), loopback())
    async with trio.open_nursery() as nursery:
        offerer_port = await nursery.start(offerer.run)
        stranger_port = await nursery.start(stranger.run)
        joiner = Node(
            PARAMS,
            Identity.from_private(os.urandom(32)),
            loopback(
                # The stranger is listed first: it answers first.
                targets=[("127.0.0.1", stranger_port), ("127.0.0.1", offerer_port)],
                expect_peer=offerer.identity.public,
            ),
        )
        await nursery.start(joiner.run)
        up: PeerUp | None = None
        with trio.fail_after(10):
            async for event in joiner.events:
                if isinstance(event, PeerUp):
                    up = event
                    break
        assert up is not None and up.peer_id == offerer.identity.public
        assert joiner.stats().get("unexpected_peer", 0) >= 1
        assert stranger.identity.public not in joiner.peers
        nursery.cancel_scope.cancel()
