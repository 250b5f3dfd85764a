"""Data sessions: sealing, opening, replay defence and key rotation, with hand-made keypairs."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.bindings import crypto_aead_chacha20poly1305_ietf_encrypt

from p2pd import session as sess
from p2pd import wire
from p2pd.errors import BadFrame
from p2pd.replay import WINDOW_SIZE
from p2pd.session import (
    InvalidKeypair,
    Keypair,
    NoSessionKeys,
    Session,
    SessionLimits,
)

#: Small limits so that rekey and expiry happen within a test.
SMALL = SessionLimits(
    rekey_after_messages=50,
    reject_after_messages=80,
    rekey_after_time=12.0,
    reject_after_time=20.0,
    rekey_timeout=1.0,
    keepalive_timeout=2.0,
)


def keypairs(seed: int, now: float, a_index: int = 1, b_index: int = 2) -> tuple[Keypair, Keypair]:
    """Matching keypairs for initiator A and responder B, as a Noise split would give."""
    rng = random.Random(seed)
    k1, k2 = rng.randbytes(32), rng.randbytes(32)
    a = Keypair(k1, k2, a_index, b_index, created_at=now, is_initiator=True)
    b = Keypair(k2, k1, b_index, a_index, created_at=now, is_initiator=False)
    return a, b


def connected(limits: SessionLimits | None = None, now: float = 0.0) -> tuple[Session, Session]:
    """A (initiator) and B (responder) with one keypair installed, B's still unconfirmed."""
    alice, bob = Session(limits), Session(limits)
    ka, kb = keypairs(0, now)
    alice.install(ka, now)
    bob.install(kb, now)
    return alice, bob


def payload(i: int) -> bytes:
    return b"msg-%d-" % i + bytes(i % 7)


def test_sealed_packet_opens_to_the_plaintext() -> None:
    alice, bob = connected()
    assert bob.open_untrusted(alice.seal(b"hello", 1.0), 1.0) == b"hello"


def test_keepalive_opens_to_empty_bytes_and_is_the_minimum_size() -> None:
    alice, bob = connected()
    packet = alice.seal(b"", 1.0)
    assert len(packet) == wire.DATA_MIN_SIZE
    assert bob.open_untrusted(packet, 1.0) == b""


def test_ciphertext_uses_the_documented_nonce_and_associated_data() -> None:
    alice, _ = connected()
    assert alice.current is not None
    key = alice.current.send_key
    alice.seal(b"skip", 1.0)
    packet = alice.seal(b"abc", 1.0)
    header = b"\x04\x00\x00\x00" + (2).to_bytes(4, "little") + (1).to_bytes(8, "little")
    nonce = bytes(4) + (1).to_bytes(8, "little")
    expected = crypto_aead_chacha20poly1305_ietf_encrypt(b"abc", header, nonce, key)
    assert packet == header + expected


def test_packet_carries_peer_index_and_increasing_counter() -> None:
    alice, _ = connected()
    first, second = alice.seal(b"a", 1.0), alice.seal(b"b", 1.0)
    msg1, msg2 = wire.parse_untrusted(first), wire.parse_untrusted(second)
    assert isinstance(msg1, wire.DataMessage) and isinstance(msg2, wire.DataMessage)
    assert (msg1.receiver_index, msg1.counter, msg2.counter) == (2, 0, 1)


def test_responder_keypair_waits_in_next_until_first_data_confirms_it() -> None:
    alice, bob = connected()
    assert bob.current is None and bob.next is not None
    with pytest.raises(NoSessionKeys):
        bob.seal(b"too early", 1.0)
    bob.open_untrusted(alice.seal(b"", 1.0), 1.0)
    assert bob.current is not None and bob.next is None
    assert alice.open_untrusted(bob.seal(b"reply", 1.0), 1.0) == b"reply"


# Each entry: (packet number, delay). Packets missing from the list are lost, repeated
# ones are duplicated, and delivery order is by number + delay, so at most MAX_DELAY
# out of order: well within the replay window.
MAX_DELAY = 40
schedules = st.lists(st.tuples(st.integers(0, 59), st.integers(0, MAX_DELAY)), max_size=150)


