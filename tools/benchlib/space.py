"""space_fanout: time for one file published in a space to reach N peers, beside raw UDP.

Each round first copies the file's size once over raw UDP between two processes on
loopback (the ``goodput`` baseline: plain blocking sockets, 1200-byte datagrams, 4 MiB
kernel buffers, the receiver stops RAW_IDLE after the last datagram), then, for every N,
starts N + 1 real ``python -m p2pd space`` processes on loopback (one publisher, N
fetchers, each with its own state, data and download directories and its own UDP port,
every fetcher given every earlier process as a ``--target``), and times from the moment
the publisher has announced the file to the moment the last fetcher reports it complete
and written (the parent reads every child's ``--json`` lines and stamps them with
``time.monotonic()`` as they arrive).  Process start and Argon2id happen before the clock
starts: all fetchers are up and connected when the file is published.

The ratio is space time / raw copy time: how many single raw copies the whole fan-out
costs.  A perfect fan-out over one link would cost N copies; chunks fetched from other
fetchers (swarming) can bring it below that, the CPU of p2pd's crypto and channel above.
"""

from __future__ import annotations

import json
import os
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchlib.goodput import DATAGRAM, _raw_socket, receive_blast

#: Bytes of the published file (and of each raw copy).
SIZE = 64 * 1024 * 1024
#: Fetcher counts measured (the publisher is one more process).
PEER_COUNTS = (2, 4, 8)
#: Rounds per measurement (the median is reported).
ROUNDS = 3
#: Longest wait for any child's next line, and for a whole fan-out (a run that takes
#: longer is reported as stalled, not timed).
LINE_TIMEOUT = 120.0
#: Longest wait for a raw copy's first datagram.
RAW_START_TIMEOUT = 30.0
#: Bytes read from a child's stdout at once.
READ_BLOCK = 65536
#: Words of the fresh passphrase of each run.
PHRASE_WORDS = 6
#: Bytes written at once when making the file.
WRITE_BLOCK = 4 * 1024 * 1024
#: Every space process on loopback only, found through its targets alone: no beacons, no
#: mDNS, no gateway, no TCP listener beside UDP.
LOOPBACK_NODE = ("--interface", "lo", "--no-beacon", "--no-mdns", "--no-upnp", "--no-tcp")
#: Where tools/ is, so the raw children import this module.
TOOLS = Path(__file__).resolve().parents[1]
REPO = TOOLS.parent

Report = Callable[..., None]


# -- raw baseline ------------------------------------------------------------------------


def raw_receive() -> None:
    """Child: bind, print the port, count one blast, print bytes, first and last arrival."""
    sock = _raw_socket()
    sock.bind(("127.0.0.1", 0))
    print(json.dumps({"port": sock.getsockname()[1]}), flush=True)
    buf = bytearray(65536)
    total, first, last = receive_blast(sock, buf, RAW_START_TIMEOUT)
    print(json.dumps({"bytes": total, "first": first, "last": last}), flush=True)


def raw_send(port: int) -> None:
    """Child: blast SIZE bytes in DATAGRAM-byte datagrams to port; print the start time."""
    payload = memoryview(os.urandom(SIZE))
    sock = _raw_socket()
    target = ("127.0.0.1", port)
    started = time.monotonic()
    for offset in range(0, SIZE, DATAGRAM):
        sock.sendto(payload[offset : offset + DATAGRAM], target)
    print(json.dumps({"start": started}), flush=True)


def _child(code: str) -> subprocess.Popen[str]:
    prelude = f"import sys; sys.path.insert(0, {str(TOOLS)!r}); from benchlib import space; "
    return subprocess.Popen(
        [sys.executable, "-c", prelude + code],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )


def raw_copy() -> tuple[float, float]:
    """(seconds to copy SIZE bytes at the received rate, fraction of the bytes received)."""
    receiver = _child("space.raw_receive()")
    try:
        port = _line(receiver, LINE_TIMEOUT)["port"]
        sender = _child(f"space.raw_send({int(port)})")
        started = _line(sender, LINE_TIMEOUT)["start"]
        sender.wait(LINE_TIMEOUT)
        got = _line(receiver, LINE_TIMEOUT)
        receiver.wait(LINE_TIMEOUT)
    finally:
        for proc in (receiver,):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    received = got["bytes"] / SIZE
    if not got["bytes"]:
        raise RuntimeError("the raw UDP copy received nothing")
    rate = got["bytes"] / (got["last"] - started)
    return SIZE / rate, received


