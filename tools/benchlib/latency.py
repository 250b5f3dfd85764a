"""send_latency: wall time of the real ``p2pd send`` CLI until the message is delivered.

An already-running ``p2pd --json listen --interface lo --no-mdns`` (a fresh strong
passphrase in P2PD_PASSPHRASE, a temp state dir) receives; each run starts
``p2pd --json send --interface lo --no-mdns MSG`` with its own fresh state dir and times
from just before the process is spawned to the listener printing the message.  That
includes interpreter start, imports, Argon2id, identity creation, LAN beacon discovery,
the handshake and one round trip of the reliable channel.  ``sender_connected_elapsed_ms``
is the sender's own report (from its first candidate to the handshake, usually 0 on
loopback, where the listener connects back first).

Baseline: spawning ``python -c "import p2pd.cli"`` (a process that starts the same
interpreter and imports the CLI, then does nothing), so the ratio shows how many times
that fixed cost the whole send takes.  The breakdown adds the Argon2id derivation time
and zxcvbn strength check measured in this process (``derive`` itself caches, so the
parts are timed), the extra imports of the send path (spawn time of a process importing
them, less the baseline) and what remains (discovery, handshake, delivery, noise).
"""

from __future__ import annotations

import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Sends timed (median reported).
RUNS = 10
#: Words of the fresh passphrase (p2pd phrase's default strength is 5).
PHRASE_WORDS = 6
#: Longest wait for the listener to print something.
LINE_TIMEOUT = 60.0
#: Discovery only on loopback, as the integration tests do.
LOOPBACK_ONLY = ("--interface", "lo", "--no-mdns")
#: What ``p2pd send`` imports beyond ``p2pd.cli`` (the breakdown's import share).
SEND_IMPORTS = "import p2pd.cli, p2pd.commands, p2pd.node, p2pd.derive, p2pd.identity, p2pd.paths"

Report = Callable[..., None]


def _json_line(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise RuntimeError(f"no output from the listener within {timeout} s")
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError("the listener exited")
    return dict(json.loads(line))


def _median_spawn(argv: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_latency(quick: bool, report: Report, repo: Path) -> None:
    from p2pd.derive import check_strength, normalize, stretch
    from p2pd.passphrase import generate

    runs = 3 if quick else RUNS
    phrase = generate(PHRASE_WORDS)
    env = {**os.environ, "P2PD_PASSPHRASE": phrase, "PYTHONPATH": str(repo)}
    p2pd = [sys.executable, "-m", "p2pd", "--json"]
    baseline = _median_spawn([sys.executable, "-c", "import p2pd.cli"], runs)
    imports = _median_spawn([sys.executable, "-c", SEND_IMPORTS], runs) - baseline
    derive_times, check_times = [], []
    for _ in range(3):
        start = time.perf_counter()
        check_strength(normalize(phrase))
        checked = time.perf_counter()
        stretch(normalize(phrase))
        check_times.append(checked - start)
        derive_times.append(time.perf_counter() - checked)

    totals, exits, connects = [], [], []
    with tempfile.TemporaryDirectory(prefix="p2pd-bench-") as tmp:
        listener = subprocess.Popen(
            [*p2pd, "--state-dir", f"{tmp}/listener", "listen", *LOOPBACK_ONLY],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            text=True, env=env, cwd=repo,
        )
        try:
            while _json_line(listener, LINE_TIMEOUT).get("event") != "listening":
                pass
            for run in range(runs):
                text = f"latency probe {run}"
                start = time.perf_counter()
                sender = subprocess.Popen(
                    [*p2pd, "--state-dir", f"{tmp}/s{run}", "send", *LOOPBACK_ONLY, text],
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                    stdin=subprocess.DEVNULL, text=True, env=env, cwd=repo,
                )
                while True:
                    event = _json_line(listener, LINE_TIMEOUT)
                    if event.get("event") == "message" and event.get("text") == text:
                        break
                totals.append(time.perf_counter() - start)
                out, _ = sender.communicate(timeout=LINE_TIMEOUT)
                exits.append(time.perf_counter() - start)
                if sender.returncode != 0:
                    raise RuntimeError(f"p2pd send failed with exit code {sender.returncode}")
                for line in out.splitlines():
                    obj = json.loads(line)
                    if obj.get("event") == "connected":
                        connects.append(obj["elapsed_ms"] / 1000)
        finally:
            listener.terminate()
            listener.wait(10)
    ms = 1000.0
    detail = {
        "runs": runs,
        "derive_argon2id_ms": round(statistics.median(derive_times) * ms, 1),
        "strength_check_ms": round(statistics.median(check_times) * ms, 1),
        "interpreter_import_ms": round(baseline * ms, 1),
        "send_imports_ms": round(imports * ms, 1),
        "sender_connected_elapsed_ms": round(statistics.median(connects) * ms, 1)
        if connects else None,
        "sender_exit_ms": round(statistics.median(exits) * ms, 1),
        "rest_ms": round((statistics.median(totals) - baseline - imports
                          - statistics.median(derive_times) - statistics.median(check_times))
                         * ms, 1),
    }
    report("send_latency", statistics.median(totals) * ms, "ms", baseline * ms,
           "python_-c_import_p2pd.cli", detail=detail)
