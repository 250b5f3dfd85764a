"""With a daemon running, `p2pd send`, `listen`, `status` and `stop` go through its API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.integration.conftest import LOOPBACK_ONLY, fresh_passphrase
from tests.integration.daemon_fixture import (  # noqa: F401
    Daemons,
    daemon_fixture,
    daemons_fixture,
)


def cli(
    state_dir: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "P2PD_PASSPHRASE"}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "p2pd", "--state-dir", str(state_dir), *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        check=False,
    )


def test_send_and_listen_through_two_daemons(daemons: Daemons) -> None:
    a, b = daemons.start("a"), daemons.start("b")
    env = {"P2PD_PASSPHRASE": fresh_passphrase()}
    listener = subprocess.Popen(
        [sys.executable, "-m", "p2pd", "--state-dir", str(b.state_dir), "listen", "--count", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    try:
        sent = cli(a.state_dir, "send", "via the daemon", "--json", "--timeout", "30", env=env)
        assert sent.returncode == 0, sent.stderr
        delivered = json.loads(sent.stdout.splitlines()[-1])
        assert delivered["event"] == "delivered" and delivered["path"] == "lan"
        out, err = listener.communicate(timeout=30)
        assert listener.returncode == 0, err
        assert out.splitlines() == ["via the daemon"]
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.communicate()
    # The CLI went through the daemons: both still host the session and its peer.
    status = json.loads(cli(a.state_dir, "status", "--json").stdout)
    assert len(status["sessions"]) == 1
    assert status["sessions"][0]["peers"], status
    table = cli(a.state_dir, "status").stdout
    assert "SESSION" in table and status["sessions"][0]["id"][:16] in table
    # The WAN side: no --stun was given, no assist, no mapping asked for (--no-upnp).
    wan = status["sessions"][0]["wan"]
    assert wan["nat"] is None and wan["relays"] == [] and "portmap" not in wan
    assert "NAT not probed (no --stun)" in table


def test_status_without_daemon_is_one_clear_error(tmp_path: Path) -> None:
    result = cli(tmp_path, "status")
    assert result.returncode == 2
    assert "no daemon is running" in result.stderr


def test_stop_ends_the_daemon(daemons: Daemons) -> None:
    d = daemons.start("d")
    result = cli(d.state_dir, "stop")
    assert result.returncode == 0, result.stderr
    assert d.proc.wait(timeout=10) == 0
    assert not (d.state_dir / "daemon.json").exists()


def test_no_daemon_flag_runs_in_process(daemons: Daemons) -> None:
    d = daemons.start("d")
    result = cli(
        d.state_dir,
        "send",
        fresh_passphrase(),
        "x",
        "--no-daemon",
        "--timeout",
        "1",
        *LOOPBACK_ONLY,
    )
    assert result.returncode == 3  # in-process node found no peer; the daemon was not used
    status = json.loads(cli(d.state_dir, "status", "--json").stdout)
    assert status["sessions"] == []
