"""The relay server over real loopback sockets: UDP and TCP clients driven by RelayClient."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

import pytest
import trio
import trio.testing

from p2pd.derive import params_from_master
from p2pd.errors import LocalError
from p2pd.relayd import RelayConfig, RelayRunning, serve_relay
from p2pd.subkeys import relay_tag
from p2pd.tags import epoch_of
from transports.framing import FrameDecoder, encode_frame
from transports.relay_client import Delivered, Event, PeerSeen, Registered, RelayClient

KEY = params_from_master(bytes(32)).tag_key
OTHER_KEY = params_from_master(bytes([1]) * 32).tag_key
#: Wall clock 200 s into an epoch: one tag, far from the boundary margin.
WALL0 = 1_700_000_000.0
#: Generous: loopback round trips take microseconds.
TIMEOUT = 10.0
LOOPBACK = ("127.0.0.1", 0)
#: Limits high enough that only the behaviour under test is limited.
FAST = RelayConfig(packets_per_second=1e6, packet_burst=1e6)

Addr = tuple[str, int]


class Client:
    """A node's relay side in miniature: a socket or TCP stream, a RelayClient, its events."""

    def __init__(self, relay: Addr, tag_key: bytes, *, tcp: bool = False) -> None:
        self.relay = relay
        self.tag_key = tag_key
        self.tcp = tcp
        self.events: list[Event] = []
        self._changed = trio.Event()
        self._send_lock = trio.Lock()
        self._t0 = trio.current_time()
        self.local: Addr = ("", 0)

    def wall(self) -> float:
        return WALL0 + trio.current_time() - self._t0

    async def start(self, nursery: trio.Nursery) -> None:
        if self.tcp:
            self.stream = await trio.open_tcp_stream(*self.relay)
            self.local = self.stream.socket.getsockname()[:2]
        else:
            family = socket.AF_INET6 if ":" in self.relay[0] else socket.AF_INET
            self.sock = trio.socket.socket(family, socket.SOCK_DGRAM)
            await self.sock.bind((self.relay[0], 0))
            self.local = self.sock.getsockname()[:2]
        self.core = RelayClient(self.relay, self.tag_key, trio.current_time(), self.wall())
        self.scope = trio.CancelScope()
        nursery.start_soon(self._run)

    async def _run(self) -> None:
        with self.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._timers)
                nursery.start_soon(self._receive)

    async def close(self) -> None:
        self.scope.cancel()
        if self.tcp:
            await self.stream.aclose()

    async def _raw_send(self, data: bytes) -> None:
        if self.tcp:
            async with self._send_lock:
                await self.stream.send_all(encode_frame(data))
        else:
            await self.sock.sendto(data, self.relay)

    async def _flush(self) -> None:
        for data in self.core.datagrams_to_send():
            await self._raw_send(data)

    async def _timers(self) -> None:
        while True:
            await self._flush()
            await trio.sleep_until(self.core.get_timer())
            self.core.handle_timer(trio.current_time(), self.wall())

    async def _receive(self) -> None:
        decoder = FrameDecoder()
        while True:
            if self.tcp:
                frames = decoder.feed_untrusted(await self.stream.receive_some(65536))
            else:
                frames = [await self.sock.recv(65536)]
            for frame in frames:
                self.events += self.core.receive_untrusted(frame, trio.current_time(), self.wall())
            self._changed.set()
            self._changed = trio.Event()
            await self._flush()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        with trio.fail_after(TIMEOUT):
            while not predicate():
                await self._changed.wait()

    async def send(self, slot: int, payload: bytes) -> None:
        await self._raw_send(self.core.wrap(slot, payload))

    def seen(self) -> dict[int, tuple[str, int]]:
        return {e.slot: e.addr for e in self.events if isinstance(e, PeerSeen)}

    def delivered(self) -> list[Delivered]:
        return [e for e in self.events if isinstance(e, Delivered)]

    def registered(self) -> list[Registered]:
        return [e for e in self.events if isinstance(e, Registered)]


async def start_relay(
    nursery: trio.Nursery, config: RelayConfig = FAST, bind: Addr = LOOPBACK
) -> RelayRunning:
    running: RelayRunning = await nursery.start(serve_relay, bind, config)
    return running


