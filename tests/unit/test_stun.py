"""STUN: the RFC 5769 vectors, codec properties and fuzzing, and the prober's timers and events."""

from __future__ import annotations

import contextlib
import itertools
import json
import struct
import zlib
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pd.errors import BadFrame, LocalError
from transports.stun import (
    ATTR_ERROR_CODE,
    ATTR_FINGERPRINT,
    ATTR_MAPPED_ADDRESS,
    ATTR_MESSAGE_INTEGRITY,
    ATTR_NONCE,
    ATTR_OTHER_ADDRESS,
    ATTR_REALM,
    ATTR_RESPONSE_ORIGIN,
    ATTR_SOFTWARE,
    ATTR_USERNAME,
    ATTR_XOR_MAPPED_ADDRESS,
    MAX_TRIES,
    METHOD_BINDING,
    RTO,
    RTO_MAX,
    Classified,
    Mapped,
    ServerFailed,
    StunClass,
    StunEvent,
    StunProber,
    binding_request,
    encode_address,
    encode_error,
    encode_message,
    is_stun,
    long_term_key,
    message_type,
    parse_untrusted,
    short_term_key,
    split_type,
    verify_integrity,
)

# --- RFC 5769 test vectors, verbatim (section numbers as in the RFC) ------------------------

PASSWORD = "VOkJxbRl1RmTxUk/WvJxBt"
TID = bytes.fromhex("b7e7a701bc34d686fa87dfae")

# 2.1 Sample Request: SOFTWARE "STUN test client", PRIORITY, ICE-CONTROLLED, USERNAME
# "evtj:h6vY" (padded with spaces), MESSAGE-INTEGRITY, FINGERPRINT.
SAMPLE_REQUEST = bytes.fromhex(
    "00010058" "2112a442" "b7e7a701" "bc34d686" "fa87dfae"
    "80220010" "5354554e" "20746573" "7420636c" "69656e74"
    "00240004" "6e0001ff"
    "80290008" "932ff9b1" "51263b36"
    "00060009" "6576746a" "3a683676" "59202020"
    "00080014" "9aeaa70c" "bfd8cb56" "781ef2b5" "b2d3f249" "c1b571a2"
    "80280004" "e57a3bcf"
)  # fmt: skip

# 2.2 Sample IPv4 Response: SOFTWARE "test vector", XOR-MAPPED-ADDRESS 192.0.2.1:32853.
SAMPLE_IPV4_RESPONSE = bytes.fromhex(
    "0101003c" "2112a442" "b7e7a701" "bc34d686" "fa87dfae"
    "8022000b" "74657374" "20766563" "746f7220"
    "00200008" "0001a147" "e112a643"
    "00080014" "2b91f599" "fd9e90c3" "8c7489f9" "2af9ba53" "f06be7d7"
    "80280004" "c07d4c96"
)  # fmt: skip

# 2.3 Sample IPv6 Response: XOR-MAPPED-ADDRESS [2001:db8:1234:5678:11:2233:4455:6677]:32853.
SAMPLE_IPV6_RESPONSE = bytes.fromhex(
    "01010048" "2112a442" "b7e7a701" "bc34d686" "fa87dfae"
    "8022000b" "74657374" "20766563" "746f7220"
    "00200014" "0002a147" "0113a9fa" "a5d3f179" "bc25f4b5" "bed2b9d9"
    "00080014" "a382954e" "4be67bf1" "1784c97c" "8292c275" "bfe3ed41"
    "80280004" "c8fb0b4c"
)  # fmt: skip

# 2.4 Sample Request with Long-Term Authentication.
LT_TID = bytes.fromhex("78ad3433c6ad72c029da412e")
LT_USERNAME = "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"  # "matorikkusu" in katakana
LT_PASSWORD = "The\u00adM\u00aatr\u2168"  # SASLprep gives "TheMatrIX"
LT_NONCE = "f//499k954d6OL34oL9FSTvy64sA"
LT_REALM = "example.org"
SAMPLE_LONG_TERM_REQUEST = bytes.fromhex(
    "00010060" "2112a442" "78ad3433" "c6ad72c0" "29da412e"
    "00060012" "e3839ee3" "8388e383" "aae38383" "e382afe3" "82b90000"
    "0015001c" "662f2f34" "39396b39" "35346436" "4f4c3334" "6f4c3946" "53547679" "36347341"
    "0014000b" "6578616d" "706c652e" "6f726700"
    "00080014" "f6702465" "6dd64a3e" "02b8e071" "2e85c9a2" "8ca89666"
)  # fmt: skip