def _line(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise RuntimeError(f"no output from a benchmark child within {timeout} s")
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"a benchmark child exited early (rc {proc.wait(5)})")
    return dict(json.loads(line))


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bench_space(args: Any, report: Callable[..., None]) -> None:
    """tools/bench's entry point: ``report(args, name, value, unit, baseline, ...)``."""
    rounds = 1 if args.quick else ROUNDS
    load = os.getloadavg()[0]
    raw_times, raw_fractions = [], []
    fanout: dict[int, list[float]] = {n: [] for n in PEER_COUNTS}
    chunking: dict[int, list[float]] = {n: [] for n in PEER_COUNTS}
    stalled: dict[int, list[str]] = {n: [] for n in PEER_COUNTS}
    with tempfile.TemporaryDirectory(prefix="p2pd-bench-space-") as tmp:
        for round_number in range(rounds):
            seconds, fraction = raw_copy()
            raw_times.append(seconds)
            raw_fractions.append(fraction)
            for n in PEER_COUNTS:
                try:
                    took, chunked = space_fanout(Path(tmp) / f"r{round_number}n{n}", n)
                except RuntimeError as exc:
                    stalled[n].append(str(exc))
                    continue
                fanout[n].append(took)
                chunking[n].append(chunked)
    raw = statistics.median(raw_times)
    for n in PEER_COUNTS:
        if not fanout[n]:
            report(
                args,
                f"space_fanout_64MiB_to_{n}",
                0.0,
                "s",
                raw,
                "raw_udp_copy_once",
                detail={"stalled": stalled[n]},
            )
            continue
        detail = {
            "stalled_runs": stalled[n],
            "rounds_s": [round(t, 2) for t in fanout[n]],
            "publish_spawn_to_announce_s": [round(t, 2) for t in chunking[n]],
            "raw_rounds_s": [round(t, 3) for t in raw_times],
            "raw_received_fraction": [round(f, 3) for f in raw_fractions],
            "loadavg_1min_at_start": round(load, 2),
            "aggregate_mb_s": round(n * SIZE / statistics.median(fanout[n]) / 1e6, 1),
        }
        report(
            args,
            f"space_fanout_64MiB_to_{n}",
            statistics.median(fanout[n]),
            "s",
            raw,
            "raw_udp_copy_once",
            detail=detail,
        )


def _start(
    root: Path, name: str, env: dict[str, str], action: str, *args: str
) -> subprocess.Popen[bytes]:
    base = root / name
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "p2pd",
            "--state-dir",
            str(base / "state"),
            "--json",
            "space",
            action,
            *args,
            "--data-dir",
            str(base / "data"),
            "--download-dir",
            str(base / "downloads"),
            *LOOPBACK_NODE,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=REPO,
    )


def _until(
    procs: dict[str, subprocess.Popen[bytes]],
    done: Callable[[str, dict[str, Any]], bool],
    timeout: float,
) -> None:
    """Read every child's JSON lines until ``done(name, event)`` has been true for each.

    Reads the pipes' file descriptors directly: a buffered ``readline`` after ``select``
    can leave whole lines in Python's buffer, where ``select`` no longer sees them.
    """
    waiting = set(procs)
    deadline = time.monotonic() + timeout
    fds: dict[int, str] = {}
    for name, proc in procs.items():
        assert proc.stdout is not None
        fds[proc.stdout.fileno()] = name
    pending = {name: b"" for name in procs}
    while waiting:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"space fan-out: {sorted(waiting)} not done within {timeout} s")
        ready, _, _ = select.select([fd for fd, n in fds.items() if n in waiting], [], [], left)
        for fd in ready:
            name = fds[fd]
            data = os.read(fd, READ_BLOCK)
            if not data:
                raise RuntimeError(f"space fan-out: {name} exited (rc {procs[name].wait(5)})")
            *lines, pending[name] = (pending[name] + data).split(b"\n")
            if any(done(name, json.loads(line)) for line in lines if line.strip()):
                waiting.discard(name)


def space_fanout(root: Path, peers: int) -> tuple[float, float]:
    """(seconds from the announcement to the last fetcher's file written, chunking seconds).

    Every process is up (Argon2id done, bound) before the publisher starts; fetchers name
    the earlier ones as targets, the publisher names them all.
    """
    from p2pd.passphrase import generate

    env = {**os.environ, "P2PD_PASSPHRASE": generate(PHRASE_WORDS), "PYTHONPATH": str(REPO)}
    source = root / "file.bin"
    root.mkdir(parents=True)
    with source.open("wb") as handle:
        for _ in range(SIZE // WRITE_BLOCK):
            handle.write(os.urandom(WRITE_BLOCK))
    ports = [_free_udp_port() for _ in range(peers + 1)]
    fetchers: dict[str, subprocess.Popen[bytes]] = {}
    publisher: subprocess.Popen[bytes] | None = None
    try:
        for i in range(1, peers + 1):
            targets = [a for p in ports[:i] for a in ("--target", f"127.0.0.1:{p}")]
            fetchers[f"f{i}"] = _start(
                root, f"f{i}", env, "join", "--port", str(ports[i]), *targets
            )
        _until(fetchers, lambda _, e: e.get("event") == "listening", LINE_TIMEOUT)
        targets = [a for p in ports[1:] for a in ("--target", f"127.0.0.1:{p}")]
        spawned = time.monotonic()
        publisher = _start(
            root, "publisher", env, "publish", str(source), "--port", str(ports[0]), *targets
        )
        announced = time.monotonic()

        def published(_: str, event: dict[str, Any]) -> bool:
            nonlocal announced
            announced = time.monotonic()
            return event.get("event") == "published"

        _until({"publisher": publisher}, published, LINE_TIMEOUT)
        _until(fetchers, lambda _, e: e.get("event") == "saved", LINE_TIMEOUT)
        finished = time.monotonic()
        for name in fetchers:
            written = root / name / "downloads" / source.name
            if written.stat().st_size != SIZE:
                raise RuntimeError(f"{name} wrote {written.stat().st_size} bytes")
        return finished - announced, announced - spawned
    finally:
        for proc in [*fetchers.values(), *([publisher] if publisher else [])]:
            if proc.poll() is None:
                proc.terminate()
        for proc in [*fetchers.values(), *([publisher] if publisher else [])]:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
