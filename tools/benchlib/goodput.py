"""goodput_64MiB: one 64 MiB message between two p2pd nodes in two processes, on loopback.

The parent (``tools/bench goodput``) starts two children of ``tools/bench --role``
(a receiver and a sender) and coordinates them over stdin/stdout, one JSON object per
line.  Both children first run the *baseline* with plain blocking Python sockets — the
sender blasts 64 MiB in 1200-byte datagrams, the receiver counts what arrives (LAB-NOTES'
"raw UDP") — then start a :class:`p2pd.node.Node` each (``interfaces=["lo"]``, no mDNS, no
beacons, the sender targets the receiver's port) and the sender sends one 64 MiB
application message per round.

Times are ``time.monotonic()`` (CLOCK_MONOTONIC, shared by every process on Linux): a
round runs from just before ``send_message`` in the sender to the receiver's MessageIn.
The master secret goes to the children on stdin as hex (no Argon2, never printed).

The machine may be shared: ``detail`` also reports each child's CPU time per 1200 bytes
delivered (robust to other load), its CPU share of the round, and the share of the round
it spent runnable but waiting for a CPU (``/proc/self/schedstat``; high means the MB/s
figures measured the neighbours, not p2pd).
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

#: Bytes of the one message (and of each raw blast).
SIZE = 64 * 1024 * 1024
#: Datagram payload of the raw baseline: the reliable channel's plaintext size.
DATAGRAM = 1200
#: 1200-byte datagrams in one message: the unit of the per-datagram CPU costs reported.
DATAGRAMS = SIZE / DATAGRAM
#: Kernel buffers of the raw sockets: the same 4 MiB p2pd.udp asks for.
RAW_BUFFER = 4 * 1024 * 1024
#: A raw round ends once nothing arrived for this long after the first datagram.
RAW_IDLE = 0.3
#: Stop measuring further node rounds once one took longer than this (seconds).
SLOW_ROUND = 20.0
#: Longest wait for any child's next line.
CHILD_TIMEOUT = 180.0
#: Application message type of the payload (unknown types are delivered, not dropped).
BENCH_KIND = "bench"

Report = Callable[..., None]


def _send(stream: TextIO | None, obj: dict[str, Any]) -> None:
    assert stream is not None
    stream.write(json.dumps(obj) + "\n")
    stream.flush()


def _read(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"benchmark child exited early (rc {proc.wait(5)})")
    return dict(json.loads(line))


def _cpu() -> tuple[float, float]:
    """(CPU seconds, seconds spent runnable but waiting for a CPU) of this process so far.

    The second is how much other load on the machine slowed this child down.
    """
    try:
        with open("/proc/self/schedstat") as handle:
            ran, waited = handle.read().split()[:2]
        return int(ran) / 1e9, int(waited) / 1e9
    except (OSError, ValueError):
        return time.process_time(), 0.0


def _say(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


# -- parent ---------------------------------------------------------------------------


def bench_goodput(quick: bool, report: Report, bench_path: Path, *, verbose: bool = False) -> None:
    rounds = 1 if quick else 3
    master = os.urandom(32).hex()
    with tempfile.TemporaryDirectory(prefix="p2pd-bench-") as tmp:
        start = [sys.executable, str(bench_path), "--role"]
        pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True}
        receiver = subprocess.Popen([*start, "goodput-receiver"], **pipes)  # type: ignore[call-overload]
        sender = subprocess.Popen([*start, "goodput-sender"], **pipes)  # type: ignore[call-overload]
        try:
            config = {"master": master, "rounds": rounds}
            _send(receiver.stdin, {**config, "state": str(Path(tmp) / "r")})
            raw_port = _read(receiver)["raw_port"]
            _send(sender.stdin, {**config, "state": str(Path(tmp) / "s"), "raw_port": raw_port})
            raw_rates, raw_received = [], []
            for _ in range(rounds):
                _send(sender.stdin, {"go": True})
                started = _read(sender)["start"]
                got = _read(receiver)
                raw_rates.append(got["bytes"] / (got["last"] - started) / 1e6)
                raw_received.append(got["bytes"] / SIZE)
            ready = _read(receiver)
            node_port, receiver_cpu = ready["node_port"], ready["cpu"]
            _send(sender.stdin, {"node_port": node_port})
            ours, sender_cpu, busy, sender_wait, receiver_wait = [], [], [], [], []
            sender_us, receiver_us = [], []
            while True:
                sent = _read(sender)
                if "done" in sent:
                    break
                sent_stats = sent["stats"]
                got = _read(receiver)
                assert SIZE - 64 < got["blob"] < SIZE, got
                ours.append(SIZE / (got["t"] - sent["start"]) / 1e6)
                sender_us.append(sent["cpu"] / DATAGRAMS * 1e6)
                receiver_us.append((got["cpu"][0] - receiver_cpu[0]) / DATAGRAMS * 1e6)
                sender_cpu.append(sent["cpu"] / sent["elapsed"])
                sender_wait.append(sent["waited"] / sent["elapsed"])
                took = got["t"] - sent["start"]
                busy.append((got["cpu"][0] - receiver_cpu[0]) / took)
                receiver_wait.append((got["cpu"][1] - receiver_cpu[1]) / took)
                receiver_cpu = got["cpu"]
            _send(receiver.stdin, {"stop": True})
            for proc in (sender, receiver):
                proc.wait(30)
        finally:
            for proc in (sender, receiver):
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    detail = {"rounds_mb_s": [round(r, 1) for r in ours],
              "raw_rounds_mb_s": [round(r, 1) for r in raw_rates],
              "raw_received_fraction": [round(r, 3) for r in raw_received],
              "sender_cpu_us_per_1200B": [round(r, 1) for r in sender_us],
              "receiver_cpu_us_per_1200B": [round(r, 1) for r in receiver_us],
              "sender_cpu_share": [round(r, 2) for r in sender_cpu],
              "receiver_cpu_share": [round(r, 2) for r in busy],
              "sender_runqueue_wait_share": [round(r, 2) for r in sender_wait],
              "receiver_runqueue_wait_share": [round(r, 2) for r in receiver_wait]}
    if verbose:
        detail["sender_last"] = sent_stats
        detail["receiver_last"] = got["stats"]
    report("goodput_64MiB", statistics.median(ours), "MB/s", statistics.median(raw_rates),
           "raw_udp_1200B_blast", detail=detail)


# -- children ---------------------------------------------------------------------------


def _raw_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, RAW_BUFFER)
    return sock


def receive_blast(
    sock: socket.socket, buf: bytearray, start_timeout: float
) -> tuple[int, float, float]:
    """Receive one raw blast: bytes, and the monotonic times of its first and last datagram.

    Waits up to ``start_timeout`` for the first datagram, then stops RAW_IDLE after the last.
    """
    total, first, last = 0, 0.0, 0.0
    sock.settimeout(start_timeout)
    while True:
        try:
            n = sock.recv_into(buf)
        except TimeoutError:
            return total, first, last
        last = time.monotonic()
        if not total:
            first = last
            sock.settimeout(RAW_IDLE)
        total += n


def _params(config: dict[str, Any]) -> Any:
    from p2pd.derive import params_from_master

    return params_from_master(bytes.fromhex(config["master"]))


def _bench_message() -> bytes:
    """A CBOR application message of exactly :data:`SIZE` bytes."""
    from p2pd import messages

    probe = 70_000  # a byte string this long already has the 4-byte length header of SIZE's
    overhead = len(messages.encode(BENCH_KIND, blob=bytes(probe))) - probe
    data = messages.encode(BENCH_KIND, blob=os.urandom(SIZE - overhead))
    assert len(data) == SIZE
    return data


def role_receiver() -> int:
    config = json.loads(sys.stdin.readline())
    sock = _raw_socket()
    sock.bind(("127.0.0.1", 0))
    _say({"raw_port": sock.getsockname()[1]})
    buf = bytearray(65536)
    for _ in range(config["rounds"]):
        total, first, last = receive_blast(sock, buf, CHILD_TIMEOUT)
        _say({"bytes": total, "first": first, "last": last})
    sock.close()

    import trio

    from p2pd.identity import load_or_create
    from p2pd.node import MessageIn, Node, NodeConfig

    node = Node(_params(config), load_or_create(Path(config["state"])),
                NodeConfig(interfaces=["lo"], beacons=False, mdns=False))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            _say({"node_port": await nursery.start(node.run), "cpu": _cpu()})

            async def stop_on_stdin() -> None:
                await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
                nursery.cancel_scope.cancel()

            nursery.start_soon(stop_on_stdin)
            async for event in node.events:
                if isinstance(event, MessageIn) and event.message.kind == BENCH_KIND:
                    arrived = time.monotonic()
                    _say({"blob": len(event.message.fields["blob"]), "t": arrived,
                          "cpu": _cpu(), "stats": node.stats()})

    trio.run(main)
    return 0


def role_sender() -> int:
    config = json.loads(sys.stdin.readline())
    payload = memoryview(os.urandom(SIZE))
    sock = _raw_socket()
    target = ("127.0.0.1", config["raw_port"])
    for _ in range(config["rounds"]):
        json.loads(sys.stdin.readline())  # go
        started = time.monotonic()
        for offset in range(0, SIZE, DATAGRAM):
            sock.sendto(payload[offset:offset + DATAGRAM], target)
        _say({"start": started})
    sock.close()
    del payload

    import trio

    from p2pd.identity import load_or_create
    from p2pd.node import Delivered, Node, NodeConfig, PeerUp

    node_port = json.loads(sys.stdin.readline())["node_port"]
    message = _bench_message()
    node = Node(_params(config), load_or_create(Path(config["state"])),
                NodeConfig(interfaces=["lo"], beacons=False, mdns=False,
                           targets=[("127.0.0.1", node_port)]))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            peer: bytes | None = None
            async for event in node.events:
                if isinstance(event, PeerUp):
                    peer = event.peer_id
                    break
            assert peer is not None
            for _ in range(config["rounds"]):
                cpu, started = _cpu(), time.monotonic()
                message_id = node.send_message(peer, message)
                async for event in node.events:
                    if isinstance(event, Delivered) and event.message_id == message_id:
                        break
                elapsed = time.monotonic() - started
                stats = {k: round(v, 4) if isinstance(v, float) else v
                         for k, v in node.peers[peer].channel.stats.items()}
                ran, waited = (b - a for a, b in zip(cpu, _cpu(), strict=True))
                _say({"start": started, "elapsed": elapsed, "cpu": ran, "waited": waited,
                      "stats": {**stats, **node.stats()}})
                if elapsed > SLOW_ROUND:
                    break
            _say({"done": True})
            nursery.cancel_scope.cancel()

    trio.run(main)
    return 0


ROLES = {"goodput-receiver": role_receiver, "goodput-sender": role_sender}
