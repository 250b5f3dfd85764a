"""Gossip messages: round trips, limits, and hostile input that must never raise."""

from __future__ import annotations

import contextlib
import random

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ethersync.gossip import GossipCore
from ethersync.gossip_wire import (
    MAX_BLOB_SIZE,
    MAX_MESSAGE_SIZE,
    Digest,
    IHave,
    Item,
    Message,
    Peers,
    Prune,
    Push,
    Summary,
    Want,
    decode_untrusted,
    encode,
)
from p2pd.errors import BadFrame

ids = st.binary(min_size=32, max_size=32)
seqs = st.integers(min_value=1, max_value=2**63 - 1)
items = st.builds(Item, ids, ids, seqs, st.binary(max_size=200))
messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Push, st.lists(items, max_size=4).map(tuple), st.booleans()),
    st.builds(IHave, st.lists(ids, max_size=8).map(tuple)),
    st.builds(Want, st.lists(ids, max_size=8).map(tuple)),
    st.builds(Digest, st.binary(min_size=16, max_size=16), st.integers(0, 4096)),
    st.builds(Summary, st.dictionaries(ids, seqs, max_size=8), st.booleans()),
    st.just(Prune()),
    st.builds(Peers, st.lists(st.binary(min_size=1, max_size=64), max_size=8).map(tuple)),
)


@given(messages)
def test_every_message_round_trips(message: Message) -> None:
    assert decode_untrusted(encode(message)) == message


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"t": "push", "i": [[b"x" * 31, b"a" * 32, 1, b""]], "e": True}, "gossip_id"),
        ({"t": "push", "i": [[b"x" * 32, b"a" * 32, 0, b""]], "e": True}, "gossip_seq"),
        ({"t": "push", "i": [[b"x" * 32, b"a" * 32, True, b""]], "e": True}, "gossip_seq"),
        ({"t": "push", "i": [[b"x" * 32, b"a" * 32, 2**63, b""]], "e": True}, "gossip_seq"),
        ({"t": "push", "i": [[b"x" * 32, b"a" * 32, 1, "s"]], "e": True}, "gossip_blob"),
        ({"t": "push", "i": [], "e": 1}, "gossip_push"),
        ({"t": "ihave", "i": [[b"x" * 32, b"a" * 32]]}, "gossip_id"),
        ({"t": "want", "i": [b"x"] * 1025}, "gossip_list"),
        ({"t": "digest", "d": b"x" * 15, "n": 1}, "gossip_digest"),
        ({"t": "digest", "d": b"x" * 16, "n": -1}, "gossip_digest"),
        ({"t": "sum", "v": {b"a" * 32: 1}, "r": None}, "gossip_summary"),
        ({"t": "sum", "v": {b"a" * 31: 1}, "r": False}, "gossip_author"),
        ({"t": "peers", "p": [b""]}, "gossip_peer"),
        ({"t": "nope"}, "gossip_type"),
        ([1, 2], "gossip_shape"),
    ],
)
def test_malformed_messages_are_bad_frames(body: object, reason: str) -> None:
    with pytest.raises(BadFrame) as info:
        decode_untrusted(cbor2.dumps(body))
    assert info.value.reason == reason


def test_oversized_input_is_dropped_unparsed() -> None:
    with pytest.raises(BadFrame, match="gossip_too_big"):
        decode_untrusted(b"\xa0" * (MAX_MESSAGE_SIZE + 1))
    blob = b"x" * (MAX_BLOB_SIZE + 1)
    with pytest.raises(BadFrame, match="gossip_blob"):
        decode_untrusted(
            cbor2.dumps({"t": "push", "i": [[b"x" * 32, b"a" * 32, 1, blob]], "e": False})
        )


cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.binary(max_size=40) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=2), inner),
    max_leaves=20,
)
structured = st.fixed_dictionaries(
    {"t": st.sampled_from(["push", "ihave", "want", "digest", "sum", "prune", "peers"])},
    optional={
        "i": cbor_values,
        "e": cbor_values,
        "d": cbor_values,
        "n": cbor_values,
        "v": cbor_values,
        "r": cbor_values,
        "p": cbor_values,
    },
).map(cbor2.dumps)


@settings(max_examples=300)
@given(st.one_of(st.binary(max_size=300), structured))
def test_hostile_input_never_raises_past_the_core(data: bytes) -> None:
    core = GossipCore(b"me", 0.0, rng=random.Random(0))
    with contextlib.suppress(BadFrame):
        decode_untrusted(data)
    core.receive_untrusted(b"them", data, 0.0)
    core.handle_timer(5.0)
    core.datagrams_to_send(5.0)
    assert sum(core.drops.values()) + core.bytes_received > 0