VECTORS = [SAMPLE_REQUEST, SAMPLE_IPV4_RESPONSE, SAMPLE_IPV6_RESPONSE, SAMPLE_LONG_TERM_REQUEST]


def test_rfc5769_sample_request() -> None:
    msg = parse_untrusted(SAMPLE_REQUEST)  # FINGERPRINT is verified while parsing
    assert (msg.method, msg.cls, msg.transaction_id) == (METHOD_BINDING, StunClass.REQUEST, TID)
    assert msg.software == "STUN test client"
    assert msg.get(ATTR_USERNAME) == b"evtj:h6vY"
    assert msg.get(ATTR_FINGERPRINT) == bytes.fromhex("e57a3bcf")
    assert verify_integrity(msg, short_term_key(PASSWORD))
    assert not verify_integrity(msg, short_term_key(PASSWORD + "x"))


def test_rfc5769_sample_ipv4_response() -> None:
    msg = parse_untrusted(SAMPLE_IPV4_RESPONSE)
    assert (msg.cls, msg.transaction_id, msg.software) == (StunClass.SUCCESS, TID, "test vector")
    assert msg.mapped == ("192.0.2.1", 32853)
    assert verify_integrity(msg, short_term_key(PASSWORD))


def test_rfc5769_sample_ipv6_response() -> None:
    msg = parse_untrusted(SAMPLE_IPV6_RESPONSE)
    assert msg.cls == StunClass.SUCCESS
    assert msg.mapped == ("2001:db8:1234:5678:11:2233:4455:6677", 32853)
    assert verify_integrity(msg, short_term_key(PASSWORD))


def test_rfc5769_long_term_request_verifies_and_is_reproduced_byte_for_byte() -> None:
    key = long_term_key(LT_USERNAME, LT_REALM, LT_PASSWORD)
    assert key == long_term_key(LT_USERNAME, LT_REALM, "TheMatrIX")
    msg = parse_untrusted(SAMPLE_LONG_TERM_REQUEST)
    assert msg.transaction_id == LT_TID
    assert msg.get(ATTR_REALM) == LT_REALM.encode()
    assert verify_integrity(msg, key)
    attrs = [
        (ATTR_USERNAME, LT_USERNAME.encode()),
        (ATTR_NONCE, LT_NONCE.encode()),
        (ATTR_REALM, LT_REALM.encode()),
    ]
    built = encode_message(METHOD_BINDING, StunClass.REQUEST, LT_TID, attrs, integrity_key=key)
    assert built == SAMPLE_LONG_TERM_REQUEST


@pytest.mark.parametrize("vector", VECTORS)
def test_every_rfc5769_vector_is_recognised_by_the_demultiplexer(vector: bytes) -> None:
    assert is_stun(vector)


@pytest.mark.parametrize("vector", VECTORS[:3])
def test_a_flipped_bit_breaks_the_fingerprint(vector: bytes) -> None:
    damaged = bytearray(vector)
    damaged[25] ^= 0x01  # inside the first attribute's value
    with pytest.raises(BadFrame, match="stun_fingerprint"):
        parse_untrusted(bytes(damaged))


def test_a_flipped_bit_breaks_the_long_term_integrity() -> None:
    damaged = bytearray(SAMPLE_LONG_TERM_REQUEST)
    damaged[30] ^= 0x01
    key = long_term_key(LT_USERNAME, LT_REALM, LT_PASSWORD)
    assert not verify_integrity(parse_untrusted(bytes(damaged)), key)


# --- codec --------------------------------------------------------------------------------


def test_binding_request_layout() -> None:
    request = binding_request(TID)
    assert request[:8] == bytes.fromhex("00010008 2112a442")
    assert request[8:20] == TID
    assert request[20:24] == bytes.fromhex("80280004")
    assert int.from_bytes(request[24:], "big") == zlib.crc32(request[:20]) ^ 0x5354554E
    assert binding_request(TID, fingerprint=False) == bytes.fromhex("00010000 2112a442") + TID


def test_binding_requests_get_fresh_random_transaction_ids() -> None:
    assert binding_request()[8:20] != binding_request()[8:20]


