"""Passphrase sources and their precedence; the warning for argv; nothing leaks."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from p2pd.errors import PassphraseSourceError
from p2pd.passphrase import ARGV_WARNING, PASSPHRASE_ENV, read_passphrase

SECRET = "correct horse battery staple"


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_argument_warns_once_on_stderr() -> None:
    err = io.StringIO()
    got = read_passphrase(SECRET, stderr=err, environ={})
    assert (got.passphrase, got.source) == (SECRET, "argv")
    assert err.getvalue().count(ARGV_WARNING) == 1
    assert SECRET not in err.getvalue()


def test_dash_reads_first_line_of_stdin_without_warning() -> None:
    err = io.StringIO()
    got = read_passphrase("-", stdin=io.StringIO(SECRET + "\nrest\n"), stderr=err, environ={})
    assert (got.passphrase, got.source) == (SECRET, "stdin")
    assert err.getvalue() == ""


def test_file_wins_over_everything(tmp_path: Path) -> None:
    path = tmp_path / "phrase"
    path.write_text(SECRET + "\n", encoding="utf-8")
    got = read_passphrase("other words here now", passphrase_file=str(path), environ={})
    assert (got.passphrase, got.source) == (SECRET, "file")


def test_environment_is_read_and_removed() -> None:
    env = {PASSPHRASE_ENV: SECRET}
    got = read_passphrase(None, environ=env, stdin=io.StringIO(""))
    assert (got.passphrase, got.source) == (SECRET, "env")
    assert PASSPHRASE_ENV not in env


def test_prompt_when_stdin_is_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("getpass.getpass", lambda prompt, stream: SECRET)
    got = read_passphrase(None, environ={}, stdin=FakeTty(), stderr=io.StringIO())
    assert got.source == "prompt"


def test_no_source_is_one_clear_error() -> None:
    with pytest.raises(PassphraseSourceError, match="P2PD_PASSPHRASE"):
        read_passphrase(None, environ={}, stdin=io.StringIO(""))


def test_missing_file_and_empty_stdin_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(PassphraseSourceError, match="cannot read"):
        read_passphrase(None, passphrase_file=str(tmp_path / "nope"), environ={})
    with pytest.raises(PassphraseSourceError, match="no passphrase"):
        read_passphrase("-", stdin=io.StringIO("\n"), environ={})


def test_repr_hides_the_passphrase() -> None:
    got = read_passphrase("-", stdin=io.StringIO(SECRET), environ={})
    assert SECRET not in repr(got)
