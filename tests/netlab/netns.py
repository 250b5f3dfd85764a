"""Namespace plumbing for the network lab: run `ip`/`nft` and find, empty and delete lab namespaces.

Theory of operation: every namespace the lab makes is named ``<prefix>-<node>``, where the prefix
is ``p2pl-`` plus lowercase letters and digits (no further dash), so the prefix of any lab
namespace can be read back from its name alone. That is what lets teardown, ``tools/netlab down``
and ``down --all`` remove exactly one lab's (or every crashed lab's) namespaces without any state
file. Invariants:

- Nothing here creates, moves or deletes an interface. The only mutation is ``ip netns del``
  on names matching the lab pattern, after killing the processes still inside those namespaces.
- The root namespace is only ever read.

`read_line` (re-exported by `lab`) reads one line of a lab process's output without buffering.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import signal
import subprocess
import time
from collections.abc import Sequence

# Every lab namespace starts with this, so `down --all` can find leftovers of crashed runs.
LAB_NAMESPACE_PREFIX = "p2pl-"
# A lab prefix: the marker, then one dash-free token, so "<prefix>-<node>" splits unambiguously.
PREFIX_PATTERN = re.compile(r"^p2pl-[a-z0-9]{1,16}$")
# A lab namespace: its lab's prefix, a dash, then the node (host or switch) name.
NAMESPACE_PATTERN = re.compile(r"^(p2pl-[a-z0-9]{1,16})-(.+)$")
# Where `ip netns add` bind-mounts a namespace, so its identity (device, inode) can be read.
NETNS_RUN_DIR = "/run/netns"
# Seconds to wait for SIGKILLed lab processes to exit before their namespaces are deleted.
KILL_WAIT = 2.0
# List-and-kill rounds per namespace, to catch processes forked while their parents were killed.
KILL_ROUNDS = 3
# How long one `ip`/`nft`/`sysctl` call may take before we call the kernel or the tool stuck.
COMMAND_TIMEOUT = 10.0
# Default seconds `read_line` waits for a line.
READ_TIMEOUT = 10.0


class LabError(Exception):
    """The lab could not do what it was asked: a command failed, or a request broke a lab rule."""


def run_command(argv: Sequence[str], *, stdin: str | None = None) -> str:
    """Run one short command to completion; return its stdout or raise LabError with its stderr."""
    try:
        done = subprocess.run(
            list(argv),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LabError(f"{' '.join(argv)}: {exc}") from exc
    if done.returncode != 0:
        raise LabError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def check_prefix(prefix: str) -> str:
    """Return prefix if it is a valid lab prefix, else raise LabError."""
    if not PREFIX_PATTERN.match(prefix):
        raise LabError(f"lab prefix {prefix!r} must match {PREFIX_PATTERN.pattern}")
    return prefix


def list_namespaces() -> list[str]:
    """Names of all named network namespaces (`ip netns list`), lab or not."""
    out = run_command(["ip", "-j", "netns", "list"]).strip()
    if not out:
        return []
    return sorted(entry["name"] for entry in json.loads(out))


def prefix_of(namespace: str) -> str | None:
    """The lab prefix of a namespace name, or None if it is not a lab namespace."""
    match = NAMESPACE_PATTERN.match(namespace)
    return match.group(1) if match else None


def list_labs() -> dict[str, list[str]]:
    """Every lab prefix present on the machine, with its namespaces."""
    labs: dict[str, list[str]] = {}
    for namespace in list_namespaces():
        prefix = prefix_of(namespace)
        if prefix is not None:
            labs.setdefault(prefix, []).append(namespace)
    return labs


def _netns_identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None  # Gone, or not ours to look at.
    return (st.st_dev, st.st_ino)


def namespace_pids(namespace: str) -> list[int]:
    """PIDs of the processes whose network namespace is this one (as `ip netns pids` finds)."""
    wanted = _netns_identity(f"{NETNS_RUN_DIR}/{namespace}")
    if wanted is None:
        return []
    return [
        int(entry)
        for entry in os.listdir("/proc")
        if entry.isdigit() and _netns_identity(f"/proc/{entry}/ns/net") == wanted
    ]


def kill_namespace_processes(namespace: str) -> None:
    """SIGKILL every process inside a lab namespace (a lab started them) and wait till they die.

    Each process is pinned with a pidfd and re-checked to still live in the namespace before it
    is signalled, so a recycled PID is never hit; a few rounds catch children forked meanwhile.
    """
    if prefix_of(namespace) is None:
        raise LabError(f"refusing to kill processes in non-lab namespace {namespace!r}")
    wanted = _netns_identity(f"{NETNS_RUN_DIR}/{namespace}")
    for _ in range(KILL_ROUNDS):
        pidfds: list[int] = []
        for pid in namespace_pids(namespace):
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
            pidfds.append(pidfd)
            if _netns_identity(f"/proc/{pid}/ns/net") == wanted:
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        if not pidfds:
            return
        _wait_for_exit(pidfds)


def _wait_for_exit(pidfds: list[int]) -> None:
    """Wait (at most KILL_WAIT seconds) until every pidfd reports its process exited; close them."""
    deadline = time.monotonic() + KILL_WAIT
    try:
        with selectors.DefaultSelector() as selector:
            for pidfd in pidfds:
                selector.register(pidfd, selectors.EVENT_READ)
            while selector.get_map() and (remaining := deadline - time.monotonic()) > 0:
                for key, _ in selector.select(remaining):
                    selector.unregister(key.fd)
    finally:
        for pidfd in pidfds:
            os.close(pidfd)


def destroy_prefix(prefix: str) -> list[str]:
    """Kill what runs in, then delete, every namespace of one lab; return the names deleted."""
    check_prefix(prefix)
    doomed = [ns for ns in list_namespaces() if prefix_of(ns) == prefix]
    for namespace in doomed:
        kill_namespace_processes(namespace)
    errors: list[str] = []
    for namespace in doomed:
        try:
            run_command(["ip", "netns", "del", namespace])
        except LabError as exc:
            errors.append(str(exc))
    if errors:
        raise LabError("; ".join(errors))
    return doomed


def destroy_all_labs() -> list[str]:
    """Delete every lab namespace on the machine (leftovers of crashed runs included)."""
    deleted: list[str] = []
    for prefix in list_labs():
        deleted.extend(destroy_prefix(prefix))
    return deleted


def read_line(
    proc: subprocess.Popen[str] | subprocess.Popen[bytes],
    timeout: float = READ_TIMEOUT,
    *,
    stderr: bool = False,
) -> str:
    """Read one line from proc's stdout (or stderr) pipe; LabError if none within timeout.

    Reads the raw pipe a byte at a time, so nothing is left hidden in a Python buffer and a
    later `read_line` or ``communicate()`` sees the rest.
    """
    pipe = proc.stderr if stderr else proc.stdout
    name = "stderr" if stderr else "stdout"
    if pipe is None:
        raise LabError(f"process has no {name} pipe")
    fd = pipe.fileno()
    what = " ".join(map(str, proc.args[3:5])) if isinstance(proc.args, list) else proc.args
    deadline = time.monotonic() + timeout
    line = bytearray()
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                raise LabError(f"no line from {what!r} within {timeout} s (got {line!r})")
            byte = os.read(fd, 1)
            if not byte:
                raise LabError(f"{what!r} closed {name} (exit {proc.poll()}, got {line!r})")
            line += byte
    return line.decode().rstrip("\n")
