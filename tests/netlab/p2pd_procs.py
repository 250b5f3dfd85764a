"""Real ``p2pd`` processes inside lab namespaces: start them, read their stderr, collect results.

Theory of operation: every process is ``python -m p2pd --state-dir DIR ...`` started with
`Lab.run` (so lab teardown kills it) from the repository root (so this checkout, not an
installed copy, is imported), with ``P2PD_PASSPHRASE`` removed from its environment.  Pipes
are binary: a test that compares bytes (a 10 MiB message) sees exactly what was printed.
Status lines come on stderr; `read_err_line` reads the raw pipe a byte at a time, so nothing
is left in a Python buffer and a later ``communicate()`` sees everything after it.

Nothing here opens a socket or touches an interface: LAN discovery (beacons and mDNS) runs
for real on the lab segment, because the namespaces have only lab interfaces.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .lab import Lab, read_line
from .netns import LabError
from .nodes import Host

REPO = Path(__file__).resolve().parents[2]
# Seconds a one-shot command (derive, identity: one Argon2id each) may take.
ONE_SHOT_TIMEOUT = 30.0
# Seconds to wait for a listener's "listening on UDP port" status line.
LISTEN_TIMEOUT = 30.0


class P2pd:
    """Starts p2pd processes in lab hosts, one state directory per host name under ``tmp``."""

    def __init__(self, lab: Lab, tmp: Path) -> None:
        self.lab = lab
        self.tmp = tmp

    def argv(self, host: Host, *args: str) -> list[str]:
        return [sys.executable, "-m", "p2pd", "--state-dir", str(self.tmp / host.name), *args]

    def start(self, host: Host, *args: str) -> subprocess.Popen[bytes]:
        """Start ``p2pd ARGS`` in host with stdin closed and stdout/stderr piped (bytes)."""
        env = {k: v for k, v in os.environ.items() if k != "P2PD_PASSPHRASE"}
        proc: subprocess.Popen[bytes] = self.lab.run(
            host,
            self.argv(host, *args),
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        return proc

    def run_json(self, host: Host, *args: str) -> dict[str, object]:
        """Run a one-shot ``p2pd ARGS --json`` to completion; its one JSON object."""
        proc = self.start(host, *args, "--json")
        rc, out, err = finish(proc, ONE_SHOT_TIMEOUT)
        assert rc == 0, err
        result: dict[str, object] = json.loads(out)
        return result

    def fingerprint(self, host: Host) -> str:
        """The fingerprint of host's identity (created now if it does not exist yet)."""
        return str(self.run_json(host, "identity")["fingerprint"])

    def derived_port(self, host: Host, phrase: str) -> int:
        """The UDP port every holder of ``phrase`` binds by default."""
        port = self.run_json(host, "derive", phrase)["port"]
        assert isinstance(port, int)
        return port


def read_err_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """The next line of proc's stderr; LabError if none within ``timeout`` or stderr closed."""
    return read_line(proc, timeout, stderr=True)


def wait_listening(proc: subprocess.Popen[bytes], timeout: float = LISTEN_TIMEOUT) -> int:
    """Block until a (text-mode) listener says it is bound; return its port."""
    deadline = time.monotonic() + timeout
    while True:
        line = read_err_line(proc, max(deadline - time.monotonic(), 0.0))
        if "listening on UDP port" in line:
            return int(line.split("listening on UDP port ")[1].split()[0])


def finish(proc: subprocess.Popen[bytes], timeout: float) -> tuple[int, bytes, str]:
    """Wait for proc to exit: (exit code, stdout bytes, stderr text)."""
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err.decode(errors="replace")


def text_lines(out: bytes) -> list[str]:
    return out.decode().splitlines()


def add_counters(lab: Lab, host: Host, table: str, hook: str, rules: dict[str, str]) -> None:
    """Load ``table inet TABLE`` in host: one named counter per rule, counted in ``hook``.

    ``rules`` maps a counter name to an nft match (``ip daddr 10.7.0.3 udp``); packets are
    only counted, never dropped.
    """
    counters = "\n".join(f"counter {name} {{}}" for name in rules)
    matches = "\n".join(f'{match} counter name "{name}"' for name, match in rules.items())
    lab.nft(
        host,
        f"table inet {table} {{\n{counters}\n"
        f"chain {hook} {{\ntype filter hook {hook} priority filter; policy accept;\n"
        f"{matches}\n}}\n}}\n",
    )


def read_counter(lab: Lab, host: Host, table: str, name: str) -> int:
    """Packets counted so far by the named counter."""
    listing = json.loads(
        lab.check_output(host, ["nft", "-j", "list", "counter", "inet", table, name])
    )
    for item in listing["nftables"]:
        if "counter" in item:
            return int(item["counter"]["packets"])
    raise LabError(f"no counter {name} in table {table} of {host.name}")
