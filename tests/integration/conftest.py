"""Real p2pd processes on loopback: helpers to start them and read what they print.

LAN discovery is restricted to ``lo`` (``--interface lo --no-mdns``) and the gateway is never
asked for a port mapping (``--no-upnp``): tests in the root namespace must never send to the
machine's real networks.  mDNS and port mapping are exercised in the network lab instead.
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.netlab import tornet

LOOPBACK_ONLY = ("--interface", "lo", "--no-mdns", "--no-upnp")


def fresh_passphrase() -> str:
    """A strong passphrase unique to one test, so concurrent tests never meet."""
    words = [
        "amber",
        "brisk",
        "cobalt",
        "dune",
        "ember",
        "fjord",
        "gale",
        "harbor",
        "iris",
        "juniper",
        "kelp",
        "lumen",
        "mesa",
        "nectar",
        "onyx",
        "pylon",
        "quartz",
        "raven",
    ]
    return "-".join(secrets.choice(words) for _ in range(4)) + "-" + secrets.token_hex(4)


Reader = tuple[queue.Queue[str], threading.Thread]


def _readers(proc: subprocess.Popen[str]) -> dict[bool, Reader]:
    """The reader threads of ``proc``, kept on the object itself: pytest may import this
    conftest twice (as ``conftest`` and as ``tests.integration.conftest``), so a module-level
    table would not be shared between a fixture and a test."""
    table: dict[bool, Reader] = proc.__dict__.setdefault("p2pd_readers", {})
    return table


def read_line(proc: subprocess.Popen[str], timeout: float, *, stdout: bool = False) -> str:
    """The next line of ``proc``'s stderr (or stdout), or AssertionError after ``timeout`` s.

    A reader thread per stream feeds a queue: ``select`` on a buffered text stream would
    miss lines already read into Python's buffer.
    """
    readers = _readers(proc)
    if stdout not in readers:
        stream = proc.stdout if stdout else proc.stderr
        assert stream is not None
        lines: queue.Queue[str] = queue.Queue()

        def pump() -> None:
            for line in stream:
                lines.put(line)

        thread = threading.Thread(target=pump, daemon=True)
        readers[stdout] = (lines, thread)
        thread.start()
    try:
        return readers[stdout][0].get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"no output within {timeout} s") from None


def _drain(lines: queue.Queue[str]) -> str:
    out: list[str] = []
    while True:
        try:
            out.append(lines.get_nowait())
        except queue.Empty:
            return "".join(out)


class Procs:
    """Starts p2pd processes and kills whatever is left at the end of the test."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[str]] = []

    def start(
        self,
        name: str,
        *args: str,
        env: dict[str, str] | None = None,
        stdin: str | None = None,
        interactive: bool = False,
    ) -> subprocess.Popen[str]:
        full_env = {k: v for k, v in os.environ.items() if k != "P2PD_PASSPHRASE"}
        full_env.update(env or {})
        proc = subprocess.Popen(
            [sys.executable, "-m", "p2pd", "--state-dir", str(self.tmp / name), *args],
            stdin=subprocess.PIPE if stdin is not None or interactive else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=full_env,
        )
        if stdin is not None:
            assert proc.stdin is not None
            proc.stdin.write(stdin)
            proc.stdin.close()
            proc.stdin = None
        self.procs.append(proc)
        return proc

    def finish(self, proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
        """Wait for ``proc``; its exit code and what it printed that read_line did not take."""
        readers = {flag: _readers(proc).pop(flag, None) for flag in (True, False)}
        if not any(readers.values()):
            out, err = proc.communicate(timeout=timeout)
            return proc.returncode, out, err
        proc.wait(timeout=timeout)
        texts: dict[bool, str] = {}
        for flag, stream in ((True, proc.stdout), (False, proc.stderr)):
            reader = readers[flag]
            if reader is None:
                assert stream is not None
                texts[flag] = stream.read()
                continue
            lines, thread = reader
            thread.join(timeout=timeout)
            texts[flag] = _drain(lines)
        return proc.returncode, texts[True], texts[False]

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.close()


# --- the private Tor network -----------------------------------------------------------


@pytest.fixture(scope="session")
def net() -> Iterator[tornet.TorNet]:
    """One private, offline Tor network (tests/netlab/tornet.py) for every Tor test here,
    with two bootstrapped clients ``a`` and ``b``.  Waiting for them also means the network
    has a consensus listing every relay before any p2pd tor starts, as the real one has.
    Skips without tor, fails in CI (tornet.require_tor)."""
    tornet.require_tor()
    with tornet.TorNet(clients=("a", "b")) as network:
        yield network


@pytest.fixture
def torrc(net: tornet.TorNet, tmp_path: Path) -> Path:
    """A ``--tor-config`` file pointing a p2pd-launched tor at the network."""
    return net.write_p2pd_torrc(tmp_path / "torrc")


def json_events(out: str) -> list[dict[str, Any]]:
    """The ``--json`` events a command printed."""
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]
