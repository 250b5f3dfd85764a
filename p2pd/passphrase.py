"""Getting the passphrase from the user without leaking it.

Why: a passphrase on the command line is readable by every local user through the
process list (``ps``, ``/proc/PID/cmdline``) — croc's CVE-2023-43621 — and it stays in
shell history.  p2pd still accepts it there, because that is what users type first, but:

* the process title is rewritten at start-up (:func:`hide_arguments`) so that only
  ``p2pd SUBCOMMAND`` remains visible; positional arguments (passphrase *and* message)
  disappear from ``/proc/PID/cmdline``.  A window of a few milliseconds between ``exec``
  and the rewrite remains; docs/threat-model.md says so;
* a warning says so once on stderr, naming the safer sources;
* the safer sources are, in order of precedence: ``--passphrase-file FILE`` (first line),
  ``-`` in place of the passphrase (first line of stdin), the ``P2PD_PASSPHRASE``
  environment variable (removed from our environment once read so children do not
  inherit it), and an interactive prompt when stdin is a terminal.
"""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import setproctitle

from p2pd.errors import PassphraseSourceError

#: Environment variable read when no passphrase is given on the command line.
PASSPHRASE_ENV = "P2PD_PASSPHRASE"  # noqa: S105  (a variable name, not a password)
#: Placeholder meaning "read the passphrase from stdin".
STDIN_MARK = "-"
#: Upper bound on a passphrase read from a file or stdin, against mistakes like a binary file.
MAX_PASSPHRASE_BYTES = 4096
#: The warning printed once when the passphrase came from the command line.
ARGV_WARNING = (
    "p2pd: note: a passphrase given on the command line is visible to other local users "
    "for an instant and stays in your shell history; it is now hidden from the process "
    f"list. Prefer {PASSPHRASE_ENV}=..., --passphrase-file FILE, or '-' to read stdin."
)


@dataclass(frozen=True, slots=True)
class Sourced:
    """A passphrase and where it came from (``argv``, ``file``, ``stdin``, ``env``, ``prompt``)."""

    passphrase: str
    source: str

    def __repr__(self) -> str:
        return f"Sourced(passphrase=<hidden>, source={self.source!r})"


def hide_arguments(argv: Sequence[str]) -> str:
    """Rewrite the process title to the program and subcommand only; return the new title.

    Options and positional arguments are dropped alike: a message is as private as the
    passphrase, and an option value may be a passphrase typed in the wrong place.
    """
    words = ["p2pd"]
    for arg in argv[1:]:
        if arg.startswith("-"):
            continue
        if arg.isalpha() and arg.islower() and len(arg) <= 12:
            words.append(arg)  # the subcommand (and "space ls" style sub-subcommands)
        break
    title = " ".join(words)
    setproctitle.setproctitle(title)
    return title


def _first_line(stream: TextIO, what: str) -> str:
    data = stream.read(MAX_PASSPHRASE_BYTES + 1)
    if len(data) > MAX_PASSPHRASE_BYTES:
        raise PassphraseSourceError(f"the passphrase from {what} is longer than 4096 bytes")
    line = data.splitlines()[0] if data else ""
    if not line.strip():
        raise PassphraseSourceError(f"no passphrase found in {what}")
    return line


def read_passphrase(
    argument: str | None,
    *,
    passphrase_file: str | None = None,
    stdin: TextIO | None = None,
    stderr: TextIO | None = None,
    environ: dict[str, str] | os._Environ[str] | None = None,
    prompt: bool = True,
) -> Sourced:
    """Find the passphrase among the sources, in their order of precedence."""
    stdin = sys.stdin if stdin is None else stdin
    stderr = sys.stderr if stderr is None else stderr
    environ = os.environ if environ is None else environ
    if passphrase_file is not None:
        path = Path(passphrase_file).expanduser()
        try:
            with path.open(encoding="utf-8") as handle:
                return Sourced(_first_line(handle, str(path)), "file")
        except OSError as exc:
            raise PassphraseSourceError(
                f"cannot read passphrase file {path}: {exc.strerror}"
            ) from None
        except UnicodeDecodeError:
            raise PassphraseSourceError(f"passphrase file {path} is not UTF-8 text") from None
    if argument == STDIN_MARK:
        return Sourced(_first_line(stdin, "standard input"), "stdin")
    if argument:
        print(ARGV_WARNING, file=stderr)
        return Sourced(argument, "argv")
    from_env = environ.pop(PASSPHRASE_ENV, None)
    if from_env:
        return Sourced(from_env, "env")
    if prompt and stdin.isatty():
        try:
            return Sourced(getpass.getpass("Passphrase: ", stream=stderr), "prompt")
        except EOFError:
            pass
    raise PassphraseSourceError(
        "no passphrase: give it as an argument, with --passphrase-file FILE, "
        f"as '-' to read standard input, or in {PASSPHRASE_ENV}"
    )


def generate(words: int) -> str:
    """A fresh passphrase of ``words`` words from the EFF long list (12.9 bits per word)."""
    from xkcdpass import xkcd_password as xp  # noqa: PLC0415  (only the phrase command needs it)

    wordlist = xp.generate_wordlist(wordfile=xp.locate_wordfile("eff-long"))
    return str(xp.generate_xkcdpassword(wordlist, numwords=words, delimiter="-"))