def test_message_type_bits_follow_rfc8489_figure_3() -> None:
    assert message_type(METHOD_BINDING, StunClass.REQUEST) == 0x0001
    assert message_type(METHOD_BINDING, StunClass.INDICATION) == 0x0011
    assert message_type(METHOD_BINDING, StunClass.SUCCESS) == 0x0101
    assert message_type(METHOD_BINDING, StunClass.ERROR) == 0x0111
    assert message_type(0xFFF, StunClass.ERROR) == 0x3FFF


@given(st.integers(0, 0xFFF), st.sampled_from(StunClass))
def test_split_type_inverts_message_type(method: int, cls: StunClass) -> None:
    assert split_type(message_type(method, cls)) == (method, cls)


def test_error_code_is_decoded() -> None:
    msg = parse_untrusted(
        encode_message(
            METHOD_BINDING, StunClass.ERROR, TID, [(ATTR_ERROR_CODE, encode_error(420, "no"))]
        )
    )
    assert msg.error == (420, "no")
    with pytest.raises(LocalError):
        encode_error(200, "success is not an error")


def test_bad_error_class_is_a_bad_frame() -> None:
    value = bytes([0, 0, 2, 0])
    data = encode_message(METHOD_BINDING, StunClass.ERROR, TID, [(ATTR_ERROR_CODE, value)])
    with pytest.raises(BadFrame, match="stun_error_code"):
        parse_untrusted(data)


def test_mapped_address_is_used_when_there_is_no_xor_mapped_address() -> None:
    value = encode_address(ATTR_MAPPED_ADDRESS, ("198.51.100.7", 4000), TID)
    assert value == bytes.fromhex("00010fa0 c6336407")
    msg = parse_untrusted(
        encode_message(METHOD_BINDING, StunClass.SUCCESS, TID, [(ATTR_MAPPED_ADDRESS, value)])
    )
    assert msg.mapped == ("198.51.100.7", 4000)


def test_xor_mapped_address_wins_over_mapped_address() -> None:
    attrs = [
        (ATTR_MAPPED_ADDRESS, encode_address(ATTR_MAPPED_ADDRESS, ("10.0.0.1", 1), TID)),
        (ATTR_XOR_MAPPED_ADDRESS, encode_address(ATTR_XOR_MAPPED_ADDRESS, ("192.0.2.9", 2), TID)),
    ]
    msg = parse_untrusted(encode_message(METHOD_BINDING, StunClass.SUCCESS, TID, attrs))
    assert msg.mapped == ("192.0.2.9", 2)


def test_attributes_after_message_integrity_are_ignored_except_fingerprint() -> None:
    data = encode_message(METHOD_BINDING, StunClass.SUCCESS, TID, integrity_key=b"k")
    extra = struct.pack("!HH", ATTR_SOFTWARE, 4) + b"late"
    tampered = bytearray(data + extra)
    struct.pack_into("!H", tampered, 2, len(tampered) - 20)
    msg = parse_untrusted(bytes(tampered))
    assert msg.software is None
    assert [t for t, _, _ in msg.attributes] == [ATTR_MESSAGE_INTEGRITY]


def test_fingerprint_must_be_last() -> None:
    # A correct FINGERPRINT (the length field counts the attribute after it) not at the end.
    header = struct.pack("!HH", 0x0001, 12) + b"\x21\x12\xa4\x42" + TID
    crc = zlib.crc32(header) ^ 0x5354554E
    fingerprint = struct.pack("!HHI", ATTR_FINGERPRINT, 4, crc)
    with pytest.raises(BadFrame, match="stun_fingerprint_not_last"):
        parse_untrusted(header + fingerprint + struct.pack("!HH", ATTR_SOFTWARE, 0))


def test_generated_integrity_and_fingerprint_verify() -> None:
    key = short_term_key("secret")
    data = encode_message(
        METHOD_BINDING, StunClass.SUCCESS, TID, integrity_key=key, fingerprint=True
    )
    msg = parse_untrusted(data)
    assert verify_integrity(msg, key)
    assert not verify_integrity(msg, short_term_key("Secret"))
    assert int.from_bytes(data[-4:], "big") == zlib.crc32(data[:-8]) ^ 0x5354554E


