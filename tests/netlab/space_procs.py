"""EtherSync peers: real ``p2pd space`` processes in lab namespaces, their stores from outside.

Theory of operation: `two_segments` builds five hosts on two bridged LANs joined by a plain
router (no NAT): ``peer1``..``peer3`` on 10.7.0.0/24, ``peer4`` and ``peer5`` on 10.8.0.0/24.
LAN beacons and mDNS stay on their own segment, so a peer learns of the other segment only
through bootstrap addresses (``HOST:PORT`` at the passphrase's derived port).  A `SpacePeer`
is one host with its own state, data and download directories under the test's ``tmp``;
each process it starts is a real ``python -m p2pd space ...`` (`P2pd.start`: killed at lab
teardown, passphrase kept out of the environment).

The store is read from outside with the standard ``sqlite3`` module on a read-only URI
(never while a test expects the owner to write it, except for counts, which WAL readers
see consistently): that is how the tests show what a peer stored, what it had verified
before it was killed, and it is how `corrupt_chunk` damages one stored chunk before its
owner serves it.  Nothing here opens a socket.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .lab import Lab
from .netns import LabError
from .nodes import Host
from .p2pd_procs import REPO

# The two segments and the router between them (wan side on A, lan side on B).
SEGMENT_A = ("lana", "10.7.0.0/24")
SEGMENT_B = ("lanb", "10.8.0.0/24")
ROUTER = "rtr"
# Hosts per segment: three on A, two on B.
HOSTS_A = ("peer1", "peer2", "peer3")
HOSTS_B = ("peer4", "peer5")
# Bytes read or written at once when making or hashing a big file (bounded memory).
IO_BLOCK = 4 * 1024 * 1024
# Seconds between two looks at a store or an output file while waiting for a condition.
POLL_INTERVAL = 0.05
# Sub-directories of a peer's directory under the test's tmp.
STATE, DATA, DOWNLOADS = "state", "data", "downloads"
# Where a store lives under a data directory (ethersync.store.default_store_path).
STORE_DIR = "ethersync"


def two_segments(lab: Lab) -> list[Host]:
    """Five hosts on two segments joined by a router without NAT; peer1..peer5 in order.

    The router is made first, so it is ``.1`` on both segments.  Segment B's hosts get it as
    their default route (`Lab.router`); segment A is the router's WAN side, so A's hosts get
    a route to B's subnet through it.
    """
    seg_a = lab.segment(*SEGMENT_A)
    seg_b = lab.segment(*SEGMENT_B)
    router = lab.router(ROUTER, seg_a, seg_b, None)
    assert router.wan is not None
    hosts = []
    for names, segment in ((HOSTS_A, seg_a), (HOSTS_B, seg_b)):
        for name in names:
            host = lab.host(name)
            lab.attach(host, segment)
            hosts.append(host)
    for host in hosts[: len(HOSTS_A)]:
        lab.check_output(host, ["ip", "route", "add", SEGMENT_B[1], "via", router.wan.address])
    return hosts


# --- files ---------------------------------------------------------------------------------


def random_file(path: Path, size: int) -> str:
    """Write ``size`` random bytes to ``path``; return their SHA-256 hex digest."""
    digest = hashlib.sha256()
    with path.open("wb") as handle:
        left = size
        while left:
            block = os.urandom(min(IO_BLOCK, left))
            digest.update(block)
            handle.write(block)
            left -= len(block)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(IO_BLOCK):
            digest.update(block)
    return digest.hexdigest()


# --- stores --------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreCounts:
    """What one store holds: envelopes (with a body), chunks, verified (file, index) rows."""

    envelopes: int
    chunks: int
    verified: int


def store_files(data_dir: Path) -> list[Path]:
    """Every space store under a data directory (none if the peer never stored anything)."""
    return sorted((data_dir / STORE_DIR).glob("*.sqlite3"))


def _connect(path: Path, *, write: bool = False) -> sqlite3.Connection:
    mode = "rw" if write else "ro"
    return sqlite3.connect(f"file:{path}?mode={mode}", uri=True, isolation_level=None)


def store_counts(data_dir: Path) -> StoreCounts:
    """Counts summed over the peer's stores; zero for a store not created or set up yet."""
    envelopes = chunks = verified = 0
    for path in store_files(data_dir):
        db = _connect(path)
        try:
            envelopes += db.execute("SELECT COUNT(blob) FROM envelopes").fetchone()[0]
            chunks += db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
            verified += db.execute("SELECT COUNT(*) FROM verified").fetchone()[0]
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):  # the owner is creating the schema
                raise
        finally:
            db.close()
    return StoreCounts(envelopes, chunks, verified)


