"""The space driver's frame routing: network garbage is counted, never raised.

The node is built but not run (no socket): events are handed to the driver directly.
"""

from __future__ import annotations

from pathlib import Path

import cbor2
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from ethersync.keys import load_or_create_device
from ethersync.store import Store
from p2pd import messages
from p2pd.derive import Params, derive
from p2pd.identity import load_or_create
from p2pd.node import MessageIn, Node, PeerDown, PeerUp
from p2pd.space.driver import PeerJoined, PeerLeft, Space
from tests.integration.conftest import fresh_passphrase

PEER = bytes(range(32))
PEER_FP = "PEER-FINGERPRINT"


@pytest.fixture(scope="module")
def params() -> Params:
    return derive(fresh_passphrase())


def make_space(tmp: Path, params: Params) -> Space:
    node = Node(params, load_or_create(tmp / "state"))
    store = Store(tmp / "store.sqlite3")
    return Space(node, store, load_or_create_device(tmp / "state"), download_dir=tmp / "dl")


def es(space_id: bytes, frame: object) -> MessageIn:
    data = messages.encode("es", s=space_id, f=frame)
    return MessageIn(PEER, PEER_FP, messages.decode_untrusted(data))


async def test_peer_up_and_down_reach_both_cores(tmp_path: Path, params: Params) -> None:
    space = make_space(tmp_path, params)
    space._on_node_event(PeerUp(PEER, PEER_FP, ("127.0.0.1", 9), "lan", 0.01), 0.0)
    assert space.gossip.peers == [PEER] and space.peers == {PEER_FP: PEER}
    assert isinstance(space.events.receive_nowait(), PeerJoined)
    space._on_node_event(PeerDown(PEER, PEER_FP, "closed"), 0.0)
    assert space.gossip.peers == [] and space.peers == {}
    assert isinstance(space.events.receive_nowait(), PeerLeft)


async def test_frames_for_another_space_or_of_no_shape_are_counted(
    tmp_path: Path, params: Params
) -> None:
    space = make_space(tmp_path, params)
    space._on_node_event(PeerUp(PEER, PEER_FP, ("127.0.0.1", 9), "lan", 0.01), 0.0)
    space._on_node_event(es(bytes(16), cbor2.dumps({"t": "digest"})), 0.0)
    space._on_node_event(es(space.space_id, "not bytes"), 0.0)
    space._on_node_event(es(space.space_id, b"\xff\x00"), 0.0)
    space._on_node_event(es(space.space_id, cbor2.dumps([1, 2])), 0.0)
    assert space.counters == {
        "es_other_space": 1,
        "es_shape": 1,
        "es_cbor": 1,
        "es_frame_shape": 1,
    }


async def test_frames_from_a_peer_not_connected_are_dropped(tmp_path: Path, params: Params) -> None:
    space = make_space(tmp_path, params)
    space._on_node_event(es(space.space_id, cbor2.dumps({"t": "have"})), 0.0)
    assert space.counters["es_shape"] == 1
    assert space.gossip.peers == []


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(["have", "get", "chunk", "nope", "push", "ihave", "want", "sum", "x"]),
    fields=st.dictionaries(
        st.sampled_from(["f", "h", "b", "n", "i", "v", "d", "e", "r", "p"]),
        st.one_of(st.binary(max_size=64), st.integers(), st.lists(st.binary(max_size=40))),
    ),
    raw=st.binary(max_size=200),
)
def test_any_frame_is_handled_without_raising(
    tmp_path_factory: pytest.TempPathFactory,
    params: Params,
    kind: str,
    fields: dict[str, object],
    raw: bytes,
) -> None:
    tmp = tmp_path_factory.mktemp("fuzz")

    async def main() -> None:
        space = make_space(tmp, params)
        space._on_node_event(PeerUp(PEER, PEER_FP, ("127.0.0.1", 9), "lan", 0.01), 0.0)
        for frame in (cbor2.dumps({"t": kind, **fields}), raw):
            space._on_node_event(es(space.space_id, frame), 0.0)
        space._drain()
        space.store.close()

    trio.run(main)
