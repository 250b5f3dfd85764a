"""p2pd.udp: GSO batch boundaries, GRO splitting, and batched I/O over a real loopback socket."""

from __future__ import annotations

import errno
import socket

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from p2pd import udp
from p2pd.udp import UdpSocket, gso_batches, split_segments

sizes = st.lists(st.integers(min_value=0, max_value=3000), max_size=200)


def _batches(lengths: list[int], max_segments: int = 64, max_bytes: int = 65507) -> list[list[int]]:
    datagrams = [bytes(n) for n in lengths]
    return [lengths[a:b] for a, b in gso_batches(datagrams, max_segments, max_bytes)]


@given(sizes)
def test_gso_batches_cover_every_datagram_once_in_order(lengths: list[int]) -> None:
    assert [n for batch in _batches(lengths) for n in batch] == lengths


@given(sizes, st.integers(min_value=1, max_value=70), st.integers(min_value=1, max_value=70000))
def test_gso_batch_is_equal_sizes_then_at_most_one_shorter_within_limits(
    lengths: list[int], max_segments: int, max_bytes: int
) -> None:
    for batch in _batches(lengths, max_segments, max_bytes):
        assert batch
        if len(batch) > 1:
            assert all(n == batch[0] for n in batch[:-1])
            assert 0 < batch[-1] <= batch[0]
            assert len(batch) <= max_segments
            assert sum(batch) <= max_bytes


def test_gso_batches_start_anew_after_a_shorter_datagram() -> None:
    assert _batches([1232, 1232, 100, 1232, 1232]) == [[1232, 1232, 100], [1232, 1232]]


def test_an_empty_datagram_is_never_the_tail_of_a_gso_batch() -> None:
    assert _batches([1232, 1232, 0, 0]) == [[1232, 1232], [0], [0]]


def test_gso_batch_stops_at_the_byte_limit() -> None:
    assert _batches([1232] * 60) == [[1232] * 53, [1232] * 7]


def test_split_segments_cuts_a_gro_buffer_into_its_datagrams() -> None:
    data = b"a" * 5 + b"b" * 5 + b"c" * 2
    assert split_segments(data, 5) == [b"aaaaa", b"bbbbb", b"cc"]


def test_split_segments_leaves_a_single_datagram_whole() -> None:
    assert split_segments(b"abc", 3) == [b"abc"]
    assert split_segments(b"abc", 0) == [b"abc"]


async def _drain_all(sock: UdpSocket, count: int) -> list[tuple[bytes, udp.Addr]]:
    got: list[tuple[bytes, udp.Addr]] = []
    with trio.fail_after(5):
        while len(got) < count:
            await sock.wait_readable()
            got.extend(sock.drain())
    return got


async def test_send_batch_delivers_every_datagram_in_order_from_one_address() -> None:
    a, b = UdpSocket(0), UdpSocket(0)
    try:
        datagrams = [bytes([i]) * 1232 for i in range(100)] + [b"tail", b"", b"x" * 1232, b"y"]
        sent = await a.send_batch(datagrams, ("127.0.0.1", b.port))
        assert sent == [True] * len(datagrams)
        got = await _drain_all(b, len(datagrams))
        assert [data for data, _ in got] == datagrams
        assert {addr for _, addr in got} == {("127.0.0.1", a.port)}
    finally:
        a.close()
        b.close()


async def test_send_batch_without_gso_sends_one_at_a_time() -> None:
    a, b = UdpSocket(0), UdpSocket(0)
    a.gso = b.gro = False
    try:
        datagrams = [bytes([i]) * 1000 for i in range(10)]
        assert await a.send_batch(datagrams, ("127.0.0.1", b.port)) == [True] * 10
        assert [data for data, _ in await _drain_all(b, 10)] == datagrams
    finally:
        a.close()
        b.close()


class _RefusesGso:
    """A socket stand-in whose sendmsg fails like a kernel without UDP_SEGMENT."""

    def __init__(self, real: socket.socket, error: int) -> None:
        self.real, self.error, self.sent = real, error, 0

    def sendmsg(self, *_args: object) -> int:
        raise OSError(self.error, "refused")

    def sendto(self, data: bytes, target: tuple[str, int]) -> int:
        self.sent += 1
        return self.real.sendto(data, target)


@pytest.mark.parametrize("error", [errno.EIO, errno.EINVAL])
async def test_unsupported_gso_falls_back_to_single_sends_and_is_turned_off(error: int) -> None:
    a, b = UdpSocket(0), UdpSocket(0)
    real = a.sock
    fake = _RefusesGso(real, error)
    a.sock = fake  # type: ignore[assignment]
    try:
        datagrams = [b"z" * 1232] * 5
        assert await a.send_batch(datagrams, ("127.0.0.1", b.port)) == [True] * 5
        assert fake.sent == 5
        assert not a.gso
        assert len(await _drain_all(b, 5)) == 5
    finally:
        real.close()
        b.close()


async def test_a_transient_batch_error_keeps_gso_on() -> None:
    a, b = UdpSocket(0), UdpSocket(0)
    real = a.sock
    a.sock = _RefusesGso(real, errno.ENOBUFS)  # type: ignore[assignment]
    try:
        assert await a.send_batch([b"z" * 1232] * 3, ("127.0.0.1", b.port)) == [True] * 3
        assert a.gso == udp.SEGMENTATION_OFFLOAD
    finally:
        real.close()
        b.close()


async def test_failed_sends_are_reported_per_datagram_and_keep_gso_on() -> None:
    a = UdpSocket(0)
    try:
        # Port 0 is not a valid destination: every datagram fails on its own.
        assert await a.send_batch([b"q" * 100] * 3, ("127.0.0.1", 0)) == [False] * 3
        assert a.send_errors == 3
        assert a.gso == udp.SEGMENTATION_OFFLOAD  # the address was bad, not the batching
    finally:
        a.close()
