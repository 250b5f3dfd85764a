"""A live node on loopback takes malformed STUN, relay and punch datagrams — random and mutated
real ones, from strangers and from its own assist and STUN server's addresses — drops and
counts every one, and still connects to a real peer afterwards.
"""

from __future__ import annotations

import os
import random
import socket

import trio

from p2pd.derive import params_from_master
from p2pd.identity import Identity
from p2pd.node import Node, NodeConfig, PeerUp
from transports import relay_wire
from transports.punch_wire import Frame as PunchFrame
from transports.punch_wire import encode as punch_encode
from transports.stun import binding_request

PARAMS = params_from_master(b"\x07" * 32)
#: Datagrams of each kind thrown at the node.
ROUNDS = 300


def mutate(rng: random.Random, data: bytes) -> bytes:
    """Flip, cut or extend a real frame: the kind of garbage a parser must survive."""
    blob = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.random()
        if choice < 0.5 and blob:
            blob[rng.randrange(len(blob))] ^= 1 << rng.randrange(8)
        elif choice < 0.75:
            del blob[rng.randrange(len(blob) + 1) :]
        else:
            blob += rng.randbytes(rng.randint(1, 40))
    return bytes(blob)


def samples(rng: random.Random) -> list[bytes]:
    """Real frames of every WAN kind, to be mutated."""
    tag = bytes(16)
    addr = ("127.0.0.1", 40000)
    frames = [
        binding_request(os.urandom(12)),
        relay_wire.encode(relay_wire.Register(tag, bytes(8), bytes(16))),
        relay_wire.encode(relay_wire.Peer(tag, 7, addr)),
        relay_wire.encode(relay_wire.Deliver(7, rng.randbytes(64))),
        relay_wire.encode(relay_wire.Send(7, rng.randbytes(64))),
        punch_encode(bytes(32), PunchFrame(1, bytes(8), bytes(8), bytes(8)), 1e9),
    ]
    # A STUN success response header around random attributes.
    frames.append(b"\x01\x01\x00\x10\x21\x12\xa4\x42" + os.urandom(12) + os.urandom(16))
    return frames


async def test_malformed_wan_datagrams_are_dropped_and_counted_and_the_node_lives() -> None:
    rng = random.Random(5)
    with (
        trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as fake_assist,
        trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger,
    ):
        await fake_assist.bind(("127.0.0.1", 0))
        await stranger.bind(("127.0.0.1", 0))
        assist_addr = fake_assist.getsockname()
        config = NodeConfig(
            port=0,
            interfaces=["lo"],
            beacons=False,
            mdns=False,
            portmap=False,
            assists=[assist_addr],
            stun=[assist_addr],
        )
        node = Node(PARAMS, Identity.from_private(os.urandom(32)), config)
        async with trio.open_nursery() as nursery:
            port = await nursery.start(node.run)
            target = ("127.0.0.1", port)
            real = samples(rng)
            for _ in range(ROUNDS):
                for sock in (fake_assist, stranger):
                    kind = rng.random()
                    if kind < 0.2:
                        data = rng.randbytes(rng.randint(1, 200))
                    else:
                        data = mutate(rng, rng.choice(real))
                    if data:
                        await sock.sendto(data, target)
                await trio.sleep(0)
            await trio.sleep(0.2)
            stats = node.stats()
            dropped = {k: v for k, v in stats.items() if k.startswith("wan_") and "drop" in k}
            # Every kind was seen and dropped: STUN, punch, relay from a stranger and from
            # the assist's own address.
            for kind in ("wan_drop_stun", "wan_drop_punch", "wan_drop_relay_unknown_source"):
                assert dropped.get(kind, 0) > 0, dropped
            assert any(k.startswith("wan_relay_drop_") for k in dropped), dropped
            assert sum(dropped.values()) > ROUNDS, dropped

            # Still alive: a real peer connects over loopback.
            peer = Node(
                PARAMS,
                Identity.from_private(os.urandom(32)),
                NodeConfig(
                    port=0,
                    interfaces=["lo"],
                    beacons=False,
                    mdns=False,
                    portmap=False,
                    targets=[target],
                ),
            )
            await nursery.start(peer.run)
            with trio.fail_after(10):
                async for event in peer.events:
                    if isinstance(event, PeerUp):
                        break
            nursery.cancel_scope.cancel()
