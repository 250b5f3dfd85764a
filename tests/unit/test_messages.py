"""Application messages: CBOR with a type field; anything malformed is a BadFrame."""

from __future__ import annotations

import contextlib

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pd import messages
from p2pd.errors import BadFrame


def test_round_trip_of_every_kind() -> None:
    assert messages.decode_untrusted(messages.text("hé 👋")).fields == {"body": "hé 👋"}
    assert messages.decode_untrusted(messages.hello("listen")).fields["role"] == "listen"
    assert messages.decode_untrusted(messages.done()).kind == "done"


def test_unknown_kinds_pass_through_for_forward_compatibility() -> None:
    msg = messages.decode_untrusted(cbor2.dumps({"t": "future", "x": 1}))
    assert (msg.kind, msg.fields) == ("future", {"x": 1})


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xff",
        cbor2.dumps([1, 2]),
        cbor2.dumps({"x": 1}),
        cbor2.dumps({"t": 5}),
        cbor2.dumps({"t": "text", "body": 5}),
        cbor2.dumps({"t": "hello", "role": "admin"}),
    ],
)
def test_malformed_is_bad_frame(payload: bytes) -> None:
    with pytest.raises(BadFrame):
        messages.decode_untrusted(payload)


@given(st.binary(max_size=200))
def test_random_bytes_only_ever_raise_bad_frame(data: bytes) -> None:
    with contextlib.suppress(BadFrame):
        messages.decode_untrusted(data)


def test_cands_round_trip() -> None:
    entries = [("mapped", "203.0.113.12", 51820), ("lan", "10.2.0.2", 51820)]
    message = messages.decode_untrusted(messages.cands(entries))
    assert message.kind == "cands"
    assert messages.candidates_untrusted(message) == entries


@pytest.mark.parametrize(
    "bad",
    [
        {"t": "cands"},
        {"t": "cands", "c": "x"},
        {"t": "cands", "c": [["relay", "1.2.3.4", 1]]},
        {"t": "cands", "c": [["lan", "1.2.3.4", 0]]},
        {"t": "cands", "c": [["lan", 5, 1]]},
        {"t": "cands", "c": [["lan", "1.2.3.4", 1]] * 17},
    ],
)
def test_malformed_cands_are_refused(bad: dict[str, object]) -> None:
    message = messages.decode_untrusted(cbor2.dumps(bad))
    with pytest.raises(BadFrame):
        messages.candidates_untrusted(message)
