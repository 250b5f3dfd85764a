"""``p2pd space`` with a daemon running on the state directory: the commands go through it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import LOOPBACK_ONLY, fresh_passphrase
from tests.integration.daemon_fixture import Daemons, daemons_fixture  # noqa: F401
from tests.integration.test_space_loopback import ENTRY

#: Seconds a command may take (discovery, anti-entropy, a MiB).
WAIT = 60.0


def space(state: Path, phrase: str, *args: str, daemon: bool = True) -> list[dict[str, object]]:
    """Run ``space ARGS --json`` on ``state``; its events (it must exit 0)."""
    extra = [] if daemon else ["--no-daemon", "--data-dir", str(state / "data")]
    extra += ["--download-dir", str(state / "dl"), *LOOPBACK_ONLY]
    done = subprocess.run(
        [sys.executable, *ENTRY, "space", *args, "--json", "--state-dir", str(state), *extra],
        capture_output=True,
        text=True,
        timeout=WAIT,
        env=dict(os.environ, P2PD_PASSPHRASE=phrase),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_send_and_publish_through_the_daemon(
    daemons: Daemons, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("XDG_DOWNLOAD_DIR", str(tmp_path / "xdg-dl"))
    daemon = daemons.start("d")
    phrase = fresh_passphrase()
    source = tmp_path / "doc.bin"
    data = os.urandom(1024 * 1024 + 3)
    source.write_bytes(data)
    # Through the daemon: returns once the daemon stored and spreads it.
    sent = space(daemon.state_dir, phrase, "send", "via daemon")
    assert sent[0]["event"] == "published"
    # A peer of its own (no daemon) receives it, then the daemon publishes a file to it.
    peer = tmp_path / "peer"
    got = space(peer, phrase, "join", "--count", "1", "--timeout", "50", daemon=False)
    assert [e["text"] for e in got if e["event"] == "message"] == ["via daemon"]
    # Another identity: a restarted node is not yet seen as a new session (see the docs).
    # It leaves after the message and the file.
    other = tmp_path / "other"
    dirs = ["--data-dir", str(other / "data"), "--download-dir", str(other / "dl")]
    command = [sys.executable, *ENTRY, "space", "join", "--json", "--state-dir", str(other)]
    with subprocess.Popen(
        [*command, "--no-daemon", *dirs, "--count", "2", "--timeout", "50", *LOOPBACK_ONLY],
        env=dict(os.environ, P2PD_PASSPHRASE=phrase),
        stdout=subprocess.PIPE,
        text=True,
    ) as joiner:
        published = space(daemon.state_dir, phrase, "publish", str(source), "--timeout", "50")
        assert published[-1]["event"] == "peer_has_file"
        out, _ = joiner.communicate(timeout=WAIT)
    saved = [json.loads(line) for line in out.splitlines()]
    path = next(Path(str(e["path"])) for e in saved if e["event"] == "saved")
    assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest()


def test_the_daemon_fetches_every_published_file_into_its_download_dir(
    daemons: Daemons, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    downloads = tmp_path / "daemon-downloads"
    daemon = daemons.start("d", "--download-dir", str(downloads))
    phrase = fresh_passphrase()
    space(daemon.state_dir, phrase, "send", "the daemon joins the space")
    source = tmp_path / "report.pdf"
    data = os.urandom(700 * 1024)
    source.write_bytes(data)
    peer = tmp_path / "peer"
    published = space(peer, phrase, "publish", str(source), "--timeout", "50", daemon=False)
    assert published[-1]["event"] == "peer_has_file"
    saved = downloads / "report.pdf"
    assert hashlib.sha256(saved.read_bytes()).digest() == hashlib.sha256(data).digest()


def test_a_daemon_told_not_to_fetch_leaves_files_alone(
    daemons: Daemons, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    downloads = tmp_path / "daemon-downloads"
    daemon = daemons.start("d", "--download-dir", str(downloads), "--no-fetch")
    phrase = fresh_passphrase()
    space(daemon.state_dir, phrase, "send", "the daemon joins the space")
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(300 * 1024))
    peer = tmp_path / "peer"
    done = subprocess.run(
        [sys.executable, *ENTRY, "space", "publish", str(source), "--json", "--timeout", "6",
         "--state-dir", str(peer), "--no-daemon", "--data-dir", str(peer / "data"),
         "--download-dir", str(peer / "dl"), *LOOPBACK_ONLY],
        capture_output=True, text=True, timeout=WAIT,
        env=dict(os.environ, P2PD_PASSPHRASE=phrase), check=False,
    )  # fmt: skip
    assert done.returncode == 3, done.stderr  # nobody took the file
    assert not downloads.exists() or not any(downloads.iterdir())