async def pair(
    nursery: trio.Nursery, relay: RelayRunning, *, tcp_b: bool = False
) -> tuple[Client, Client]:
    a, b = Client(relay.addr, KEY), Client(relay.addr, KEY, tcp=tcp_b)
    await a.start(nursery)
    await a.wait_for(lambda: bool(a.registered()))
    await b.start(nursery)
    await a.wait_for(lambda: bool(a.seen()))
    await b.wait_for(lambda: bool(b.seen()))
    return a, b


def arrived(client: Client, count: int) -> Callable[[], bool]:
    return lambda: len(client.delivered()) >= count


def payload(i: int, size: int = 100) -> bytes:
    return i.to_bytes(4, "big") * (size // 4)


async def test_two_udp_clients_see_each_other_at_their_loopback_ports() -> None:
    async with trio.open_nursery() as nursery:
        relay = await start_relay(nursery)
        a, b = await pair(nursery, relay)
        assert a.registered() == [Registered(a.local)]
        assert b.registered() == [Registered(b.local)]
        assert list(a.seen().values()) == [b.local]
        assert list(b.seen().values()) == [a.local]
        assert relay.server.registrations == 2
        nursery.cancel_scope.cancel()


async def test_thousands_of_payloads_relayed_both_ways_intact_and_in_count() -> None:
    count, batch = 3000, 100
    async with trio.open_nursery() as nursery:
        relay = await start_relay(nursery)
        a, b = await pair(nursery, relay)
        (slot_b,), (slot_a,) = a.seen(), b.seen()
        for sender, receiver, slot in ((a, b, slot_b), (b, a, slot_a)):
            for start in range(0, count, batch):
                for i in range(start, start + batch):
                    await sender.send(slot, payload(i))
                await receiver.wait_for(arrived(receiver, start + batch))
        assert [d.payload for d in b.delivered()] == [payload(i) for i in range(count)]
        assert [d.payload for d in a.delivered()] == [payload(i) for i in range(count)]
        assert {d.slot for d in b.delivered()} == {slot_a}
        assert {d.slot for d in a.delivered()} == {slot_b}
        assert relay.counters()["relayed"] == 2 * count
        nursery.cancel_scope.cancel()


async def test_a_client_with_another_tag_sees_and_receives_nothing() -> None:
    async with trio.open_nursery() as nursery:
        relay = await start_relay(nursery)
        a, b = await pair(nursery, relay)
        c = Client(relay.addr, OTHER_KEY)
        await c.start(nursery)
        await c.wait_for(lambda: bool(c.registered()))
        (slot_b,) = a.seen()
        (slot_a,) = b.seen()
        await a.send(slot_b, payload(1))
        await c.send(slot_a, payload(2))  # c guessed a's slot: still not relayed
        await b.wait_for(lambda: len(b.delivered()) == 1)
        await trio.testing.wait_all_tasks_blocked(0.05)
        assert c.seen() == {}
        assert c.delivered() == []
        assert a.delivered() == []
        assert relay.counters()["drop_cross_tag"] == 1
        nursery.cancel_scope.cancel()


async def test_tcp_and_udp_clients_relay_to_each_other() -> None:
    async with trio.open_nursery() as nursery:
        relay = await start_relay(nursery)
        a, b = await pair(nursery, relay, tcp_b=True)
        assert b.registered() == [Registered(b.local)]  # the TCP source address
        assert list(a.seen().values()) == [b.local]
        (slot_b,), (slot_a,) = a.seen(), b.seen()
        for i in range(200):
            await a.send(slot_b, payload(i))
            await b.send(slot_a, payload(i + 1000))
        await b.wait_for(lambda: len(b.delivered()) == 200)
        await a.wait_for(lambda: len(a.delivered()) == 200)
        assert [d.payload for d in b.delivered()] == [payload(i) for i in range(200)]
        assert [d.payload for d in a.delivered()] == [payload(i + 1000) for i in range(200)]
        nursery.cancel_scope.cancel()


async def test_closing_a_tcp_connection_ends_its_registration() -> None:
    async with trio.open_nursery() as nursery:
        relay = await start_relay(nursery)
        _a, b = await pair(nursery, relay, tcp_b=True)
        assert relay.server.registrations == 2
        await b.close()
        await trio.testing.wait_all_tasks_blocked(0.05)
        assert relay.server.registrations == 1
        nursery.cancel_scope.cancel()


async def test_byte_cap_drops_the_excess_and_counts_it() -> None:
    config = RelayConfig(packets_per_second=1e6, packet_burst=1e6, bytes_per_window=10_000)
    async with trio.open_nursery() as nursery:
        relay = await start_relay(nursery, config)
        a, b = await pair(nursery, relay)
        (slot_b,) = a.seen()
        for i in range(20):
            await a.send(slot_b, payload(i, 1000))
        await b.wait_for(lambda: len(b.delivered()) == 10)
        await trio.testing.wait_all_tasks_blocked(0.05)
        assert len(b.delivered()) == 10
        assert relay.counters()["drop_byte_cap"] == 10
        assert relay.counters()["relayed_bytes"] == 10_000
        nursery.cancel_scope.cancel()


async def test_packet_rate_drops_the_excess_and_counts_it() -> None:
    config = RelayConfig(packets_per_second=1.0, packet_burst=5.0)
    async with trio.open_nursery() as nursery:
        relay = await start_relay(nursery, config)
        a, b = await pair(nursery, relay)
        (slot_b,) = a.seen()
        for i in range(50):
            await a.send(slot_b, payload(i))
        await b.wait_for(lambda: len(b.delivered()) >= 5)
        await trio.testing.wait_all_tasks_blocked(0.05)
        counters = relay.counters()
        assert counters["relayed"] == len(b.delivered())
        assert 5 <= counters["relayed"] <= 7  # the burst, and at most a token or two more
        assert counters["relayed"] + counters["drop_rate"] == 50
        nursery.cancel_scope.cancel()


async def test_garbage_on_both_sockets_is_counted_and_the_relay_keeps_working() -> None:
    async with trio.open_nursery() as nursery:
        relay = await start_relay(nursery)
        junk = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for data in (b"", b"\x07", b"\x07\x09\x00\x00" + bytes(40), b"\x01" * 88):
            await junk.sendto(data, relay.addr)
        stream = await trio.open_tcp_stream(*relay.addr)
        await stream.send_all(b"\x00\x00garbage")  # a zero length: not framing
        await trio.testing.wait_all_tasks_blocked(0.05)
        counters = relay.counters()
        assert counters["drop_tcp_empty_frame"] == 1
        assert counters["drop_bad_op"] == 1
        assert counters["drop_not_relay"] >= 2
        a, b = await pair(nursery, relay)
        assert a.seen() and b.seen()
        nursery.cancel_scope.cancel()


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback (::1) on this host")
async def test_ipv6_clients_meet_and_relay() -> None:
    async with trio.open_nursery() as nursery:
        relay = await start_relay(nursery, bind=("::1", 0))
        assert relay.addr[0] == "::1"
        a, b = await pair(nursery, relay, tcp_b=True)
        assert list(a.seen().values()) == [b.local]
        assert list(b.seen().values()) == [a.local]
        (slot_b,) = a.seen()
        await a.send(slot_b, payload(7))
        await b.wait_for(lambda: len(b.delivered()) == 1)
        nursery.cancel_scope.cancel()


async def test_logs_carry_counters_but_no_tag_payload_or_address(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="p2pd.relay")
    secret_payload = b"\xab" * 64
    async with trio.open_nursery() as nursery:
        relay = await start_relay(nursery)
        a, b = await pair(nursery, relay)
        (slot_b,) = a.seen()
        await a.send(slot_b, secret_payload)
        await b.wait_for(lambda: len(b.delivered()) == 1)
        nursery.cancel_scope.cancel()
    text = caplog.text
    assert "relayed=1" in text
    tag = relay_tag(KEY, epoch_of(WALL0))
    for secret in (tag.hex(), tag[:4].hex(), secret_payload.hex()[:16], str(a.local[1])):
        assert secret not in text


async def test_a_bind_address_that_is_not_an_ip_is_a_local_error() -> None:
    with pytest.raises(LocalError):
        await serve_relay(("localhost", 0), FAST)


async def test_a_port_in_use_is_a_local_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(LOOPBACK)
        with pytest.raises(LocalError):
            await serve_relay(taken.getsockname(), FAST)


async def test_tcp_connections_per_source_ip_are_limited() -> None:
    config = RelayConfig(max_per_ip=2)
    async with trio.open_nursery() as nursery:
        relay = await start_relay(nursery, config)
        streams = [await trio.open_tcp_stream(*relay.addr) for _ in range(3)]
        with trio.fail_after(TIMEOUT):
            assert await streams[2].receive_some(1) == b""  # closed by the relay
        await trio.testing.wait_all_tasks_blocked(0.05)
        assert relay.counters()["tcp_refused_ip"] == 1
        assert relay.counters()["tcp_accepted"] == 2
        for stream in streams:
            await stream.aclose()
        nursery.cancel_scope.cancel()