def test_demultiplexer_never_takes_a_p2pd_packet() -> None:
    # INIT 88, RESP 156, FINISH 124, DATA >= 32, COOKIE 64, BEACON 36: bytes 1..3 zero.
    for kind, size in [(1, 88), (2, 156), (3, 124), (4, 32), (4, 1200), (5, 64), (6, 36)]:
        packet = bytes([kind, 0, 0, 0]) + b"\x21\x12\xa4\x42" + bytes(size - 8)
        assert not is_stun(packet)


def test_demultiplexer_checks_each_rule() -> None:
    good = binding_request(TID)
    assert is_stun(good)
    assert not is_stun(good[:-4])  # length field no longer matches
    assert not is_stun(good + b"\0")  # not a multiple of 4
    assert not is_stun(b"\x40" + good[1:])  # a top bit set
    assert not is_stun(good[:4] + b"\x21\x12\xa4\x43" + good[8:])  # wrong cookie
    assert not is_stun(good[:19])


# --- properties and fuzzing ---------------------------------------------------------------

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
addrs = st.tuples(st.one_of(ipv4, ipv6), st.integers(0, 0xFFFF))
tids = st.binary(min_size=12, max_size=12)


@given(
    tids,
    st.sampled_from([StunClass.SUCCESS, StunClass.ERROR, StunClass.REQUEST]),
    addrs,
    addrs,
    addrs,
    st.text(max_size=40),
    st.lists(st.tuples(st.integers(0xC000, 0xFFFF), st.binary(max_size=30)), max_size=4),
    st.booleans(),
    st.one_of(st.none(), st.binary(min_size=1, max_size=64)),
)
def test_encode_then_parse_round_trips(
    tid: bytes,
    cls: StunClass,
    mapped: tuple[str, int],
    other: tuple[str, int],
    origin: tuple[str, int],
    software: str,
    unknown: list[tuple[int, bytes]],
    fingerprint: bool,
    key: bytes | None,
) -> None:
    attrs = [
        (ATTR_XOR_MAPPED_ADDRESS, encode_address(ATTR_XOR_MAPPED_ADDRESS, mapped, tid)),
        (ATTR_OTHER_ADDRESS, encode_address(ATTR_OTHER_ADDRESS, other, tid)),
        (ATTR_RESPONSE_ORIGIN, encode_address(ATTR_RESPONSE_ORIGIN, origin, tid)),
        (ATTR_SOFTWARE, software.encode()),
        *[(t, v) for t, v in unknown if t not in (ATTR_FINGERPRINT, ATTR_MESSAGE_INTEGRITY)],
    ]
    data = encode_message(
        METHOD_BINDING, cls, tid, attrs, integrity_key=key, fingerprint=fingerprint
    )
    assert is_stun(data)
    msg = parse_untrusted(data)
    assert (msg.method, msg.cls, msg.transaction_id) == (METHOD_BINDING, cls, tid)
    assert (msg.mapped, msg.other_address, msg.response_origin) == (mapped, other, origin)
    assert msg.software == software
    assert [(t, v) for t, v, _ in msg.attributes][: len(attrs)] == attrs
    if key is not None:
        assert verify_integrity(msg, key)


def only_bad_frame(data: bytes) -> None:
    """Parse ``data``; any exception but BadFrame fails the test."""
    with contextlib.suppress(BadFrame):
        parse_untrusted(data)


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_random_bytes_only_ever_raise_bad_frame(data: bytes) -> None:
    only_bad_frame(data)


@settings(max_examples=500)
@given(tids, st.binary(max_size=120).map(lambda b: b[: len(b) - len(b) % 4]))
def test_random_attributes_behind_a_valid_header_only_ever_raise_bad_frame(
    tid: bytes, body: bytes
) -> None:
    header = struct.pack("!HH", 0x0101, len(body)) + b"\x21\x12\xa4\x42" + tid
    assert is_stun(header + body)
    only_bad_frame(header + body)


