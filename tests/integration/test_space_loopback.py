"""``p2pd space``: real processes on loopback share messages and files in a space."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ethersync.chunks import sanitize_filename
from tests.integration.conftest import LOOPBACK_ONLY, Procs, fresh_passphrase, read_line

#: How the space commands are started (``-m p2pd`` once the main parser registers them).
ENTRY = ("-m", "p2pd")
#: Seconds any one awaited event may take (discovery, anti-entropy, a few MiB).
EVENT_WAIT = 30.0
#: Bytes of the published file: several 256 KiB chunks, not a multiple of the chunk size.
FILE_SIZE = 3 * 1024 * 1024 + 12345
#: A name with characters sanitize_filename replaces.
FILE_NAME = 're:port?"v1".bin'

Proc = subprocess.Popen[str]


class Space(Procs):
    """Starts ``space`` processes, each with its own state, data and download dirs
    (``close`` kills what is left, as for Procs)."""

    def dirs(self, name: str) -> list[str]:
        base = self.tmp / name
        return [
            "--state-dir",
            str(base / "state"),
            "--data-dir",
            str(base / "data"),
            "--download-dir",
            str(base / "dl"),
        ]

    def spawn(self, name: str, passphrase: str, *args: str, node: bool = True) -> Proc:
        env = dict(os.environ, P2PD_PASSPHRASE=passphrase)
        extra = [*LOOPBACK_ONLY, "--no-daemon"] if node else []
        dirs = self.dirs(name)[: 2 if args[0] == "peers" else None]
        proc = subprocess.Popen(
            [sys.executable, *ENTRY, "space", *args, "--json", *dirs, *extra],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.procs.append(proc)
        return proc


@pytest.fixture
def space(tmp_path: Path) -> Iterator[Space]:
    s = Space(tmp_path)
    try:
        yield s
    finally:
        s.close()


def wait_for(proc: Proc, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The first JSON event on ``proc``'s stdout that ``match`` accepts."""
    while True:
        event: dict[str, Any] = json.loads(read_line(proc, EVENT_WAIT, stdout=True))
        if match(event):
            return event


def collect(proc: Proc, kinds: set[str]) -> dict[str, dict[str, Any]]:
    """The first event of each of ``kinds`` on ``proc``'s stdout, in whatever order."""
    seen: dict[str, dict[str, Any]] = {}
    while set(seen) != kinds:
        event = wait_for(proc, lambda e: e.get("event") in kinds - set(seen))
        seen[event["event"]] = event
    return seen


def is_event(kind: str) -> Callable[[dict[str, Any]], bool]:
    return lambda event: event.get("event") == kind


def test_messages_and_files_spread_and_reach_a_late_joiner(space: Space, tmp_path: Path) -> None:
    phrase = fresh_passphrase()
    data = os.urandom(FILE_SIZE)
    source = tmp_path / FILE_NAME
    source.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    a = space.spawn("a", phrase, "join")
    b = space.spawn("b", phrase, "join")
    for proc in (a, b):
        wait_for(proc, is_event("listening"))
    publisher = space.spawn("pub", phrase, "publish", str(source), "--timeout", "60")
    published = wait_for(publisher, is_event("published"))
    assert publisher.wait(timeout=EVENT_WAIT * 2) == 0
    sender = space.spawn("snd", phrase, "send", "hello space", "--timeout", "60")
    assert sender.wait(timeout=EVENT_WAIT * 2) == 0
    authors = set()
    for proc in (a, b):
        seen = collect(proc, {"saved", "message"})
        assert seen["saved"]["id"] == published["id"]
        path = Path(seen["saved"]["path"])
        assert path.name == sanitize_filename(FILE_NAME) and path.parent.name == "dl"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
        assert seen["message"]["text"] == "hello space" and not seen["message"]["local"]
        authors.add(seen["message"]["author"])
    # The publisher and the sender are gone: a late joiner gets both from a and b.
    late = space.spawn("late", phrase, "join")
    other = fresh_passphrase()
    stranger = space.spawn("stranger", other, "join", "--timeout", "10")
    seen = collect(late, {"saved", "message"})
    assert hashlib.sha256(Path(seen["saved"]["path"]).read_bytes()).hexdigest() == digest
    assert seen["message"]["text"] == "hello space"
    listing = space.spawn("late", phrase, "ls", node=False)
    out, _ = listing.communicate(timeout=EVENT_WAIT)
    rows = [json.loads(line) for line in out.splitlines()]
    assert {row["kind"] for row in rows} == {"msg", "file"}
    assert authors <= {row["author"] for row in rows}
    assert len({row["author"] for row in rows}) == 2  # publisher and sender devices
    assert all(row["complete"] for row in rows if row["kind"] == "file")
    # Another passphrase: the node handshake fails, so nothing arrives or is stored.
    assert stranger.wait(timeout=EVENT_WAIT) == 0
    events = [json.loads(line) for line in stranger.stdout or []]
    assert {e["event"] for e in events} == {"listening"}
    assert not (tmp_path / "stranger" / "dl").exists()
    for key in (phrase, other):
        listing = space.spawn("stranger", key, "ls", node=False)
        out, _ = listing.communicate(timeout=EVENT_WAIT)
        assert listing.returncode == 0 and out == ""


def test_publish_ends_when_a_fetcher_that_leaves_at_once_has_the_file(
    space: Space, tmp_path: Path
) -> None:
    phrase = fresh_passphrase()
    source = tmp_path / "small.bin"
    source.write_bytes(os.urandom(FILE_SIZE // 3))
    fetcher = space.spawn("f", phrase, "join", "--count", "1", "--timeout", "60")
    wait_for(fetcher, is_event("listening"))
    publisher = space.spawn("p", phrase, "publish", str(source), "--timeout", "60")
    assert publisher.wait(timeout=EVENT_WAIT * 2) == 0
    assert fetcher.wait(timeout=EVENT_WAIT) == 0


def test_send_without_a_peer_exits_3(space: Space) -> None:
    proc = space.spawn("alone", fresh_passphrase(), "send", "nobody", "--timeout", "1")
    out, err = proc.communicate(timeout=EVENT_WAIT)
    assert proc.returncode == 3
    assert "no peer took the message" in err
    assert json.loads(out.splitlines()[0])["event"] == "published"


def test_bootstrap_peers_are_kept(space: Space) -> None:
    for action in (("add", "192.0.2.7:4000"), ("add", "192.0.2.8:4000"), ("rm", "192.0.2.7:4000")):
        proc = space.spawn("p", "unused", "peers", *action, node=False)
        assert proc.wait(timeout=EVENT_WAIT) == 0
    proc = space.spawn("p", "unused", "peers", "ls", node=False)
    out, _ = proc.communicate(timeout=EVENT_WAIT)
    assert [json.loads(line)["addr"] for line in out.splitlines()] == ["192.0.2.8:4000"]
