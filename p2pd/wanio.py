"""The trio side of the WAN paths: TCP links, TCP connections to relays and targets, and the
gateway port mapping, all inside the node's nursery.

Why apart from :mod:`p2pd.node`: the node moves UDP datagrams through its cores; this module
owns the other byte pipes (TCP streams) and the blocking port-mapping library, and hands
everything it receives to the node as plain calls.  Nothing here decides anything: the
:class:`~p2pd.wan.WanCore` decides when a relay needs TCP, the node decides which address a
session uses.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Final

import trio

from p2pd.udp import Addr
from transports.tcp import TcpLinks

#: Seconds to wait for a TCP connection to a relay or a target.
TCP_CONNECT_TIMEOUT: Final = 5.0
#: Seconds without a UDP session before ``--target`` addresses are also tried over TCP.
TCP_TARGET_AFTER: Final = 2.0

OnDatagram = Callable[[int, bytes, Addr], None]


class WanIO:
    """TCP links and the port mapping of one node."""

    def __init__(
        self,
        *,
        on_datagram: OnDatagram,
        on_link_closed: Callable[[int], None],
        counters: Counter[str],
    ) -> None:
        self.counters = counters
        self.tcp = TcpLinks(
            on_datagram=on_datagram,
            on_link=self._on_link,
            on_link_closed=on_link_closed,
        )
        self._nursery: trio.Nursery | None = None

    def __repr__(self) -> str:
        return f"WanIO(links={len(self.tcp.links)})"

    def _on_link(self, link: int, addr: Addr, inbound: bool) -> None:
        self.counters["tcp_links_inbound" if inbound else "tcp_links_outbound"] += 1

    async def run(
        self,
        port: int,
        listen: bool,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Own the TCP links (and the listener on ``port`` when ``listen``) until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.tcp.run)
            if listen:
                try:
                    await nursery.start(self.tcp.serve, port)
                except OSError as exc:  # the port is taken on TCP: UDP still works
                    self.counters["tcp_listen_failed"] += 1
                    del exc
            task_status.started()

    def connect_soon(self, addr: Addr, then: Callable[[int | None], None]) -> None:
        """Open a TCP link to ``addr`` in the background; ``then(link or None)`` after."""
        if self._nursery is None:
            then(None)
            return

        async def connect() -> None:
            link = await self.tcp.connect(addr, TCP_CONNECT_TIMEOUT)
            then(link)

        self._nursery.start_soon(connect)

    def send(self, link: int, datagram: bytes) -> bool:
        return self.tcp.send_nowait(link, datagram)