@settings(max_examples=500)
@given(
    st.sampled_from(VECTORS),
    st.lists(st.tuples(st.integers(0, 115), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_mutated_vectors_only_ever_raise_bad_frame(
    vector: bytes, edits: list[tuple[int, int]]
) -> None:
    data = bytearray(vector)
    for index, value in edits:
        data[index % len(data)] = value
    only_bad_frame(bytes(data))


# --- the prober ---------------------------------------------------------------------------

S1, S2 = ("203.0.113.1", 3478), ("203.0.113.2", 3478)
WAN = ("203.0.113.11", 40000)


def counting_rng() -> Callable[[int], bytes]:
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(n, "big")


def answer(
    request: bytes,
    mapped: tuple[str, int] | None,
    *,
    other: tuple[str, int] | None = None,
    error: int | None = None,
) -> bytes:
    """What a STUN server would send back for ``request``."""
    tid = request[8:20]
    attrs = []
    if mapped is not None:
        attrs.append(
            (ATTR_XOR_MAPPED_ADDRESS, encode_address(ATTR_XOR_MAPPED_ADDRESS, mapped, tid))
        )
    if other is not None:
        attrs.append((ATTR_OTHER_ADDRESS, encode_address(ATTR_OTHER_ADDRESS, other, tid)))
    cls = StunClass.SUCCESS
    if error is not None:
        cls = StunClass.ERROR
        attrs.append((ATTR_ERROR_CODE, encode_error(error, "bad")))
    return encode_message(METHOD_BINDING, cls, tid, attrs, fingerprint=True)


def events(prober: StunProber) -> list[StunEvent]:
    out = []
    while (event := prober.next_event()) is not None:
        out.append(event)
    return out


def test_prober_sends_one_binding_request_per_server_at_once() -> None:
    prober = StunProber([S1, S2], 10.0, rng=counting_rng())
    sent = prober.datagrams_to_send(10.0)
    assert [addr for _, addr in sent] == [S1, S2]
    messages = [parse_untrusted(data) for data, _ in sent]
    assert all(m.cls == StunClass.REQUEST and m.method == METHOD_BINDING for m in messages)
    assert messages[0].transaction_id != messages[1].transaction_id
    assert prober.datagrams_to_send(10.0) == []
    assert prober.get_timer() == 10.0 + RTO


def test_two_servers_agreeing_classify_endpoint_independent() -> None:
    prober = StunProber([S1, S2], 0.0)
    (r1, _), (r2, _) = prober.datagrams_to_send(0.0)
    assert prober.receive_untrusted(answer(r1, WAN), S1, 0.03)
    assert prober.receive_untrusted(answer(r2, WAN), S2, 0.05)
    got = events(prober)
    assert got[:2] == [Mapped(S1, WAN, 0.03), Mapped(S2, WAN, 0.05)]
    assert isinstance(got[2], Classified)
    assert got[2].result.mapping == "endpoint-independent"
    assert got[2].result.reflexive == WAN
    assert prober.result is got[2].result and prober.done
    assert prober.get_timer() is None


def test_retransmissions_double_up_to_the_cap_then_the_server_fails() -> None:
    prober = StunProber([S1], 0.0)
    sends: list[float] = []
    requests = set()
    now = 0.0
    while (timer := prober.get_timer()) is not None:
        now = max(now, timer)
        prober.handle_timer(now)
        for data, addr in prober.datagrams_to_send(now):
            assert addr == S1
            sends.append(now)
            requests.add(data)
    assert len(requests) == 1  # every retransmission is the same request, same transaction
    assert len(sends) == MAX_TRIES
    gaps = [b - a for a, b in itertools.pairwise(sends)]
    assert gaps == [min(RTO * 2**i, RTO_MAX) for i in range(MAX_TRIES - 1)]
    assert now == pytest.approx(sends[-1] + RTO_MAX)
    assert sends == pytest.approx([0.0, 0.25, 0.75, 1.75, 3.75, 5.75])
    got = events(prober)
    assert got[0] == ServerFailed(S1, "timeout")
    assert isinstance(got[1], Classified) and got[1].result.presence == "unknown"


def test_retransmissions_reuse_the_transaction_id_and_a_late_answer_counts() -> None:
    prober = StunProber([S1], 0.0)
    [(first, _)] = prober.datagrams_to_send(0.0)
    prober.handle_timer(RTO)
    [(second, _)] = prober.datagrams_to_send(RTO)
    assert first == second
    assert prober.receive_untrusted(answer(first, WAN), S1, RTO + 0.125)
    assert events(prober)[0] == Mapped(S1, WAN, 0.125)  # measured from the last transmission


def test_handle_timer_before_the_timer_does_nothing() -> None:
    prober = StunProber([S1], 0.0)
    prober.datagrams_to_send(0.0)
    prober.handle_timer(RTO / 2)
    assert prober.datagrams_to_send(RTO / 2) == []


def test_error_response_fails_the_server() -> None:
    prober = StunProber([S1, S2], 0.0)
    (r1, _), (r2, _) = prober.datagrams_to_send(0.0)
    assert prober.receive_untrusted(answer(r1, None, error=400), S1, 0.1)
    assert prober.receive_untrusted(answer(r2, WAN), S2, 0.1)
    got = events(prober)
    assert got[0] == ServerFailed(S1, "error 400")
    assert isinstance(got[2], Classified) and got[2].result.mapping == "unknown"


def test_success_without_an_address_fails_the_server() -> None:
    prober = StunProber([S1], 0.0)
    [(r1, _)] = prober.datagrams_to_send(0.0)
    assert prober.receive_untrusted(answer(r1, None), S1, 0.1)
    assert events(prober)[0] == ServerFailed(S1, "no mapped address")


def test_unexpected_answers_are_dropped_and_counted() -> None:
    prober = StunProber([S1, S2], 0.0)
    (r1, _), _ = prober.datagrams_to_send(0.0)
    stranger = binding_request(bytes(12))
    assert not prober.receive_untrusted(answer(stranger, WAN), S1, 0.1)
    assert not prober.receive_untrusted(answer(r1, WAN), S2, 0.1)  # S1's answer from S2
    assert not prober.receive_untrusted(r1, S1, 0.1)  # our own request reflected
    assert not prober.receive_untrusted(b"\x00" * 24, S1, 0.1)
    assert prober.receive_untrusted(answer(r1, WAN), S1, 0.1)
    assert not prober.receive_untrusted(answer(r1, WAN), S1, 0.2)  # a retransmission's answer
    assert prober.counters["drop_unknown_transaction"] == 1
    assert prober.counters["drop_wrong_source"] == 1
    assert prober.counters["drop_not_response"] == 1
    assert prober.counters["drop_stun_header"] == 1
    assert prober.counters["drop_duplicate"] == 1
    assert [type(e) for e in events(prober)] == [Mapped]


def test_source_addresses_compare_by_value() -> None:
    v6 = ("2001:db8::1", 3478)
    prober = StunProber([v6], 0.0)
    [(r1, _)] = prober.datagrams_to_send(0.0)
    assert prober.receive_untrusted(answer(r1, ("2001:db8::99", 9)), ("2001:DB8:0::1", 3478), 0.1)


def test_restart_probes_again_with_new_transaction_ids() -> None:
    prober = StunProber([S1], 0.0)
    [(old, _)] = prober.datagrams_to_send(0.0)
    prober.restart(100.0)
    [(new, _)] = prober.datagrams_to_send(100.0)
    assert old[8:20] != new[8:20]
    assert not prober.receive_untrusted(answer(old, WAN), S1, 100.1)
    assert prober.receive_untrusted(answer(new, WAN), S1, 100.1)


def test_other_address_adds_rfc5780_destinations_and_tells_port_dependence() -> None:
    prober = StunProber([S1, S2], 0.0)
    (r1, _), (r2, _) = prober.datagrams_to_send(0.0)
    alt = ("203.0.113.2", 3479)
    prober.receive_untrusted(answer(r1, ("203.0.113.11", 1001), other=alt), S1, 0.1)
    prober.receive_untrusted(answer(r2, ("203.0.113.11", 1002)), S2, 0.1)
    [(r3, to)] = prober.datagrams_to_send(0.1)  # S2 is already asked: only the alternate port
    assert to == alt
    assert prober.counters["other_address_probe"] == 1
    prober.receive_untrusted(answer(r3, ("203.0.113.11", 1003)), alt, 0.2)
    result = next(e for e in events(prober) if isinstance(e, Classified)).result
    assert result.mapping == "address-and-port-dependent"
    assert result.port_dependence_tested


def test_one_rfc5780_server_is_enough_to_classify() -> None:
    prober = StunProber([S1], 0.0)
    [(r1, _)] = prober.datagrams_to_send(0.0)
    prober.receive_untrusted(answer(r1, WAN, other=("203.0.113.2", 3479)), S1, 0.1)
    sent = prober.datagrams_to_send(0.1)
    assert [to for _, to in sent] == [("203.0.113.2", 3478), ("203.0.113.2", 3479)]
    for data, to in sent:
        prober.receive_untrusted(answer(data, WAN), to, 0.2)
    result = prober.result
    assert result is not None and result.mapping == "endpoint-independent"
    assert json.loads(json.dumps(result.as_dict()))["mapping"] == "endpoint-independent"


def test_a_local_mapped_address_means_no_nat() -> None:
    me = ("198.51.100.5", 4242)
    prober = StunProber([S1, S2], 0.0, local=[me], local_port=4242)
    for data, to in prober.datagrams_to_send(0.0):
        prober.receive_untrusted(answer(data, me), to, 0.1)
    assert prober.result is not None and prober.result.presence == "no-nat"


def test_no_servers_classifies_at_once_and_bad_settings_raise() -> None:
    prober = StunProber([], 0.0)
    assert prober.done and prober.get_timer() is None
    with pytest.raises(LocalError):
        StunProber([("stun.example.org", 3478)], 0.0)
    with pytest.raises(LocalError):
        StunProber([S1], 0.0, rto=0)
    with pytest.raises(LocalError):
        StunProber([S1], 0.0, max_tries=0)


@settings(max_examples=300)
@given(
    st.binary(max_size=120),
    st.one_of(addrs, st.tuples(st.text(max_size=10), st.integers())),
    st.booleans(),
)
def test_prober_never_raises_on_network_input(
    data: bytes, addr: tuple[str, int], with_header: bool
) -> None:
    prober = StunProber([S1], 0.0)
    [(r1, _)] = prober.datagrams_to_send(0.0)
    if with_header:
        body = data[: len(data) - len(data) % 4]
        data = struct.pack("!HH", 0x0101, len(body)) + r1[4:20] + body
    prober.receive_untrusted(data, addr, 0.1)
    prober.receive_untrusted(data, S1, 0.1)


def test_only_the_first_other_address_of_a_round_is_followed() -> None:
    prober = StunProber([S1, S2], 0.0)
    (r1, _), (r2, _) = prober.datagrams_to_send(0.0)
    prober.receive_untrusted(answer(r1, WAN, other=("203.0.113.2", 3479)), S1, 0.1)
    prober.receive_untrusted(answer(r2, WAN, other=("203.0.113.1", 3479)), S2, 0.1)
    assert [to for _, to in prober.datagrams_to_send(0.1)] == [("203.0.113.2", 3479)]
    assert prober.counters["other_address_probe"] == 1


def test_other_address_of_another_family_is_not_followed() -> None:
    prober = StunProber([S1], 0.0)
    [(r1, _)] = prober.datagrams_to_send(0.0)
    prober.receive_untrusted(answer(r1, WAN, other=("2001:db8::2", 3479)), S1, 0.1)
    assert prober.datagrams_to_send(0.1) == []
    assert prober.counters["other_address_unusable"] == 1
    assert prober.done


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(
            st.floats(0, 3, allow_nan=False),  # time step
            st.sampled_from(["timer", "answer", "error", "garbage", "wrong_source"]),
            st.integers(0, 1),  # which server
        ),
        max_size=40,
    )
)
def test_any_schedule_gives_each_server_one_outcome_and_one_classification(
    steps: list[tuple[float, str, int]],
) -> None:
    servers = [S1, S2]
    prober = StunProber(servers, 0.0)
    now, sent, got = 0.0, dict.fromkeys(servers, 0), []
    requests: dict[tuple[str, int], bytes] = {}

    def pump() -> None:
        for data, to in prober.datagrams_to_send(now):
            sent[to] += 1
            requests[to] = data
        got.extend(events(prober))

    pump()
    for step, action, index in steps:
        now += step
        server = servers[index]
        if action == "timer":
            timer = prober.get_timer()
            if timer is not None and timer <= now:
                prober.handle_timer(now)
        elif action == "garbage":
            prober.receive_untrusted(requests[server][:-4], server, now)
        else:
            data = answer(requests[server], WAN, error=400 if action == "error" else None)
            source = servers[1 - index] if action == "wrong_source" else server
            prober.receive_untrusted(data, source, now)
        pump()
    while (timer := prober.get_timer()) is not None:  # let the round run out
        now = max(now, timer)
        prober.handle_timer(now)
        pump()
    assert all(count <= MAX_TRIES for count in sent.values())
    outcomes = [e.server for e in got if isinstance(e, Mapped | ServerFailed)]
    assert sorted(outcomes) == sorted(servers)
    assert [type(e) for e in got].count(Classified) == 1
    assert isinstance(got[-1], Classified)