def corrupt_chunk(data_dir: Path) -> bytes:
    """Flip one byte in the middle of one stored chunk (its owner must not be running).

    The row keeps its hash and its ``verified`` entries, so the owner still believes it
    has the chunk and serves it; only a fetcher's check can notice.  Returns the hash.
    """
    (path,) = store_files(data_dir)
    db = _connect(path, write=True)
    try:
        row = db.execute("SELECT hash, blob FROM chunks ORDER BY hash LIMIT 1").fetchone()
        if row is None:
            raise LabError(f"no chunk to corrupt in {path}")
        chunk_hash, blob = bytes(row[0]), bytearray(row[1])
        blob[len(blob) // 2] ^= 0xFF
        db.execute("UPDATE chunks SET blob = ? WHERE hash = ?", (bytes(blob), chunk_hash))
    finally:
        db.close()
    return chunk_hash


# --- processes -----------------------------------------------------------------------------

# Lines of a process's stderr kept for a failure message.
STDERR_TAIL = 40
# Events that repeat during a transfer; a failure message shows only the last one.
PROGRESS_EVENTS = frozenset({"progress", "upload"})


class Events:
    """Every JSON line a process prints on stdout, collected by a thread as it arrives.

    A second thread drains stderr (keeping its tail for failure messages) so a chatty
    process never blocks on a full pipe.  `wait` blocks on a condition variable until an
    event matches, the process exits, or the timeout passes: no polling.
    """

    def __init__(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        self.name = name
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self.stderr: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
        self._done = False
        self._changed = threading.Condition()
        assert proc.stdout is not None and proc.stderr is not None
        self._threads = [
            threading.Thread(target=self._read_stdout, args=(proc.stdout,), daemon=True),
            threading.Thread(target=self._read_stderr, args=(proc.stderr,), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _read_stdout(self, pipe: IO[bytes]) -> None:
        for raw in pipe:
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            if isinstance(event, dict):
                event["_t"] = time.monotonic()
                with self._changed:
                    self.events.append(event)
                    self._changed.notify_all()
        with self._changed:
            self._done = True
            self._changed.notify_all()

    def _read_stderr(self, pipe: IO[bytes]) -> None:
        for raw in pipe:
            self.stderr.append(raw.decode(errors="replace").rstrip())

    def wait(
        self, what: str, match: Callable[[dict[str, Any]], bool], timeout: float
    ) -> dict[str, Any]:
        """The first event (old or new) for which ``match`` is true; LabError if none comes."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for event in self.events[seen:]:
                    if match(event):
                        return event
                seen = len(self.events)
                left = deadline - time.monotonic()
                if self._done or left <= 0:
                    why = "exited" if self._done else f"timed out after {timeout} s"
                    raise LabError(
                        f"{self.name}: {why} waiting for {what}\n{self.summary()}\n{self.tail()}"
                    )
                self._changed.wait(left)

    def of(self, kind: str) -> list[dict[str, Any]]:
        with self._changed:
            return [e for e in self.events if e.get("event") == kind]

    def summary(self) -> str:
        """Every event but progress lines, and the last progress line (for failures)."""
        with self._changed:
            events = list(self.events)
        progress = [e for e in events if e.get("event") in PROGRESS_EVENTS]
        lines = [json.dumps(e) for e in events if e.get("event") not in PROGRESS_EVENTS]
        if progress:
            lines.append(f"last of {len(progress)} progress lines: {json.dumps(progress[-1])}")
        return "\n".join(lines)

    def tail(self) -> str:
        return "\n".join(self.stderr)


# --- peers ---------------------------------------------------------------------------------

# Node options of every space process: discovery on the lab segment only by beacons (mDNS
# adds nothing here and costs CPU), no gateway to ask for a port mapping.
NODE_OPTIONS = ("--no-mdns", "--no-upnp")
# Seconds a one-shot command (``space peers add``) may take.
ONE_SHOT_TIMEOUT = 30.0


@dataclass
class SpacePeer:
    """One lab host taking part in a space, with its own directories under ``root``."""

    lab: Lab
    host: Host
    root: Path

    @property
    def state_dir(self) -> Path:
        return self.root / STATE

    @property
    def data_dir(self) -> Path:
        return self.root / DATA

    @property
    def download_dir(self) -> Path:
        return self.root / DOWNLOADS

    def argv(self, action: str, *args: str) -> list[str]:
        return [
            sys.executable, "-m", "p2pd", "--state-dir", str(self.state_dir), "--json",
            "space", action, *args,
        ]  # fmt: skip

    def start(
        self, action: str, phrase: str, *args: str, positional: tuple[str, ...] = ()
    ) -> Events:
        """``p2pd space ACTION PHRASE [POSITIONAL] ARGS`` with this peer's directories."""
        dirs = ("--data-dir", str(self.data_dir), "--download-dir", str(self.download_dir))
        env = {k: v for k, v in os.environ.items() if k != "P2PD_PASSPHRASE"}
        proc: subprocess.Popen[bytes] = self.lab.run(
            self.host,
            self.argv(action, phrase, *positional, *dirs, *NODE_OPTIONS, *args),
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        return Events(f"{self.host.name} space {action}", proc)

    def join(self, phrase: str, *args: str) -> Events:
        """Sync the space in the foreground, fetching every announced file."""
        return self.start("join", phrase, *args)

    def publish(self, phrase: str, path: Path, *args: str) -> Events:
        """Publish ``path``; the process stays until one peer holds the whole file."""
        return self.start("publish", phrase, *args, positional=(str(path),))

    def add_bootstrap(self, *addresses: str) -> None:
        """``space peers add HOST:PORT`` for each address (tried at every later start)."""
        for address in addresses:
            self.lab.check_output(
                self.host, self.argv("peers", "add", address), timeout=ONE_SHOT_TIMEOUT
            )

    def downloaded(self) -> list[Path]:
        if not self.download_dir.exists():
            return []
        return sorted(p for p in self.download_dir.iterdir() if p.is_file())


def space_peers(lab: Lab, hosts: list[Host], tmp: Path) -> list[SpacePeer]:
    return [SpacePeer(lab, host, tmp / host.name) for host in hosts]


def stop(events: Events, timeout: float = ONE_SHOT_TIMEOUT) -> int:
    """SIGTERM a space process (it leaves cleanly) and return its exit code."""
    if events.proc.poll() is None:
        events.proc.terminate()
    return events.proc.wait(timeout)


def kill(events: Events) -> None:
    """SIGKILL a space process: no chance to flush or say goodbye."""
    events.proc.send_signal(signal.SIGKILL)
    events.proc.wait(ONE_SHOT_TIMEOUT)


def wait_for(what: str, condition: Callable[[], bool], timeout: float) -> None:
    """Poll ``condition()`` (a store or counter read) until true; LabError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(POLL_INTERVAL)


def count_bytes(lab: Lab, host: Host, rules: dict[str, str]) -> None:
    """Count, in host's input hook, the bytes of packets matching each named nft match."""
    counters = "\n".join(f"counter {name} {{}}" for name in rules)
    matches = "\n".join(f'{match} counter name "{name}"' for name, match in rules.items())
    lab.nft(
        host,
        f"table inet space_probe {{\n{counters}\nchain input {{\n"
        f"type filter hook input priority filter; policy accept;\n{matches}\n}}\n}}\n",
    )


def udp_from(ip: str) -> str:
    """The nft match of UDP from one address."""
    return f"ip saddr {ip} meta l4proto udp"


def bytes_from(lab: Lab, host: Host, name: str) -> int:
    """Bytes counted so far by a `count_bytes` counter."""
    listing = json.loads(
        lab.check_output(host, ["nft", "-j", "list", "counter", "inet", "space_probe", name])
    )
    for item in listing["nftables"]:
        if "counter" in item:
            return int(item["counter"]["bytes"])
    raise LabError(f"no counter {name} in {host.name}")
