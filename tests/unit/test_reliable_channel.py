"""The reliable channel end to end, over the simulated lossy network of test_reliable_sim."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_reliable_sim import Endpoint, LinkConfig, Network

from p2pd.errors import BadFrame, LocalError
from p2pd.reliable import (
    IDLE_TIMEOUT,
    MAX_MESSAGE_SIZE,
    Channel,
    ChannelConfig,
    MessageDelivered,
    MessageReceived,
    State,
)
from p2pd.reliable._config import INITIAL_WINDOW
from p2pd.reliable._frames import PACKET_HEADER, encode_ack

MIB = 1024 * 1024


def payloads(seed: int, sizes: list[int]) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(size) for size in sizes]


def send_all(net: Network, endpoint: Endpoint, messages: list[bytes]) -> list[int]:
    return [endpoint.channel.send_message(m, net.now) for m in messages]


def lossy(loss: float, reorder: float = 0.0, duplicate: float = 0.0) -> LinkConfig:
    return LinkConfig(delay=0.02, loss=loss, reorder=reorder, jitter=0.03, duplicate=duplicate)


def close_both(net: Network, max_time: float) -> None:
    net.a.channel.close(net.now)
    net.run(lambda: bool(net.a.closed and net.b.closed), max_time)


sizes = st.lists(st.one_of(st.integers(0, 3000), st.integers(0, 300_000)), max_size=6).filter(
    lambda s: sum(s) <= 400_000
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@example(
    loss=0.2, reorder=0.3, duplicate=0.1, a_sizes=[300_000, 0, 1], b_sizes=[99_999] * 4, seed=1
)
@given(
    loss=st.floats(0.0, 0.2),
    reorder=st.floats(0.0, 0.3),
    duplicate=st.floats(0.0, 0.1),
    a_sizes=sizes,
    b_sizes=sizes,
    seed=st.integers(0, 2**32 - 1),
)
def test_messages_arrive_exactly_once_in_order_and_intact_both_ways(
    loss: float, reorder: float, duplicate: float, a_sizes: list[int], b_sizes: list[int], seed: int
) -> None:
    link = lossy(loss, reorder, duplicate)
    net = Network(link, link, seed=seed)
    a_messages = payloads(seed, a_sizes)
    b_messages = payloads(seed + 1, b_sizes)
    assert send_all(net, net.a, a_messages) == list(range(len(a_messages)))
    assert send_all(net, net.b, b_messages) == list(range(len(b_messages)))
    net.run_until_delivered(len(a_messages), len(b_messages), max_time=3600)
    close_both(net, max_time=net.now + 600)
    assert net.b.received == a_messages
    assert net.a.received == b_messages
    assert net.a.delivered == list(range(len(a_messages)))
    assert net.b.delivered == list(range(len(b_messages)))
    assert net.a.closed == net.b.closed == ["closed"]


def test_a_16_mib_message_survives_10_percent_loss() -> None:
    link = LinkConfig(delay=0.01, loss=0.10)
    net = Network(link, link, seed=16)
    (message,) = payloads(16, [16 * MIB])
    net.a.channel.send_message(message, 0.0)
    net.run_until_delivered(1, 0, max_time=3600)
    assert len(net.b.received) == 1
    assert net.b.received[0] == message
    assert net.a.delivered == [0]


def test_message_delivered_reports_about_one_round_trip_for_a_small_message() -> None:
    net = Network(LinkConfig(delay=0.05), LinkConfig(delay=0.05))
    net.a.channel.send_message(b"hello", 0.0)
    net.run_until_delivered(1, 0, max_time=5)
    (rtt,) = net.a.delivery_rtts
    assert 0.1 <= rtt <= 0.1 + 0.025 + 0.002


def test_zero_length_messages_are_delivered() -> None:
    net = Network()
    send_all(net, net.a, [b"", b"x", b""])
    net.run_until_delivered(3, 0, max_time=5)
    assert net.b.received == [b"", b"x", b""]


def test_no_event_is_repeated_after_delivery() -> None:
    link = lossy(0.1, reorder=0.2, duplicate=0.2)
    net = Network(link, link, seed=5)
    messages = payloads(5, [5000] * 20)
    send_all(net, net.a, messages)
    net.run_until_delivered(20, 0, max_time=600)
    net.run(lambda: net.now >= 60, max_time=120)
    assert net.b.received == messages
    assert net.a.delivered == list(range(20))


def test_sender_never_exceeds_the_receivers_window() -> None:
    config = ChannelConfig(recv_window=INITIAL_WINDOW)
    link = lossy(0.05, reorder=0.3)
    net = Network(link, link, seed=9, config=config)
    (message,) = payloads(9, [4 * MIB])
    net.a.channel.send_message(message, 0.0)
    peaks: list[int] = []
    net.on_step = lambda n: peaks.append(int(n.b.channel.stats["recv_pending"]))
    net.run_until_delivered(1, 0, max_time=3600)
    assert net.b.received == [message]
    assert max(peaks) <= INITIAL_WINDOW
    assert net.b.bad_frames == 0


def test_too_big_message_is_a_local_error() -> None:
    channel = Channel(now=0.0)

    class Huge(bytes):
        def __len__(self) -> int:
            return MAX_MESSAGE_SIZE + 1

    with pytest.raises(LocalError):
        channel.send_message(Huge(), 0.0)


def test_sending_after_close_is_a_local_error() -> None:
    channel = Channel(now=0.0)
    channel.close(0.0)
    with pytest.raises(LocalError):
        channel.send_message(b"late", 0.0)


def test_sending_after_the_peer_closed_is_a_local_error() -> None:
    net = Network()
    net.a.channel.close(0.0)
    net.run(lambda: net.b.channel.state is not State.OPEN, max_time=1)
    with pytest.raises(LocalError):
        net.b.channel.send_message(b"late", net.now)


def test_close_delivers_everything_queued_on_both_sides_first() -> None:
    link = lossy(0.1)
    net = Network(link, link, seed=3)
    a_messages = payloads(1, [20_000] * 5)
    b_messages = payloads(2, [30_000] * 3)
    send_all(net, net.a, a_messages)
    send_all(net, net.b, b_messages)
    net.a.channel.close(0.0)
    net.run(lambda: bool(net.a.closed and net.b.closed), max_time=600)
    assert net.b.received == a_messages
    assert net.a.received == b_messages
    assert net.a.delivered == list(range(5))
    assert net.b.delivered == list(range(3))
    assert net.a.closed == net.b.closed == ["closed"]


def test_closed_channels_terminate_after_lingering() -> None:
    net = Network()
    net.a.channel.send_message(b"bye", 0.0)
    close_both(net, max_time=5)
    net.run(
        lambda: net.a.channel.get_timer() is None and net.b.channel.get_timer() is None,
        max_time=net.now + 10,
    )
    assert net.a.channel.state is net.b.channel.state is State.TERMINATED
    assert net.a.closed == net.b.closed == ["closed"]
    assert net.a.channel.datagrams_to_send(net.now) == []


def test_both_sides_close_when_the_last_ack_of_a_close_is_lost() -> None:
    net = Network(LinkConfig(delay=0.02), LinkConfig(delay=0.02))
    dropped: list[bytes] = []
    original = net.link(net.a).transmit

    def transmit(now: float, size: int) -> list[float]:
        if net.a.closed and not dropped:
            dropped.append(b"x")
            return []
        return original(now, size)

    net.link(net.a).transmit = transmit  # type: ignore[method-assign]
    net.b.channel.close(0.0)
    net.run(lambda: bool(net.a.closed and net.b.closed), max_time=10)
    assert dropped
    assert net.a.closed == net.b.closed == ["closed"]


def test_close_completes_after_a_long_outage_of_the_return_path() -> None:
    net = Network(LinkConfig(delay=0.02), LinkConfig(delay=0.02))
    original = net.link(net.b).transmit

    def transmit(now: float, size: int) -> list[float]:
        return [] if now < 15.0 else original(now, size)

    net.link(net.b).transmit = transmit  # type: ignore[method-assign]
    net.a.channel.close(0.0)
    net.run(lambda: bool(net.a.closed and net.b.closed), max_time=60)
    assert net.now > 15.0
    assert net.a.closed == net.b.closed == ["closed"]


def test_close_is_idempotent() -> None:
    net = Network()
    net.a.channel.close(0.0)
    net.a.channel.close(0.0)
    net.run(lambda: bool(net.a.closed and net.b.closed), max_time=5)
    net.a.channel.close(net.now)
    assert net.a.closed == ["closed"]


def test_idle_timeout_fires_when_the_peer_goes_silent() -> None:
    dead = LinkConfig(loss=1.0)
    net = Network(dead, dead)
    net.a.channel.send_message(b"anyone?", 0.0)
    net.run(lambda: bool(net.a.closed), max_time=IDLE_TIMEOUT + 1)
    assert net.a.closed == ["idle"]
    assert net.now == pytest.approx(IDLE_TIMEOUT)
    assert net.a.channel.get_timer() is None


def test_keepalives_keep_an_idle_channel_open() -> None:
    net = Network()
    net.run(lambda: net.now >= 10 * IDLE_TIMEOUT, max_time=11 * IDLE_TIMEOUT)
    assert net.a.closed == net.b.closed == []
    sent = net.a.channel.stats["packets_sent"] + net.b.channel.stats["packets_sent"]
    assert 10 * IDLE_TIMEOUT / 10 <= sent <= 4 * (10 * IDLE_TIMEOUT / 10)


def test_keepalive_is_sent_after_the_interval_without_sending() -> None:
    channel = Channel(now=0.0)
    assert channel.get_timer() == pytest.approx(10.0)
    channel.handle_timer(10.0)
    (ping,) = channel.datagrams_to_send(10.0)
    assert ping == PACKET_HEADER.pack(0, 1) + b"\x03"


def test_ack_for_a_packet_never_sent_is_rejected_without_effect() -> None:
    channel = Channel(now=0.0)
    channel.send_message(b"data", 0.0)
    channel.datagrams_to_send(0.0)
    before = channel.stats
    forged = PACKET_HEADER.pack(0, 1) + encode_ack([(0, 5)], 0.0, 1 << 30)
    with pytest.raises(BadFrame):
        channel.receive_datagram_untrusted(forged, 0.01)
    assert channel.stats == before
    assert channel.next_event() is None


junk = st.one_of(
    st.binary(max_size=200),
    st.builds(
        lambda pn, count, body: PACKET_HEADER.pack(pn, count) + body,
        st.integers(0, 2**64 - 1),
        st.integers(0, 3),
        st.binary(max_size=40),
    ),
)


@settings(max_examples=100, deadline=None)
@given(
    junk_for_a=st.lists(junk, max_size=5),
    junk_for_b=st.lists(junk, max_size=5),
    cuts=st.lists(st.integers(1, 2000), max_size=5),
    seed=st.integers(0, 1000),
)
def test_malformed_datagrams_raise_only_bad_frame_and_leave_the_channel_working(
    junk_for_a: list[bytes], junk_for_b: list[bytes], cuts: list[int], seed: int
) -> None:
    link = lossy(0.05, reorder=0.2)
    net = Network(link, link, seed=seed)
    messages = payloads(seed, [3000, 0, 40_000])
    send_all(net, net.a, messages)
    truncated: list[bytes] = []
    real = net.a.channel.datagrams_to_send(0.0)
    for cut, datagram in zip(cuts, real * len(cuts), strict=False):
        truncated.append(datagram[: len(datagram) - 1 - cut % len(datagram)])
    for datagram in real:
        net.inject(net.b, datagram)
    for bad in truncated:
        with pytest.raises(BadFrame):
            net.b.channel.receive_datagram_untrusted(bad, 0.0)
    for bad in junk_for_b:
        net.inject(net.b, bad)
    for bad in junk_for_a:
        net.inject(net.a, bad)
    if net.a.bad_frames < len(junk_for_a) or net.b.bad_frames < len(junk_for_b):
        return  # a junk packet happened to be well-formed; its content is the peer's word
    net.run_until_delivered(len(messages), 0, max_time=600)
    assert net.b.received == messages


def test_framing_violation_closes_the_channel_with_protocol_error() -> None:
    channel = Channel(now=0.0)
    too_long = (MAX_MESSAGE_SIZE + 1).to_bytes(4, "little")
    from p2pd.reliable._frames import FRAME_STREAM, STREAM_HEADER

    frame = STREAM_HEADER.pack(FRAME_STREAM, 0, 4) + too_long
    with pytest.raises(BadFrame):
        channel.receive_datagram_untrusted(PACKET_HEADER.pack(0, 1) + frame, 0.0)
    events = []
    while (event := channel.next_event()) is not None:
        events.append(event)
    assert [type(e).__name__ for e in events] == ["ChannelClosed"]
    assert channel.state is State.TERMINATED


def test_stats_report_the_documented_keys() -> None:
    stats = Channel(now=0.0).stats
    for key in (
        "srtt", "rttvar", "rto", "cwnd", "bytes_in_flight", "retransmits",
        "packets_sent", "packets_received", "duplicates",
    ):  # fmt: skip
        assert key in stats


def test_events_are_plain_values() -> None:
    assert MessageReceived(b"x") == MessageReceived(b"x")
    assert MessageDelivered(1, 0.5).rtt == 0.5


def _through_a_dead_path(change_path: bool) -> tuple[float, Network]:
    """A fast path (1 ms) carries a first message, then dies while a second is in flight;
    after five backed-off probes a slow path (250 ms, a Tor stream) takes over.  Returns
    the seconds from the switch to the second message's arrival."""
    slow = LinkConfig(delay=0.25)
    net = Network(LinkConfig(delay=0.001), LinkConfig(delay=0.001))
    net.a.channel.send_message(b"over the fast path", net.now)
    net.run_until_delivered(1, 0, max_time=1.0)
    for link in net.links.values():
        link.config = LinkConfig(loss=1.0)
    net.a.channel.send_message(b"lost with the fast path", net.now)
    net.run(lambda: net.a.channel.stats["rto_count"] >= 5, max_time=IDLE_TIMEOUT)
    for link in net.links.values():
        link.config = slow
    switched = net.now
    if change_path:
        net.a.channel.path_changed(net.now)
        net.b.channel.path_changed(net.now)
    net.run(lambda: len(net.b.received) == 2, max_time=switched + IDLE_TIMEOUT)
    assert net.b.received[1] == b"lost with the fast path"
    return net.b.last_delivery_time - switched, net


def test_a_path_change_probes_what_the_dead_path_lost_at_once() -> None:
    took, net = _through_a_dead_path(change_path=True)
    assert took == pytest.approx(0.25, abs=0.01)  # one way on the new path, no waiting
    assert net.a.channel.stats["path_changes"] == 1
    assert net.a.channel.stats["rto"] >= 0.25  # the fast path's RTT was forgotten
    waited, _ = _through_a_dead_path(change_path=False)
    assert waited > 2.0, "without it, the backed-off probe timer decides (the control)"
