"""TCP links over real loopback sockets: order, bounds, garbage, failures, cancellation."""

from __future__ import annotations

import random
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio
import trio.testing

from p2pd.errors import LocalError
from transports import tcp
from transports.base import Addr
from transports.framing import MAX_DATAGRAM
from transports.tcp import TcpLinks

#: Generous bound on anything that should take milliseconds on loopback.
PATIENCE = 10.0


class Recorder:
    """Collects a TcpLinks' callbacks and lets a test wait for a condition on them."""

    def __init__(self) -> None:
        self.opened: dict[int, tuple[Addr, bool]] = {}
        self.closed: list[int] = []
        self.received: dict[int, list[bytes]] = {}
        self.out_of_order: list[str] = []
        self._changed = trio.Event()

    def _poke(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def on_link(self, link: int, peer: Addr, inbound: bool) -> None:
        if link in self.opened:
            self.out_of_order.append(f"link {link} opened twice")
        self.opened[link] = (peer, inbound)
        self.received[link] = []
        self._poke()

    def on_datagram(self, link: int, data: bytes, peer: Addr) -> None:
        if link not in self.opened or link in self.closed:
            self.out_of_order.append(f"datagram on link {link} outside its life")
        elif self.opened[link][0] != peer:
            self.out_of_order.append(f"link {link} changed peer")
        self.received.setdefault(link, []).append(data)
        self._poke()

    def on_link_closed(self, link: int) -> None:
        if link not in self.opened or link in self.closed:
            self.out_of_order.append(f"link {link} closed outside its life")
        self.closed.append(link)
        self._poke()

    async def wait_for(self, condition: Callable[[], bool], patience: float = PATIENCE) -> None:
        with trio.fail_after(patience):
            while not condition():
                await self._changed.wait()

    async def wait_received(self, link: int, count: int) -> None:
        await self.wait_for(lambda: len(self.received.get(link, ())) >= count)

    def links(self, **kwargs: int | float) -> TcpLinks:
        return TcpLinks(
            on_datagram=self.on_datagram,
            on_link=self.on_link,
            on_link_closed=self.on_link_closed,
            **kwargs,  # type: ignore[arg-type]
        )


@asynccontextmanager
async def running(
    links: TcpLinks, *, serve: bool = True, host: str | None = "127.0.0.1"
) -> AsyncIterator[int]:
    """Run ``links``, serving on a free port of ``host`` if ``serve``; yield that port (or 0)."""
    async with trio.open_nursery() as nursery:
        await nursery.start(links.run)
        port = await nursery.start(partial(links.serve, 0, host=host)) if serve else 0
        yield port
        nursery.cancel_scope.cancel()


def _closed_port() -> int:
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.bind(("127.0.0.1", 0))
    port: int = probe.getsockname()[1]
    probe.close()
    return port


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def _task_names() -> list[str]:
    names: list[str] = []
    pending = [trio.lowlevel.current_root_task()]
    while pending:
        task = pending.pop()
        if task is None:
            continue
        names.append(task.name)
        pending += [child for nursery in task.child_nurseries for child in nursery.child_tasks]
    return names


async def test_thousands_of_datagrams_cross_both_ways_intact_and_in_order() -> None:
    server, client = Recorder(), Recorder()
    a, b = server.links(), client.links()
    rng = random.Random(5)
    async with running(a) as port, running(b, serve=False):
        link = await b.connect(("127.0.0.1", port), PATIENCE)
        assert link is not None
        await server.wait_for(lambda: len(server.opened) == 1)
        (back,) = server.opened
        assert client.opened[link] == (("127.0.0.1", port), False)
        assert server.opened[back][1] is True
        sent_out: list[bytes] = []
        sent_home: list[bytes] = []
        for _ in range(30):
            out = [rng.randbytes(rng.randint(1, 1200)) for _ in range(100)]
            home = [rng.randbytes(rng.randint(1, 1200)) for _ in range(100)]
            assert all([await b.send(link, item) for item in out])
            assert all([await a.send(back, item) for item in home])
            sent_out += out
            sent_home += home
            await server.wait_received(back, len(sent_out))
            await client.wait_received(link, len(sent_home))
        big = rng.randbytes(MAX_DATAGRAM)
        assert await b.send(link, big)
        sent_out.append(big)
        await server.wait_received(back, len(sent_out))
        assert server.received[back] == sent_out
        assert client.received[link] == sent_home
    assert a.counters["send_dropped_full"] == b.counters["send_dropped_full"] == 0
    assert server.out_of_order == client.out_of_order == []


async def test_a_peer_sending_garbage_is_cut_off_and_counted_without_hurting_others() -> None:
    server, client = Recorder(), Recorder()
    a, b = server.links(), client.links()
    async with running(a) as port, running(b, serve=False):
        good = await b.connect(("127.0.0.1", port), PATIENCE)
        assert good is not None
        hostile = await trio.open_tcp_stream("127.0.0.1", port)
        await server.wait_for(lambda: len(server.opened) == 2)
        await hostile.send_all(b"\x00\x00garbage")
        with trio.fail_after(PATIENCE):
            assert await hostile.receive_some(100) == b""  # the server hung up
        await server.wait_for(lambda: len(server.closed) == 1)
        assert a.counters["bad_frame_empty_frame"] == 1
        assert await b.send(good, b"still here")
        await server.wait_for(lambda: any(server.received.values()))
        assert [d for d in server.received.values() if d] == [[b"still here"]]
        assert len(a.links) == 1
        await hostile.aclose()


async def test_connecting_to_a_closed_port_returns_none_quickly() -> None:
    recorder = Recorder()
    links = recorder.links()
    async with running(links, serve=False):
        with trio.fail_after(2):
            assert await links.connect(("127.0.0.1", _closed_port()), PATIENCE) is None
    assert links.counters["connect_failed"] == 1
    assert recorder.opened == {}


async def test_a_connect_that_cannot_finish_in_time_returns_none() -> None:
    # A listener whose backlog is full leaves further connects pending (SYNs dropped).
    recorder = Recorder()
    links = recorder.links()
    stuck = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stuck.bind(("127.0.0.1", 0))
    stuck.listen(0)
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            filler.connect_ex(stuck.getsockname())
            fillers.append(filler)
        async with running(links, serve=False):
            with trio.fail_after(PATIENCE):
                assert await links.connect(stuck.getsockname(), 0.2) is None
    finally:
        for filler in fillers:
            filler.close()
        stuck.close()
    assert links.counters["connect_timeout"] == 1


async def test_cancelling_run_closes_every_link_and_leaves_no_task() -> None:
    server, client = Recorder(), Recorder()
    a, b = server.links(), client.links()
    async with running(a) as port:
        async with running(b, serve=False):
            ids: list[int] = []
            for _ in range(3):
                link = await b.connect(("127.0.0.1", port), PATIENCE)
                assert link is not None
                ids.append(link)
            await server.wait_for(lambda: len(server.opened) == 3)
            assert any(name.endswith("_link_task") for name in _task_names())
        # b's run was cancelled: its links closed, and a sees every peer hang up.
        assert sorted(client.closed) == sorted(ids)
        assert b.links == {}
        await server.wait_for(lambda: len(server.closed) == 3)
        assert a.counters["closed_by_peer"] == 3
        assert not any(
            name.endswith(("_link_task", "_reader", "_writer")) for name in _task_names()
        )
    assert not any("TcpLinks" in name for name in _task_names())
    assert server.out_of_order == client.out_of_order == []


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 on loopback here")
async def test_the_dual_stack_listener_takes_ipv6_and_ipv4() -> None:
    server, client = Recorder(), Recorder()
    a, b = server.links(), client.links()
    async with running(a, host=None) as port, running(b, serve=False):
        six = await b.connect(("::1", port), PATIENCE)
        four = await b.connect(("127.0.0.1", port), PATIENCE)
        assert six is not None and four is not None
        await server.wait_for(lambda: len(server.opened) == 2)
        assert sorted(peer[0] for peer, _ in server.opened.values()) == ["127.0.0.1", "::1"]
        assert await b.send(six, b"over six")
        await server.wait_for(lambda: any(server.received.values()))
        (inbound,) = [k for k, v in server.received.items() if v]
        assert server.opened[inbound][0][0] == "::1"


async def test_a_slow_reader_makes_sends_drop_and_count_instead_of_blocking() -> None:
    recorder = Recorder()
    links = recorder.links(send_buffer=64 * 1024)
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    async with listener, running(links, serve=False):
        port = listener.socket.getsockname()[1]
        link = await links.connect(("127.0.0.1", port), PATIENCE)
        assert link is not None
        sleeper = await listener.accept()  # accepts, never reads
        datagram = bytes(1200)
        with trio.fail_after(PATIENCE):
            for _ in range(100_000):
                if not await links.send(link, datagram):
                    break
        assert links.counters["send_dropped_full"] == 1
        assert link in links.links  # a slow peer is not a dead one
        await sleeper.aclose()


async def test_a_full_table_refuses_further_links() -> None:
    server, client = Recorder(), Recorder()
    a, b = server.links(max_links=2), client.links()
    async with running(a) as port, running(b, serve=False):
        for _ in range(3):
            assert await b.connect(("127.0.0.1", port), PATIENCE) is not None
        await client.wait_for(lambda: len(client.closed) == 1)
        assert a.counters["inbound_refused"] == 1
        assert len(a.links) == 2
        assert len(server.opened) == 2


async def test_close_ends_a_link_on_both_sides_and_later_sends_fail() -> None:
    server, client = Recorder(), Recorder()
    a, b = server.links(), client.links()
    async with running(a) as port, running(b, serve=False):
        link = await b.connect(("127.0.0.1", port), PATIENCE)
        assert link is not None
        b.close(link)
        await client.wait_for(lambda: client.closed == [link])
        await server.wait_for(lambda: len(server.closed) == 1)
        assert not await b.send(link, b"late")
        assert b.counters["send_no_link"] == 1
        b.close(link)  # closing twice is harmless


async def test_nodelay_is_on_for_both_ends() -> None:
    server, client = Recorder(), Recorder()
    a, b = server.links(), client.links()
    async with running(a) as port, running(b, serve=False):
        link = await b.connect(("127.0.0.1", port), PATIENCE)
        assert link is not None
        await server.wait_for(lambda: len(server.opened) == 1)
        for owner in (a, b):
            for state in owner._links.values():
                assert state.stream.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


async def test_an_idle_link_is_closed(mock_clock: trio.testing.MockClock) -> None:
    server, client = Recorder(), Recorder()
    a, b = server.links(), client.links()
    async with running(a) as port, running(b, serve=False):
        link = await b.connect(("127.0.0.1", port), PATIENCE)
        assert link is not None
        await server.wait_for(lambda: len(server.opened) == 1)
        mock_clock.autojump_threshold = 0  # nothing is in flight: let virtual time run
        idle = 2 * tcp.IDLE_TIMEOUT
        await client.wait_for(lambda: client.closed == [link], patience=idle)
        await server.wait_for(lambda: len(server.closed) == 1, patience=idle)
        assert trio.current_time() >= tcp.IDLE_TIMEOUT
    assert a.counters["closed_idle"] + b.counters["closed_idle"] >= 1


async def test_serving_or_connecting_without_run_is_a_local_error() -> None:
    links = Recorder().links()
    with pytest.raises(LocalError):
        await links.connect(("127.0.0.1", 1), 1.0)
    with pytest.raises(LocalError):
        await links.serve(0)


async def test_a_listen_host_must_be_an_ip_address() -> None:
    links = Recorder().links()
    async with trio.open_nursery() as nursery:
        await nursery.start(links.run)
        with pytest.raises(LocalError, match="IP address"):
            await links.serve(0, host="localhost")
        nursery.cancel_scope.cancel()
