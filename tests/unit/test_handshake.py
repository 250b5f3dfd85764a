"""The p2pd handshake: XXpsk3 in INIT/RESP/FINISH packets, and what each side refuses."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pd import derive, wire
from p2pd.cookie import CookieChecker, CookieJar, compute_mac1, stamp
from p2pd.errors import BadFrame, LocalError
from p2pd.handshake import (
    PROLOGUE,
    InitiatorHandshake,
    ResponderHandshake,
    msg1_payload_tag,
)
from p2pd.identity import Identity
from p2pd.noise import PROTOCOL_NAME, HandshakeState, NoiseError
from p2pd.session import Session
from p2pd.tags import epoch_of, make_tag

PARAMS = derive.params_from_master(b"\x01" * 32)
WALL = 1_700_000_000.0
SOURCE = ("192.0.2.1", 40001)


def ident(seed: int) -> Identity:
    return Identity.from_private(random.Random(seed).randbytes(32))


ALICE, BOB = ident(1), ident(2)


def jar() -> CookieJar:
    return CookieJar(PARAMS.mac1_key, PARAMS.cookie_key)


def start(
    params: derive.Params = PARAMS, initiator: Identity = ALICE, cookie_jar: CookieJar | None = None
) -> InitiatorHandshake:
    return InitiatorHandshake(
        params,
        initiator,
        11,
        now=0.0,
        wall_time=WALL,
        cookie_jar=cookie_jar or jar(),
        rng=random.Random(3).randbytes,
    )


def respond(
    init: bytes, params: derive.Params = PARAMS, responder: Identity = BOB
) -> ResponderHandshake:
    return ResponderHandshake(
        params, responder, 22, init, now=0.1, wall_time=WALL, rng=random.Random(4).randbytes
    )


def test_prologue_names_the_protocol_version() -> None:
    assert PROLOGUE == b"p2pd v1"


def test_a_full_exchange_gives_matching_keypairs_and_each_others_static_key() -> None:
    ini = start()
    res = respond(ini.init_packet())
    finish, ikp, bob_public = ini.consume_resp_untrusted(res.resp_packet(), 0.2, WALL)
    rkp, alice_public = res.consume_finish_untrusted(finish, 0.3)
    assert (bob_public, alice_public) == (BOB.public, ALICE.public)
    assert (ikp.send_key, ikp.recv_key) == (rkp.recv_key, rkp.send_key)
    assert (ikp.local_index, ikp.remote_index) == (11, 22)
    assert (rkp.local_index, rkp.remote_index) == (22, 11)
    assert ikp.is_initiator and not rkp.is_initiator
    assert (ikp.created_at, rkp.created_at) == (0.2, 0.3)


def test_packets_have_the_documented_sizes_types_and_indices() -> None:
    ini = start()
    res = respond(ini.init_packet())
    finish, _, _ = ini.consume_resp_untrusted(res.resp_packet(), 0.2, WALL)
    init_msg = wire.parse_untrusted(ini.init_packet())
    resp_msg = wire.parse_untrusted(res.resp_packet())
    fin_msg = wire.parse_untrusted(finish)
    assert isinstance(init_msg, wire.HandshakeInit) and init_msg.sender_index == 11
    assert isinstance(resp_msg, wire.HandshakeResp)
    assert (resp_msg.sender_index, resp_msg.receiver_index) == (22, 11)
    assert isinstance(fin_msg, wire.HandshakeFinish)
    assert (fin_msg.sender_index, fin_msg.receiver_index) == (11, 22)
    sizes = [len(p) for p in (ini.init_packet(), res.resp_packet(), finish)]
    assert sizes == [88, 156, 124]


def test_every_packet_carries_the_epoch_tag_and_a_valid_mac1() -> None:
    ini = start()
    res = respond(ini.init_packet())
    finish, _, _ = ini.consume_resp_untrusted(res.resp_packet(), 0.2, WALL)
    tag = make_tag(PARAMS.tag_key, epoch_of(WALL))
    for packet in (ini.init_packet(), res.resp_packet(), finish):
        msg = wire.parse_untrusted(packet)
        assert not isinstance(msg, wire.DataMessage | wire.CookieReply)
        assert msg.tag == tag
        assert msg.mac1 == compute_mac1(PARAMS.mac1_key, packet)
        assert msg.mac2 == wire.ZERO_MAC


@given(seed=st.integers(0, 2**32))
def test_msg1_payload_tag_is_the_tag_noise_appends_to_message_one(seed: int) -> None:
    hs = HandshakeState(
        PROTOCOL_NAME,
        initiator=True,
        prologue=PROLOGUE,
        s=ALICE.private,
        psks=[PARAMS.psk],
        rng=random.Random(seed).randbytes,
    )
    msg1 = hs.write_message()
    assert len(msg1) == wire.NOISE_MSG1_SIZE + 16
    assert msg1_payload_tag(msg1[: wire.NOISE_MSG1_SIZE]) == msg1[wire.NOISE_MSG1_SIZE :]


def test_init_mac2_uses_the_cookie_the_jar_holds() -> None:
    cookie_jar = jar()
    checker = CookieChecker(PARAMS.mac1_key, PARAMS.cookie_key, random.Random(5).randbytes)
    first = start(cookie_jar=cookie_jar).init_packet()
    assert not checker.check_mac2(first, SOURCE, 1.0)
    cookie_jar.consume_reply_untrusted(checker.make_reply(first, SOURCE, 11, 1.0), 1.0)
    second = InitiatorHandshake(
        PARAMS, ALICE, 12, now=2.0, wall_time=WALL, cookie_jar=cookie_jar
    ).init_packet()
    assert checker.check_mac2(second, SOURCE, 2.0)


def test_a_wrong_passphrase_fails_at_finish_with_a_bare_noise_error() -> None:
    other = dataclasses.replace(PARAMS, psk=bytes(32))  # same tags and MACs: only Noise differs
    ini = start(params=other)
    res = respond(ini.init_packet())
    finish, _, _ = ini.consume_resp_untrusted(res.resp_packet(), 0.2, WALL)
    with pytest.raises(NoiseError) as info:
        res.consume_finish_untrusted(finish, 0.3)
    assert info.value.reason == "bad_handshake" and res.failed
    with pytest.raises(LocalError):
        res.consume_finish_untrusted(finish, 0.3)


def test_a_handshake_with_our_own_static_key_is_refused() -> None:
    ini = start()
    res = respond(ini.init_packet(), responder=ALICE)
    with pytest.raises(BadFrame) as info:
        ini.consume_resp_untrusted(res.resp_packet(), 0.2, WALL)
    assert info.value.reason == "self" and ini.failed


def test_a_damaged_copy_before_noise_leaves_the_handshake_usable() -> None:
    ini = start()
    res = respond(ini.init_packet())
    resp = res.resp_packet()
    for damaged, reason in (
        (resp[:-20] + bytes([resp[-20] ^ 1]) + resp[-19:], "drop_mac1"),
        (resp[:8] + (99).to_bytes(4, "little") + resp[12:], "unknown_index"),
        (resp[:-1], "shorter"),
    ):
        with pytest.raises(BadFrame) as info:
            ini.consume_resp_untrusted(damaged, 0.2, WALL)
        assert reason == "shorter" or info.value.reason == reason
    finish, _, _ = ini.consume_resp_untrusted(resp, 0.2, WALL)
    res.consume_finish_untrusted(finish, 0.3)


def test_a_finish_from_another_sender_index_is_refused() -> None:
    ini = start()
    res = respond(ini.init_packet())
    finish, _, _ = ini.consume_resp_untrusted(res.resp_packet(), 0.2, WALL)
    forged = stamp(finish[:4] + (12).to_bytes(4, "little") + finish[8:], PARAMS.mac1_key, None)
    with pytest.raises(BadFrame) as info:
        res.consume_finish_untrusted(forged, 0.3)
    assert info.value.reason == "index_mismatch" and not res.failed


def test_the_wrong_packet_type_is_refused() -> None:
    ini = start()
    res = respond(ini.init_packet())
    with pytest.raises(BadFrame):
        ini.consume_resp_untrusted(ini.init_packet(), 0.2, WALL)
    with pytest.raises(BadFrame):
        res.consume_finish_untrusted(res.resp_packet(), 0.3)
    with pytest.raises(BadFrame):
        respond(res.resp_packet())


def test_an_init_with_a_small_order_ephemeral_is_refused() -> None:
    body = wire.HandshakeInit(7, make_tag(PARAMS.tag_key, epoch_of(WALL)), bytes(32)).encode()
    with pytest.raises(NoiseError):
        respond(stamp(body, PARAMS.mac1_key, None))


@settings(max_examples=200)
@given(which=st.sampled_from(["resp", "finish"]), bit=st.integers(0, 124 * 8 - 1))
def test_any_flipped_bit_before_mac2_is_refused(which: str, bit: int) -> None:
    ini = start()
    res = respond(ini.init_packet())
    packet = res.resp_packet()
    if which == "finish":
        packet, _, _ = ini.consume_resp_untrusted(packet, 0.2, WALL)
    bit %= (len(packet) - wire.MAC_SIZE) * 8
    damaged = bytearray(packet)
    damaged[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(BadFrame):
        if which == "resp":
            ini.consume_resp_untrusted(bytes(damaged), 0.2, WALL)
        else:
            res.consume_finish_untrusted(bytes(damaged), 0.3)


def test_the_keypairs_carry_data_through_sessions() -> None:
    ini = start()
    res = respond(ini.init_packet())
    finish, ikp, _ = ini.consume_resp_untrusted(res.resp_packet(), 0.2, WALL)
    rkp, _ = res.consume_finish_untrusted(finish, 0.3)
    alice, bob = Session(), Session()
    alice.install(ikp, 0.3)
    bob.install(rkp, 0.3)
    assert bob.open_untrusted(alice.seal(b"hi bob", 0.4), 0.4) == b"hi bob"
    assert alice.open_untrusted(bob.seal(b"hi alice", 0.5), 0.5) == b"hi alice"


def test_local_index_out_of_range_is_a_local_error() -> None:
    with pytest.raises(LocalError):
        InitiatorHandshake(PARAMS, ALICE, 2**32, now=0.0, wall_time=WALL, cookie_jar=jar())
