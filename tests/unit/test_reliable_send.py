"""Send-side stream and sent-packet recovery: what is resent, acknowledged, or lost."""

from __future__ import annotations

import struct

import pytest

from p2pd.reliable._recovery import Recovery, SentPacket
from p2pd.reliable._rtt import RttEstimator
from p2pd.reliable._send import SendStream


def joined(pieces: list[memoryview]) -> bytes:
    return b"".join(pieces)


def test_messages_become_length_prefixed_records_in_one_stream() -> None:
    stream = SendStream()
    assert stream.push(b"ab", 0.0) == 0
    assert stream.push(b"", 0.0) == 1
    offset, length, pieces = stream.take_new(100, limit=1 << 20)
    assert (offset, length) == (0, 10)
    assert joined(pieces) == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 0)


def test_new_data_respects_the_peers_window() -> None:
    stream = SendStream()
    stream.push(b"x" * 1000, 0.0)
    _, length, _ = stream.take_new(600, limit=500)
    assert length == 500
    assert not stream.new_data_available(limit=500)
    assert stream.new_data_available(limit=501)


def test_a_range_can_be_read_again_for_retransmission() -> None:
    stream = SendStream()
    data = bytes(range(256)) * 8
    stream.push(data, 0.0)
    stream.push(b"tail", 0.0)
    while stream.new_data_available(1 << 20):
        stream.take_new(100, 1 << 20)
    full = struct.pack("<I", len(data)) + data + struct.pack("<I", 4) + b"tail"
    assert joined(stream.read(2000, 60)) == full[2000:2060]
    assert joined(stream.read(2, 50)) == full[2:52]


def test_out_of_order_acks_advance_snd_una_when_the_gap_fills() -> None:
    stream = SendStream()
    stream.push(b"y" * 296, 0.0)
    for _ in range(3):
        stream.take_new(100, 1 << 20)
    stream.on_acked(200, 100)
    stream.on_acked(100, 100)
    assert stream.snd_una == 0
    stream.on_acked(0, 100)
    assert stream.snd_una == 300
    assert list(stream.delivered(2.5)) == [(0, 2.5)]


def test_message_is_delivered_only_when_its_last_byte_is_acknowledged() -> None:
    stream = SendStream()
    stream.push(b"a" * 10, 1.0)
    stream.push(b"b" * 10, 1.0)
    stream.take_new(14, 1 << 20)
    stream.take_new(14, 1 << 20)
    stream.on_acked(0, 14)
    assert list(stream.delivered(2.0)) == [(0, 1.0)]
    stream.on_acked(14, 14)
    assert list(stream.delivered(3.0)) == [(1, 2.0)]


def test_lost_ranges_are_resent_lowest_first_and_skipped_once_acknowledged() -> None:
    stream = SendStream()
    stream.push(b"z" * 296, 0.0)
    for _ in range(3):
        stream.take_new(100, 1 << 20)
    stream.on_lost(200, 100)
    stream.on_lost(0, 100)
    stream.on_lost(100, 100)
    stream.on_acked(0, 100)
    assert stream.next_lost() == (100, 100)
    stream.pop_lost()
    assert stream.next_lost() == (200, 100)


def sent(recovery: Recovery, pn: int, now: float) -> SentPacket:
    packet = SentPacket(pn, now, 1200, [(pn * 1000, 1000)], close=False, window_used=True)
    recovery.on_sent(packet)
    return packet


def test_packet_threshold_declares_a_packet_three_below_the_largest_lost() -> None:
    recovery = Recovery(RttEstimator())
    for pn in range(5):
        sent(recovery, pn, 0.0)
    acked, lost = recovery.on_ack([(3, 4)], 0.0, 0.1)
    assert [p.pn for p in acked] == [3, 4]
    assert [p.pn for p in lost] == [0, 1]
    assert recovery.loss_time is not None


def test_time_threshold_declares_lost_after_nine_eighths_rtt() -> None:
    recovery = Recovery(RttEstimator())
    sent(recovery, 0, 0.0)
    sent(recovery, 1, 0.0)
    _, lost = recovery.on_ack([(1, 1)], 0.0, 0.1)
    assert lost == []
    assert recovery.loss_time == pytest.approx(9 / 8 * 0.1)
    assert recovery.detect_lost(0.11) == []
    assert [p.pn for p in recovery.detect_lost(9 / 8 * 0.1)] == [0]


def test_rtt_is_sampled_only_when_the_largest_acknowledged_is_new() -> None:
    rtt = RttEstimator()
    recovery = Recovery(rtt)
    sent(recovery, 0, 0.0)
    sent(recovery, 1, 0.05)
    recovery.on_ack([(0, 0)], 0.0, 0.1)
    assert rtt.srtt == pytest.approx(0.1)
    recovery.on_ack([(0, 0)], 0.0, 5.0)
    assert rtt.srtt == pytest.approx(0.1)


def test_old_ranges_repeated_in_every_ack_cost_nothing() -> None:
    recovery = Recovery(RttEstimator())
    for pn in range(1000):
        sent(recovery, pn, 0.0)
    recovery.on_ack([(0, 999)], 0.0, 0.1)
    sent(recovery, 1000, 0.2)
    acked, _ = recovery.on_ack([(0, 1000)], 0.0, 0.3)
    assert [p.pn for p in acked] == [1000]


def test_probe_timer_tries_a_tail_probe_before_the_backed_off_rto() -> None:
    rtt = RttEstimator()
    recovery = Recovery(rtt)
    sent(recovery, 0, 0.0)
    sent(recovery, 1, 0.0)
    recovery.on_ack([(0, 0)], 0.0, 0.1)
    deadline = recovery.pto_deadline()
    assert deadline is not None
    assert deadline < rtt.rto
    assert recovery.on_probe_timeout() is False
    assert rtt.backoff == 0
    assert recovery.on_probe_timeout() is True
    assert rtt.backoff == 1


def test_losses_spanning_three_probe_timeouts_are_persistent_congestion() -> None:
    rtt = RttEstimator()
    recovery = Recovery(rtt)
    sent(recovery, 0, 0.0)
    recovery.on_ack([(0, 0)], 0.0, 0.1)
    for pn in range(1, 6):
        sent(recovery, pn, 0.1 + pn * 0.5)
    sent(recovery, 6, 3.1)
    _, lost = recovery.on_ack([(6, 6)], 0.0, 3.2)
    assert [p.pn for p in lost] == [1, 2, 3, 4, 5]
    assert recovery.persistent_congestion
