"""A private, offline Tor network for the lab: directory authorities, relays and client tors.

Theory of operation (LAB-NOTES, "A private Tor network, offline"; the Tor Project's chutney
does the same for Tor's own tests): every tor runs from the Debian binary on one address
(``127.0.0.1`` by default; any address of a lab namespace with ``netns=``) with
``TestingTorNetwork 1``. Each authority gets fresh keys from ``tor-gencert`` (all authorities
in parallel, about 0.5 s in all on the machine this was written on; caching them would save
little and tie a certificate to a port) and its relay fingerprint from ``tor
--list-fingerprint``. Every torrc names exactly these authorities with ``DirAuthority`` lines,
which replaces Tor's built-in authorities and fallbacks, so nothing outside the private
network is ever dialed: ``UseDefaultFallbackDirs 0``, IPv6 off, and exit-side DNS is pointed
at a resolv.conf naming only the network's own address (no hijack probes of real names).
The authorities vote every few seconds and force the Guard, Exit and HSDir flags. Clients
use no entry guards and no vanguards (in a network of five relays both pin paths that loop
back on themselves, measured: bootstrap stalled 15 s), give up on a circuit after 3 s, and
count as ready once bootstrapped *and* holding a consensus that lists every relay.

Ports: authorities and relays need ports known before start (they are in every
``DirAuthority`` line). They are drawn at random *below* the kernel's ephemeral range, where
no ``connect()`` or ``bind(port 0)`` of another process lands, and checked free by binding
when the network is in the root namespace. Clients use ``auto`` ports and read the real ones
back from their log, so they can never collide.

Lifetime: `TorNet` is a context manager; `close` (also run on any start failure and atexit)
sends SIGTERM to every tor it started, SIGKILLs what is left after `STOP_GRACE`, and removes
its temporary directory. `bootstrap_seconds` is the time from the first tor start until every
client logged ``Bootstrapped 100%``.
"""

from __future__ import annotations

import atexit
import functools
import os
import random
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

#: Directory authorities: three, so a majority (two) still signs if one is slow.
DEFAULT_AUTHORITIES = 3
#: Relays besides the authorities (which relay too): enough for distinct guard/middle/HSDir.
DEFAULT_RELAYS = 2
#: Seconds every client gets to reach ``Bootstrapped 100%`` (measured: 7-19 s).
BOOTSTRAP_TIMEOUT = 60.0
#: Seconds a client gets to open its SOCKS and control listeners after start.
LISTENER_TIMEOUT = 10.0
#: Seconds for tor-gencert / --list-fingerprint (each takes well under one).
KEYGEN_TIMEOUT = 30.0
#: Seconds a tor gets after SIGTERM before SIGKILL (ShutdownWaitLength 0: it exits at once).
STOP_GRACE = 3.0
#: Interval at which logs are re-read while waiting; tor gives no other readiness signal.
POLL_INTERVAL = 0.05
#: Seconds a client waits for a circuit before trying another; loopback builds take
#: milliseconds, and the default (learned, from 60 s) stalls a fresh network's first circuit.
CIRCUIT_BUILD_TIMEOUT = 3
#: Lowest port drawn for authorities and relays (well above the privileged and common ones).
PORT_FLOOR = 20000
#: Lifetime of authority certificates, in months (tor-gencert's -m).
CERT_MONTHS = 12
#: Authority voting schedule, in seconds: the first consensus is out 5-10 s after start
#: (tor requires vote delay + distribution delay < half the interval).
AUTHORITY_SCHEDULE = (
    "TestingV3AuthInitialVotingInterval 5", "TestingV3AuthInitialVoteDelay 2",
    "TestingV3AuthInitialDistDelay 2", "V3AuthVotingInterval 10", "V3AuthVoteDelay 2",
    "V3AuthDistDelay 2",
)  # fmt: skip
#: Options of every tor of the network (LAB-NOTES), plus: no fallback directories and no
#: IPv6 (only the DirAuthority lines are ever dialed), and caches and clients fetch each new
#: consensus as soon as it is out (the first one often lists only the authorities).
COMMON_OPTIONS = (
    "TestingTorNetwork 1", "UseDefaultFallbackDirs 0", "ClientUseIPv6 0",
    "ClientPreferIPv6ORPort 0", "AddressDisableIPv6 1", "ShutdownWaitLength 0",
    "PathsNeededToBuildCircuits 0.67", "TestingDirAuthVoteExit *", "TestingDirAuthVoteHSDir *",
    "TestingDirAuthVoteGuard *", "TestingMinExitFlagThreshold 0", "V3AuthNIntervalsValid 2",
    "AssumeReachable 1", "FetchDirInfoEarly 1", "FetchDirInfoExtraEarly 1",
)  # fmt: skip
#: Placeholder ORPort for ``tor --list-fingerprint``, which wants one but keeps none.
KEYGEN_OR_PORT = "1"
BOOTSTRAPPED = "Bootstrapped 100%"
_LISTENER = re.compile(r"Opened (Socks|Control) listener connection \(ready\) on [^:]+:(\d+)")
_ROUTER_LINE = re.compile(r"^r ", re.MULTILINE)
_FINGERPRINT = re.compile(r"^fingerprint ([0-9A-F]{40})$", re.MULTILINE)