@settings(max_examples=150)
@given(schedules)
def test_loss_duplication_and_reordering_deliver_each_fresh_packet_once(
    schedule: list[tuple[int, int]],
) -> None:
    alice, bob = connected()
    packets = [alice.seal(payload(i), 1.0) for i in range(60)]
    delivered: set[int] = set()
    for i, _ in sorted(schedule, key=lambda entry: entry[0] + entry[1]):
        if i in delivered:
            with pytest.raises(BadFrame):
                bob.open_untrusted(packets[i], 2.0)
        else:
            assert bob.open_untrusted(packets[i], 2.0) == payload(i)
            delivered.add(i)
    assert delivered == {i for i, _ in schedule}


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 3)), max_size=80), st.randoms())
def test_both_directions_interleaved_deliver_in_any_order(
    plan: list[tuple[bool, int]], rnd: random.Random
) -> None:
    alice, bob = connected()
    bob.open_untrusted(alice.seal(b"", 0.5), 0.5)
    in_flight: list[tuple[Session, bytes, bytes]] = []
    for n, (from_alice, copies) in enumerate(plan):
        sender, receiver = (alice, bob) if from_alice else (bob, alice)
        body = payload(n)
        packet = sender.seal(body, 1.0)
        in_flight.extend([(receiver, packet, body)] * copies)
    rnd.shuffle(in_flight)
    opened: set[bytes] = set()
    for receiver, packet, body in in_flight:
        if packet in opened:
            with pytest.raises(BadFrame):
                receiver.open_untrusted(packet, 2.0)
        else:
            assert receiver.open_untrusted(packet, 2.0) == body
            opened.add(packet)


