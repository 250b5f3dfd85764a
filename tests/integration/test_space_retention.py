"""Retention: a ``space join`` prunes the store by age, and ``space ls`` shows it."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import fresh_passphrase
from tests.integration.test_space_loopback import Space

#: Seconds any one process may run.
WAIT = 60.0


@pytest.fixture
def space(tmp_path: Path) -> Iterator[Space]:
    s = Space(tmp_path)
    try:
        yield s
    finally:
        s.close()


def run(space: Space, phrase: str, *args: str, node: bool = True) -> subprocess.Popen[str]:
    proc = space.spawn("a", phrase, *args, node=node)
    proc.wait(timeout=WAIT)
    return proc


def texts(space: Space, phrase: str) -> list[str]:
    proc = run(space, phrase, "ls", node=False)
    assert proc.stdout is not None
    return [json.loads(line).get("text") for line in proc.stdout.read().splitlines()]


def test_join_prunes_envelopes_older_than_keep_days(space: Space) -> None:
    phrase = fresh_passphrase()
    # Nobody takes it, so send fails, but the message stays in the local store.
    run(space, phrase, "send", "old news", "--timeout", "0.5")
    assert texts(space, phrase) == ["old news"]
    # The default retention (30 days) keeps it ...
    run(space, phrase, "join", "--timeout", "1", "--no-beacon")
    assert texts(space, phrase) == ["old news"]
    # ... a retention of zero days drops it at the driver's first prune.
    run(space, phrase, "join", "--timeout", "1", "--no-beacon", "--keep-days", "0")
    assert texts(space, phrase) == []