_key_lock = threading.Lock()


def _listed(tor: _Tor) -> int:
    """Relays in the tor's cached consensus (tor replaces the file whole, never in part)."""
    try:
        text = (tor.data_dir / "cached-microdesc-consensus").read_text(errors="replace")
    except FileNotFoundError:
        return 0
    return len(_ROUTER_LINE.findall(text))


class TorNetError(Exception):
    """The private Tor network could not be built, or a tor in it failed."""


def _run_all(commands: Sequence[tuple[list[str], Path]]) -> None:
    """Run (argv, cwd) commands in parallel, an empty line on stdin (tor-gencert's empty
    passphrase); raise TorNetError with the output of the first one that fails."""
    procs = [
        subprocess.Popen(argv, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
        for argv, cwd in commands
    ]  # fmt: skip
    failure = None
    for proc, (argv, _) in zip(procs, commands, strict=True):
        try:
            out, _ = proc.communicate(b"\n", KEYGEN_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            failure = failure or f"{argv[0]} took over {KEYGEN_TIMEOUT} s"
            continue
        if proc.returncode != 0:
            failure = failure or f"{argv[0]} failed: {out.decode(errors='replace')[-500:]}"
    if failure is not None:
        raise TorNetError(failure)


@functools.cache
def _key_cache() -> Path:
    path = Path(tempfile.mkdtemp(prefix="p2pd-tornet-keys-"))
    atexit.register(shutil.rmtree, path, True)
    return path


def _authority_keys(count: int) -> list[Path]:
    """Directories holding ``keys/`` and ``fingerprint`` of authorities 0..count-1.

    Made once per process and reused by every network: an RSA-3072 identity per authority
    costs about 0.5 s of CPU (2-4 s for three at once on a loaded 2-CPU machine), copying
    them a few milliseconds. The certificates carry no ``dir-address`` (tor would dial that
    instead of the ``DirAuthority`` line), so keys made once serve any network's ports.
    """
    with _key_lock:
        dirs = [_key_cache() / f"auth{i}" for i in range(count)]
        missing = [d for d in dirs if not (d / "fingerprint").exists()]
        for d in missing:
            (d / "keys").mkdir(parents=True, mode=0o700)
            d.chmod(0o700)
        gencert = (
            f"tor-gencert --create-identity-key -m {CERT_MONTHS} -i "
            "authority_identity_key -s authority_signing_key -c authority_certificate "
            "--passphrase-fd 0"
        ).split()
        _run_all(
            [(gencert, d / "keys") for d in missing]
            + [(["tor", "--list-fingerprint", "--DataDirectory", str(d), "--ORPort",
                 KEYGEN_OR_PORT, "--Address", "127.0.0.1"], d) for d in missing]
        )  # fmt: skip
        return dirs


def tor_missing_reason() -> str | None:
    """Why the private Tor network cannot run here (no tor or tor-gencert), or None."""
    for tool, package in (("tor", "tor"), ("tor-gencert", "tor")):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (Debian package {package})"
    return None


def require_tor() -> None:
    """Skip a test without tor/tor-gencert, but fail it in CI (env CI set), where they must
    be present.  (pytest is imported here, not at the top: tools/tornet runs without it.)"""
    import pytest

    reason = tor_missing_reason()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI is set, so the private Tor network must run, but: {reason}")
    pytest.skip(reason=reason)


@dataclass(frozen=True)
class TorClient:
    """A client tor of the network: where to reach it and where its control cookie is."""

    name: str
    socks_port: int
    control_port: int
    cookie_path: Path
    data_dir: Path


@dataclass
class _Tor:
    name: str
    data_dir: Path
    proc: subprocess.Popen[bytes]

    def log_text(self, log: str = "notice.log") -> str:
        try:
            return (self.data_dir / log).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 8) -> str:
        text = self.log_text() + self.log_text("stdout.log")
        return " | ".join(text.splitlines()[-lines:])


@dataclass(frozen=True)
class _Authority:
    name: str
    or_port: int
    dir_port: int
    v3ident: str
    fingerprint: str


class TorNet:
    """Authorities, relays and clients on one address; use as ``with TorNet() as net:``."""

    def __init__(
        self,
        *,
        authorities: int = DEFAULT_AUTHORITIES,
        relays: int = DEFAULT_RELAYS,
        clients: Iterable[str] = (),
        address: str = "127.0.0.1",
        netns: str | None = None,
        base_dir: Path | None = None,
        bootstrap_timeout: float = BOOTSTRAP_TIMEOUT,
        linger: bool = False,
    ) -> None:
        """netns: a lab namespace to run every tor in (``address`` must be one of its own).

        base_dir: keep the network's files there (default: a temporary directory, removed).
        linger: let the tors outlive this process (``tools/tornet up``); otherwise the kernel
        kills them if it dies without `close` (SIGKILL of the test runner, say).
        """
        if authorities < 1 or relays < 0:
            raise TorNetError("a Tor network needs at least one authority")
        self.address = address
        self.netns = netns
        self.bootstrap_timeout = bootstrap_timeout
        self._counts = (authorities, relays)
        self._initial_clients = list(clients)
        self._base = base_dir
        self._linger = linger
        self._dir: Path | None = None
        self._tors: dict[str, _Tor] = {}
        self._authorities: list[_Authority] = []
        self._used_ports: set[int] = set()
        self.clients: dict[str, TorClient] = {}
        self.bootstrap_seconds: float | None = None
        self._started_at = 0.0
        self._closed = False

    def __enter__(self) -> TorNet:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- building ------------------------------------------------------------------------

    @property
    def directory(self) -> Path:
        """The network's working directory (data directories and torrcs of every tor)."""
        if self._dir is None:
            raise TorNetError("the Tor network is not started")
        return self._dir

    def start(self) -> None:
        """Make the authorities' keys, start every tor, wait for every initial client."""
        if self._dir is not None:
            raise TorNetError("the Tor network is already started")
        reason = tor_missing_reason()
        if reason is not None:
            raise TorNetError(reason)
        atexit.register(self.close)
        if self._base is None:
            self._dir = Path(tempfile.mkdtemp(prefix="p2pd-tornet-"))
        else:
            self._base.mkdir(parents=True, exist_ok=True)
            self._dir = self._base
        authorities, relays = self._counts
        names = [f"auth{i}" for i in range(authorities)]
        self._authorities = self._make_authorities(names)
        self._started_at = time.monotonic()
        for authority in self._authorities:
            self._launch(authority.name, self._authority_lines(authority), self.netns)
        for i in range(relays):
            or_port, dir_port = self._free_port(), self._free_port()
            self._launch(f"relay{i}", self._relay_lines(or_port, dir_port), self.netns)
        for name in self._initial_clients:
            self._start_client(name)
        if self._initial_clients:
            self.wait_bootstrapped(self._initial_clients)
            self.bootstrap_seconds = time.monotonic() - self._started_at

    def add_client(self, name: str, *, netns: str | None = None, wait: bool = True) -> TorClient:
        """Start a client tor (in ``netns``, default the network's); with ``wait``, return
        once it has bootstrapped. Its ports are on 127.0.0.1 of its own namespace."""
        client = self._start_client(name, netns)
        if wait:
            self.wait_bootstrapped([name])
            if self.bootstrap_seconds is None:
                self.bootstrap_seconds = time.monotonic() - self._started_at
        return client

    def _start_client(self, name: str, netns: str | None = None) -> TorClient:
        if not re.fullmatch(r"[a-z][a-z0-9]{0,15}", name) or name in self._tors:
            raise TorNetError(f"client name {name!r} is invalid or already used")
        tor = self._launch(name, self.client_lines(), netns or self.netns)
        socks, control = self._listener_ports(tor)
        client = TorClient(name, socks, control, tor.data_dir / "control_auth_cookie", tor.data_dir)
        self.clients[name] = client
        return client

    def log_tail(self, name: str, lines: int = 20) -> str:
        """The last lines the named tor logged (for a failure message)."""
        return self._tors[name].tail(lines)

    def wait_bootstrapped(self, names: Sequence[str]) -> None:
        """Block until every named client logged ``Bootstrapped 100%`` and holds a consensus
        listing every relay (bounded).

        A client may bootstrap on the first consensus, which often lists only the
        authorities; onion services need the HSDirs of a later one (measured: an ADD_ONION
        right after such a bootstrap was not uploaded within 30 s).
        """
        tors = [self._tors[name] for name in names]
        relays = sum(self._counts)
        self._poll(
            lambda: (
                all(BOOTSTRAPPED in t.log_text() and _listed(t) >= relays for t in tors) or None
            ),
            self.bootstrap_timeout,
            lambda: "not bootstrapped in {} s: {}".format(
                self.bootstrap_timeout, "; ".join(f"{t.name}: {t.tail(3)}" for t in tors)
            ),
        )

    def _make_authorities(self, names: Sequence[str]) -> list[_Authority]:
        result = []
        for name, keys in zip(names, _authority_keys(len(names)), strict=True):
            (self.directory / name).mkdir(mode=0o700)
            shutil.copytree(keys / "keys", self.directory / name / "keys")
            v3 = _FINGERPRINT.search((keys / "keys" / "authority_certificate").read_text())
            relay_fp = (keys / "fingerprint").read_text().split()
            if v3 is None or len(relay_fp) != 2:
                raise TorNetError(f"{name}: no identity fingerprint after key generation")
            ports = self._free_port(), self._free_port()
            result.append(_Authority(name, *ports, v3.group(1), relay_fp[1]))
        return result

    # --- torrc ---------------------------------------------------------------------------

    def common_lines(self) -> list[str]:
        """Options every tor of the network needs, p2pd's own tor included: the authorities."""
        return [
            *COMMON_OPTIONS,
            *(
                f"DirAuthority {a.name} orport={a.or_port} no-v2 v3ident={a.v3ident} "
                f"{self.address}:{a.dir_port} {a.fingerprint}"
                for a in self._authorities
            ),
        ]

    def client_lines(self) -> list[str]:
        """A client's options: auto SOCKS and control ports, cookie authentication."""
        return [*self.common_lines(), "SocksPort auto", "ControlPort auto",
                "CookieAuthentication 1", "LearnCircuitBuildTimeout 0", "UseEntryGuards 0",
                "VanguardsLiteEnabled 0",
                f"CircuitBuildTimeout {CIRCUIT_BUILD_TIMEOUT}"]  # fmt: skip

    def write_p2pd_torrc(self, path: Path, *, log: Path | None = None) -> Path:
        """A ``p2pd --tor-config`` file: a client's options without the ports and the
        authentication p2pd sets itself on the tor it launches; with ``log``, that tor
        writes its info log there (for a failing test to show)."""
        reserved = ("SocksPort ", "ControlPort ", "CookieAuthentication ")
        lines = [line for line in self.client_lines() if not line.startswith(reserved)]
        if log is not None:
            lines.append(f"Log info file {log}")
        path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
        return path

    def _relay_lines(self, or_port: int, dir_port: int) -> list[str]:
        resolv = self.directory / "resolv.conf"
        if not resolv.exists():
            resolv.write_text(f"nameserver {self.address}\n")
        a = self.address
        return [*self.common_lines(), f"Address {a}", f"OutboundBindAddress {a}",
                f"ORPort {a}:{or_port}", f"DirPort {a}:{dir_port}", "SocksPort 0",
                "ExitRelay 1", f"ExitPolicy accept {a}/32:*", "ExitPolicy reject *:*",
                "ServerDNSDetectHijacking 0", f"ServerDNSResolvConfFile {resolv}",
                "ContactInfo p2pd-lab"]  # fmt: skip

    def _authority_lines(self, authority: _Authority) -> list[str]:
        return [*self._relay_lines(authority.or_port, authority.dir_port),
                "AuthoritativeDirectory 1", "V3AuthoritativeDirectory 1",
                *AUTHORITY_SCHEDULE]  # fmt: skip

    # --- processes -----------------------------------------------------------------------

    def _launch(self, name: str, lines: list[str], netns: str | None) -> _Tor:
        data_dir = self.directory / name
        data_dir.mkdir(mode=0o700, exist_ok=True)
        data_dir.chmod(0o700)
        torrc = data_dir / "torrc"
        torrc.write_text(
            "\n".join([f"DataDirectory {data_dir}", f"Nickname {name}",
                       f"Log notice file {data_dir / 'notice.log'}", *lines]) + "\n"
        )  # fmt: skip
        argv = [*self._die_with_us(), "tor", "-f", str(torrc), "--defaults-torrc", os.devnull]
        if netns is not None:
            argv = ["ip", "netns", "exec", netns, *argv]
        with open(data_dir / "stdout.log", "wb") as out:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        tor = _Tor(name, data_dir, proc)
        self._tors[name] = tor
        return tor

    def _die_with_us(self) -> list[str]:
        """A prefix asking the kernel to SIGTERM tor when we die (PR_SET_PDEATHSIG).

        It fires on the death of the parent *thread*: only the main thread lives as long as
        the process (a trio worker thread may exit while the network is still in use).
        """
        if self._linger or threading.current_thread() is not threading.main_thread():
            return []
        if shutil.which("setpriv") is None:
            return []
        return ["setpriv", "--pdeathsig", "TERM", "--"]

    def _listener_ports(self, tor: _Tor) -> tuple[int, int]:
        def ports() -> tuple[int, int] | None:
            found = dict(_LISTENER.findall(tor.log_text()))
            if "Socks" in found and "Control" in found:
                return int(found["Socks"]), int(found["Control"])
            return None

        return self._poll(ports, LISTENER_TIMEOUT, lambda: f"{tor.name}: no ports: {tor.tail()}")

    def _poll(self, check: Callable[[], T | None], timeout: float, why: Callable[[], str]) -> T:
        """Re-read logs until ``check`` returns a value; raise TorNetError if a tor exits or
        ``timeout`` passes (tor has no readiness signal but its log)."""
        deadline = time.monotonic() + timeout
        while (result := check()) is None:
            self._check_alive()
            if time.monotonic() > deadline:
                raise TorNetError(why())
            time.sleep(POLL_INTERVAL)
        return result

    def _check_alive(self) -> None:
        for tor in self._tors.values():
            if tor.proc.poll() is not None:
                raise TorNetError(f"{tor.name} exited with {tor.proc.returncode}: {tor.tail()}")

    def _free_port(self) -> int:
        """A TCP port below the ephemeral range, unused by us, and (in root netns) bindable."""
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ephemeral_low = int(f.read().split()[0])
        while True:
            port = random.randrange(PORT_FLOOR, ephemeral_low)
            if port in self._used_ports:
                continue
            if self.netns is None:
                with socket.socket() as probe:
                    try:
                        probe.bind((self.address, port))
                    except OSError:
                        continue
            self._used_ports.add(port)
            return port

    @property
    def pids(self) -> dict[str, int]:
        """The process id of every tor, by name."""
        return {name: tor.proc.pid for name, tor in self._tors.items()}

    def detach(self) -> None:
        """Leave the network running when this object goes away (``tools/tornet up``)."""
        self._closed = True
        atexit.unregister(self.close)

    def close(self) -> None:
        """Stop every tor (SIGTERM, then SIGKILL after `STOP_GRACE`) and remove the files."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        for tor in self._tors.values():
            if tor.proc.poll() is None:
                tor.proc.terminate()
        deadline = time.monotonic() + STOP_GRACE
        for tor in self._tors.values():
            try:
                tor.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                tor.proc.kill()
                tor.proc.wait()
        if self._dir is not None and self._base is None:
            shutil.rmtree(self._dir, ignore_errors=True)