@given(st.binary(max_size=64), st.data())
def test_a_flipped_bit_anywhere_is_rejected_and_does_not_move_the_window(
    body: bytes, data: st.DataObject
) -> None:
    alice, bob = connected()
    packet = alice.seal(body, 1.0)
    bit = data.draw(st.integers(0, 8 * len(packet) - 1))
    forged = bytearray(packet)
    forged[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(BadFrame):
        bob.open_untrusted(bytes(forged), 1.0)
    assert bob.current is None
    assert bob.open_untrusted(packet, 1.0) == body


def test_forged_packet_far_ahead_does_not_push_genuine_ones_out_of_the_window() -> None:
    alice, bob = connected()
    genuine = alice.seal(b"x", 1.0)
    forged = wire.DataMessage(2, 2**40, bytes(32)).encode()
    with pytest.raises(BadFrame, match="authentication"):
        bob.open_untrusted(forged, 1.0)
    assert bob.open_untrusted(genuine, 1.0) == b"x"


def test_packet_older_than_the_window_is_rejected() -> None:
    alice, bob = connected()
    old = alice.seal(b"old", 1.0)
    packets = [alice.seal(b"", 1.0) for _ in range(WINDOW_SIZE + 2)]
    bob.open_untrusted(packets[-1], 1.0)
    with pytest.raises(BadFrame, match="replayed or too old"):
        bob.open_untrusted(old, 1.0)


def test_unknown_receiver_index_is_rejected() -> None:
    alice, _ = connected()
    _, stranger = connected()
    packet = wire.DataMessage(99, 0, bytes(16)).encode()
    with pytest.raises(BadFrame, match="unknown receiver index"):
        stranger.open_untrusted(packet, 1.0)
    assert alice.local_indices() == {1}


def test_handshake_packet_given_to_open_is_rejected() -> None:
    _, bob = connected()
    with pytest.raises(BadFrame, match="not a DATA packet"):
        bob.open_untrusted(wire.HandshakeInit(2, bytes(16), bytes(32)).encode(), 1.0)


def rekeyed(now: float) -> tuple[Session, Session, list[bytes], list[bytes]]:
    """Traffic under keypair 1, then a rekey at ``now``, then traffic under keypair 2."""
    alice, bob = connected(SMALL)
    bob.open_untrusted(alice.seal(b"", 0.0), 0.0)
    old = [alice.seal(b"old-%d" % i, 1.0) for i in range(SMALL.rekey_after_messages - 1)]
    assert alice.needs_rekey(1.0)
    ka, kb = keypairs(1, now, a_index=3, b_index=4)
    assert alice.install(ka, now) == []
    assert bob.install(kb, now) == []
    new = [alice.seal(b"new-%d" % i, now) for i in range(20)]
    assert not alice.needs_rekey(now)
    return alice, bob, old, new


@given(st.randoms(), st.floats(2.0, SMALL.reject_after_time - 0.01))
def test_rekey_under_traffic_accepts_late_old_packets_within_the_grace_window(
    rnd: random.Random, later: float
) -> None:
    _, bob, old, new = rekeyed(now=2.0)
    mixed = old + new
    rnd.shuffle(mixed)
    opened = [bob.open_untrusted(packet, later) for packet in mixed]
    expected = [b"old-%d" % i for i in range(49)] + [b"new-%d" % i for i in range(20)]
    assert sorted(opened) == sorted(expected)
    assert bob.current is not None and bob.current.local_index == 4
    assert bob.previous is not None and bob.previous.local_index == 2


def test_old_keypair_packets_are_rejected_once_past_reject_after_time() -> None:
    _, bob, old, new = rekeyed(now=2.0)
    bob.open_untrusted(new[0], 3.0)
    assert bob.open_untrusted(old[0], SMALL.reject_after_time - 0.5) == b"old-0"
    with pytest.raises(BadFrame, match="keypair expired"):
        bob.open_untrusted(old[1], SMALL.reject_after_time)
    assert bob.open_untrusted(new[1], SMALL.reject_after_time) == b"new-1"


def test_expire_drops_and_wipes_dead_keypairs_and_reports_their_indices() -> None:
    _, bob, old, new = rekeyed(now=2.0)
    bob.open_untrusted(new[0], 3.0)
    previous = bob.previous
    assert previous is not None
    assert bob.get_timer() == SMALL.reject_after_time
    assert bob.expire(SMALL.reject_after_time - 0.1) == []
    assert bob.expire(SMALL.reject_after_time) == [2]
    assert bob.previous is None and bob.local_indices() == {4}
    assert previous.recv_key == bytes(32) and previous.send_key == bytes(32)
    with pytest.raises(BadFrame, match="unknown receiver index"):
        bob.open_untrusted(old[0], SMALL.reject_after_time)
    assert bob.get_timer() == 2.0 + SMALL.reject_after_time


def test_seal_refuses_at_reject_after_messages() -> None:
    alice, _ = connected(SMALL)
    for _ in range(SMALL.reject_after_messages):
        alice.seal(b"", 1.0)
    with pytest.raises(NoSessionKeys):
        alice.seal(b"", 1.0)
    assert not alice.can_send(1.0)


def test_seal_refuses_at_the_real_reject_after_messages() -> None:
    alice, _ = connected()
    assert alice.current is not None
    alice.current.send_counter = sess.REJECT_AFTER_MESSAGES - 1
    alice.seal(b"last", 1.0)
    with pytest.raises(NoSessionKeys):
        alice.seal(b"", 1.0)


def test_seal_refuses_a_keypair_past_reject_after_time() -> None:
    alice, _ = connected(SMALL)
    alice.seal(b"", SMALL.reject_after_time - 0.01)
    with pytest.raises(NoSessionKeys):
        alice.seal(b"", SMALL.reject_after_time)


def test_seal_refuses_without_any_keypair() -> None:
    with pytest.raises(NoSessionKeys):
        Session().seal(b"", 0.0)


def test_open_rejects_counters_at_reject_after_messages() -> None:
    alice, _ = connected()
    bob = Session(SMALL)
    _, kb = keypairs(0, 0.0)
    bob.install(kb, 0.0)
    assert alice.current is not None
    alice.current.send_counter = SMALL.reject_after_messages
    with pytest.raises(BadFrame, match="REJECT_AFTER_MESSAGES"):
        bob.open_untrusted(alice.seal(b"", 1.0), 1.0)


def test_initiator_needs_rekey_after_rekey_after_time() -> None:
    alice, _ = connected()
    assert not alice.needs_rekey(sess.REKEY_AFTER_TIME - 0.01)
    assert alice.needs_rekey(sess.REKEY_AFTER_TIME)


def test_responder_waits_until_reject_minus_keepalive_minus_rekey_timeout() -> None:
    alice, bob = connected()
    bob.open_untrusted(alice.seal(b"", 1.0), 1.0)
    backstop = sess.REJECT_AFTER_TIME - sess.KEEPALIVE_TIMEOUT - sess.REKEY_TIMEOUT
    assert backstop == 165.0
    assert not bob.needs_rekey(sess.REKEY_AFTER_TIME)
    assert not bob.needs_rekey(backstop - 0.01)
    assert bob.needs_rekey(backstop)


def test_either_side_needs_rekey_after_rekey_after_messages() -> None:
    alice, bob = connected(SMALL)
    bob.open_untrusted(alice.seal(b"", 0.0), 0.0)
    for _ in range(SMALL.rekey_after_messages - 1):
        bob.seal(b"", 0.0)
    assert not bob.needs_rekey(0.0)
    bob.seal(b"", 0.0)
    assert bob.needs_rekey(0.0)


def test_no_current_keypair_needs_no_rekey() -> None:
    assert not Session().needs_rekey(1000.0)


def test_initiator_install_retires_the_old_previous() -> None:
    alice, _ = connected(SMALL)
    assert alice.install(keypairs(1, 1.0, 3, 4)[0], 1.0) == []
    assert alice.install(keypairs(2, 2.0, 5, 6)[0], 2.0) == [1]
    assert alice.local_indices() == {3, 5}


def test_initiator_install_over_a_pending_next_keeps_next_as_previous() -> None:
    alice, bob = connected(SMALL)
    bob.open_untrusted(alice.seal(b"", 0.0), 0.0)
    bob.install(keypairs(1, 1.0, 3, 4)[1], 1.0)
    retired = bob.install(keypairs(2, 2.0, 6, 5)[0], 2.0)
    assert retired == [2]
    assert bob.previous is not None and bob.previous.local_index == 4
    assert bob.current is not None and bob.current.local_index == 6
    assert bob.next is None


def test_responder_install_replaces_next_and_drops_previous() -> None:
    alice, bob = connected(SMALL)
    bob.open_untrusted(alice.seal(b"", 0.0), 0.0)
    bob.install(keypairs(1, 1.0, 3, 4)[1], 1.0)
    assert bob.install(keypairs(2, 2.0, 5, 6)[1], 2.0) == [4]
    assert bob.local_indices() == {2, 6}


def test_install_refuses_a_local_index_already_in_use() -> None:
    alice, _ = connected()
    with pytest.raises(InvalidKeypair):
        alice.install(keypairs(1, 1.0, a_index=1)[0], 1.0)


def test_keypairs_from_the_same_split_talk_to_each_other() -> None:
    i2r, r2i = bytes(range(32)), bytes(range(32, 64))
    alice, bob = Session(), Session()
    alice.install(
        Keypair.from_split(i2r, r2i, is_initiator=True, local_index=7, remote_index=9, now=0.0),
        0.0,
    )
    bob.install(
        Keypair.from_split(i2r, r2i, is_initiator=False, local_index=9, remote_index=7, now=0.0),
        0.0,
    )
    assert bob.open_untrusted(alice.seal(b"ping", 1.0), 1.0) == b"ping"
    assert alice.open_untrusted(bob.seal(b"pong", 1.0), 1.0) == b"pong"


def test_keypair_refuses_short_keys() -> None:
    with pytest.raises(InvalidKeypair):
        Keypair(bytes(31), bytes(32), 1, 2, created_at=0.0, is_initiator=True)


def test_keys_never_appear_in_repr() -> None:
    alice, _ = connected()
    assert alice.current is not None
    text = repr(alice) + repr(alice.current) + str(alice.current)
    for key in (alice.current.send_key, alice.current.recv_key):
        assert repr(key) not in text
        assert key.hex() not in text
    assert "local_index=1" in text
