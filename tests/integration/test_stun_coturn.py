"""A real coturn (``turnserver --stun-only``) on 127.0.0.1 and the STUN prober over a trio socket.

Loopback only: coturn listens on 127.0.0.1 at a free port, and the client socket is bound to
127.0.0.1, so the mapped address must be exactly the client's own address (no NAT).
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator

import pytest
import trio

from transports.natclass import Addr
from transports.stun import (
    METHOD_BINDING,
    Classified,
    Mapped,
    StunClass,
    StunEvent,
    StunProber,
    binding_request,
    is_stun,
    parse_untrusted,
)

LOOPBACK = "127.0.0.1"
#: Seconds coturn gets to come up and answer (it takes well under one).
READY_TIMEOUT = 10.0
#: Fast retransmission while polling for coturn to come up: it is on loopback.
READY_RTO = 0.05
#: Seconds one full probe may take (the prober gives up on a server after 7.75 s).
PROBE_TIMEOUT = 15.0
MAX_DATAGRAM = 2048


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def coturn() -> Iterator[Addr]:
    """A ``turnserver --stun-only`` on 127.0.0.1; its address.  Skips if coturn is missing
    (fails under CI, where it must run)."""
    if shutil.which("turnserver") is None:
        reason = "coturn's `turnserver` is not installed (Debian package coturn)"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set, so coturn must run, but: {reason}", pytrace=False)
        pytest.skip(reason=reason)
    port = free_udp_port()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            ["turnserver", "-n", "--stun-only", "-L", LOOPBACK, "-p", str(port), "--no-cli",
             "--no-tls", "--no-dtls", "--log-file", "stdout", "--simple-log",
             "--pidfile", "/dev/null"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            yield (LOOPBACK, port)
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def drive(prober: StunProber, sock: trio.socket.SocketType) -> list[StunEvent]:
    """A minimal trio driver: send what is due, feed datagrams, fire timers, until classified."""
    events: list[StunEvent] = []
    while True:
        for data, addr in prober.datagrams_to_send(trio.current_time()):
            await sock.sendto(data, addr)
        while (event := prober.next_event()) is not None:
            events.append(event)
            if isinstance(event, Classified):
                return events
        timer = prober.get_timer()
        with trio.move_on_at(math.inf if timer is None else timer):
            data, source = await sock.recvfrom(MAX_DATAGRAM)
            if is_stun(data):
                prober.receive_untrusted(data, source, trio.current_time())
            continue
        prober.handle_timer(trio.current_time())


async def wait_ready(server: Addr) -> None:
    """Poll coturn with real Binding requests until it answers (bounded)."""
    with trio.fail_after(READY_TIMEOUT):
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        with sock:
            await sock.bind((LOOPBACK, 0))
            while True:
                prober = StunProber([server], trio.current_time(), rto=READY_RTO, max_tries=3)
                if any(isinstance(e, Mapped) for e in await drive(prober, sock)):
                    return


async def test_mapped_address_on_loopback_is_our_own_socket_address(coturn: Addr) -> None:
    await wait_ready(coturn)
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    with sock, trio.fail_after(PROBE_TIMEOUT):
        await sock.bind((LOOPBACK, 0))
        me: Addr = sock.getsockname()
        prober = StunProber([coturn], trio.current_time(), local=[me], local_port=me[1])
        events = await drive(prober, sock)
    mapped = [e for e in events if isinstance(e, Mapped)]
    assert len(mapped) == 1
    assert mapped[0].server == coturn
    assert mapped[0].mapped == me
    assert 0 <= mapped[0].rtt < PROBE_TIMEOUT
    result = prober.result
    assert result is not None and result.presence == "no-nat"
    assert result.reflexive == me


async def test_coturn_answer_passes_the_demultiplexer_and_parses(coturn: Addr) -> None:
    await wait_ready(coturn)
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    with sock, trio.fail_after(READY_TIMEOUT):
        await sock.bind((LOOPBACK, 0))
        me = sock.getsockname()
        request = binding_request()
        await sock.sendto(request, coturn)
        data, source = await sock.recvfrom(MAX_DATAGRAM)
    assert source == coturn
    assert is_stun(data)
    msg = parse_untrusted(data)
    assert (msg.method, msg.cls) == (METHOD_BINDING, StunClass.SUCCESS)
    assert msg.transaction_id == request[8:20]
    assert msg.mapped == me
    assert msg.response_origin == coturn
    assert msg.software is not None and msg.software.startswith("Coturn")


async def test_forged_answers_from_another_socket_are_dropped(coturn: Addr) -> None:
    await wait_ready(coturn)
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    forger = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    with sock, forger, trio.fail_after(PROBE_TIMEOUT):
        await sock.bind((LOOPBACK, 0))
        await forger.bind((LOOPBACK, 0))
        me = sock.getsockname()
        prober = StunProber([coturn], trio.current_time())
        [(request, _)] = prober.datagrams_to_send(trio.current_time())
        # A copy of coturn's real answer, replayed from the wrong address, and garbage.
        await sock.sendto(request, coturn)
        real, _ = await sock.recvfrom(MAX_DATAGRAM)
        assert not prober.receive_untrusted(real, forger.getsockname(), trio.current_time())
        assert not prober.receive_untrusted(real[:-1], coturn, trio.current_time())
        assert prober.receive_untrusted(real, coturn, trio.current_time())
    assert prober.counters["drop_wrong_source"] == 1
    assert prober.counters["drop_stun_header"] == 1
    event = prober.next_event()
    assert isinstance(event, Mapped) and event.mapped == me
