"""The p2pd command as a user runs it: real processes, real stdout/stderr, real exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from transports.onion import OnionIdentity

SECRET = "correct horse battery staple"
VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "derive.json").read_text("utf-8"))


def p2pd(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "P2PD_PASSPHRASE"}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "p2pd", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=60,
        check=False,
    )


def test_derive_json_is_public_and_matches_the_vectors() -> None:
    result = p2pd("derive", SECRET, "--json")
    assert result.returncode == 0, result.stderr
    obj = json.loads(result.stdout)
    vector = VECTORS["vectors"][0]
    assert obj["port"] == vector["port"]
    assert obj["rendezvous_id"] == vector["rendezvous_id"]
    assert obj["space_id"] == vector["space_id"]
    # The onion both peers meet at is the address of the vector's onion seed (RFC 8032 key).
    seed = bytes.fromhex(vector["onion_seed"])
    assert obj["onion"] == OnionIdentity.from_seed(seed).address
    assert len(obj["onion"]) == 56 + len(".onion")
    for name in ("psk", "tag_key", "mac1_key", "space_key", "onion_seed"):
        assert vector[name] not in result.stdout + result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert "visible to other local users" in result.stderr


def test_every_source_gives_the_same_answer(tmp_path: Path) -> None:
    phrase_file = tmp_path / "p"
    phrase_file.write_text(SECRET + "\n")
    outputs = {
        p2pd("derive", SECRET, "--json").stdout,
        p2pd("--json", "derive", "-", stdin=SECRET + "\n").stdout,
        p2pd("derive", "--json", env={"P2PD_PASSPHRASE": SECRET}).stdout,
        p2pd("derive", "--passphrase-file", str(phrase_file), "--json").stdout,
    }
    assert len(outputs) == 1


def test_weak_passphrase_is_one_line_and_exit_2() -> None:
    result = p2pd("derive", "hunter22")
    assert result.returncode == 2
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.startswith("p2pd: error")]
    assert len(lines) == 1 and "hunter22" not in lines[0]


def test_no_passphrase_at_all_is_exit_2() -> None:
    result = p2pd("derive", stdin="")
    assert result.returncode == 2
    assert "P2PD_PASSPHRASE" in result.stderr


def test_state_dir_before_or_after_subcommand(tmp_path: Path) -> None:
    before = p2pd("--state-dir", str(tmp_path), "identity").stdout
    after = p2pd("identity", "--state-dir", str(tmp_path)).stdout
    assert before == after and len(before.strip().split("-")) == 8


def test_phrase_generates_a_strong_passphrase() -> None:
    phrase = p2pd("phrase").stdout.strip()
    assert p2pd("derive", "-", stdin=phrase).returncode == 0


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs Linux /proc")
def test_process_title_hides_the_passphrase() -> None:
    """A real process with the passphrase in argv: /proc shows only 'p2pd derive'."""
    code = (
        "import sys; from p2pd.passphrase import hide_arguments; hide_arguments(sys.argv);"
        "print(open('/proc/self/cmdline','rb').read().replace(b'\\0', b' ').decode())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, "derive", SECRET, "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert SECRET not in out
    assert out.strip() == "p2pd derive"
