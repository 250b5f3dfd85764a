"""A peer that closed its channel and comes back with the same identity (a new process, same
state dir) is a new PeerUp on a fresh channel, and its messages arrive."""

from __future__ import annotations

import os

import trio

from p2pd import messages
from p2pd.derive import params_from_master
from p2pd.identity import Identity
from p2pd.node import MessageIn, Node, NodeConfig, PeerDown, PeerUp

PARAMS = params_from_master(b"\x0b" * 32)


def loopback(targets: list[tuple[str, int]] | None = None) -> NodeConfig:
    return NodeConfig(
        port=0,
        interfaces=["lo"],
        beacons=False,
        mdns=False,
        portmap=False,
        targets=targets or [],
    )


async def visit(identity: Identity, target: tuple[str, int], text: str) -> None:
    """Connect, send ``text``, close cleanly: one short-lived process's life."""
    node = Node(PARAMS, identity, loopback([target]))
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        async for event in node.events:
            if isinstance(event, PeerUp):
                node.send_message(event.peer_id, messages.text(text))
                node.close_peer(event.peer_id)
            elif isinstance(event, PeerDown):
                break
        nursery.cancel_scope.cancel()


async def test_a_peer_back_on_a_closed_channel_is_a_new_peer() -> None:
    host = Node(PARAMS, Identity.from_private(os.urandom(32)), loopback())
    visitor = Identity.from_private(os.urandom(32))
    ups: list[PeerUp] = []
    texts: list[str] = []
    async with trio.open_nursery() as nursery:
        port = await nursery.start(host.run)
        target = ("127.0.0.1", port)
        with trio.fail_after(20):
            await visit(visitor, target, "first")
            await visit(visitor, target, "second")
            async for event in host.events:
                if isinstance(event, PeerUp):
                    ups.append(event)
                elif isinstance(event, MessageIn) and event.message.kind == "text":
                    texts.append(str(event.message.fields["body"]))
                    if len(texts) == 2:
                        break
        nursery.cancel_scope.cancel()
    assert texts == ["first", "second"]
    assert [up.peer_id for up in ups] == [visitor.public, visitor.public]


async def crash_after_connect(identity: Identity, target: tuple[str, int]) -> None:
    """Connect, then vanish without closing anything: a killed process."""
    node = Node(PARAMS, identity, loopback([target]))
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        async for event in node.events:
            if isinstance(event, PeerUp):
                node.send_message(event.peer_id, messages.text("before the crash"))
                await trio.sleep(0.2)  # let it out; then the process "dies"
                break
        nursery.cancel_scope.cancel()


async def test_a_restarted_peer_gets_a_fresh_channel_although_the_old_one_is_open() -> None:
    host = Node(PARAMS, Identity.from_private(os.urandom(32)), loopback())
    visitor = Identity.from_private(os.urandom(32))
    texts: list[str] = []
    downs: list[str] = []
    async with trio.open_nursery() as nursery:
        port = await nursery.start(host.run)
        target = ("127.0.0.1", port)
        with trio.fail_after(10):  # the old channel's idle timeout is far longer than this
            await crash_after_connect(visitor, target)
            nursery.start_soon(visit, visitor, target, "after the restart")
            async for event in host.events:
                if isinstance(event, PeerDown):
                    downs.append(event.reason)
                elif isinstance(event, MessageIn) and event.message.kind == "text":
                    texts.append(str(event.message.fields["body"]))
                    if len(texts) == 2:
                        break
        nursery.cancel_scope.cancel()
    assert texts == ["before the crash", "after the restart"]
    assert downs[:1] == ["restarted"]
    assert host.stats()["peer_restarted"] == 1
