"""The reachability matrix: one lab topology per pair of network kinds, and how to run a cell.

Theory of operation: every cell has the same public segment `pub` (203.0.113.0/24) with one
host, ``server``, holding 203.0.113.1 and 203.0.113.2; coturn answers STUN on both addresses
(two servers, so a peer can tell an endpoint-dependent mapping from an independent one) and
``p2pd relay`` (the assist) listens on 203.0.113.1:7000. alice sits behind the left router,
bob behind the right one, each router on the public segment and dropping unsolicited input
from it as home routers do (`Lab.router`'s drop_wan_input says why punching needs that):

======== ============================================================================
kind     the peer's side of the cell
======== ============================================================================
lan      see below: both peers on one LAN segment
eim      home router, ``masquerade`` (endpoint-independent mapping, filtering by flow)
upnp     an ``eim`` router running the lab's patched miniupnpd (UPnP IGD, NAT-PMP, PCP)
edm      ``masquerade random,fully-random``: a new random public port per destination
blocked  a firewall forwarding no UDP at all; TCP passes, masqueraded
cgnat    an ``eim`` router running Debian's stock miniupnpd (extra cell, see below)
======== ============================================================================

"Same LAN" is a property of the pair, not of one side, so it pairs with every kind instead
of standing for a side: ``lan/K`` puts alice and bob on one LAN segment whose router is of
kind K, and ``lan/lan`` is a LAN with no router at all (the assist and STUN servers are
unreachable, and must not get in the way). That keeps all 15 unordered cells of the five
kinds meaningful: 5 where the peers share a LAN, 10 where they sit behind two routers.

`expected` gives, per peer, the set of paths (``delivered`` events' ``path``) the topology
allows as the best path, with the reasoning; `run_cell` runs ``p2pd send`` on both peers
and collects what they printed. Used by ``tests/netlab/test_matrix.py`` and
``tools/reachability`` (which writes ``docs/reachability.md``).

One extra cell, `EXTRA_CELLS`, keeps the stock miniupnpd: it refuses its TEST-NET external
address as reserved, so it answers UPnP and NAT-PMP but grants nothing usable, as a UPnP
gateway behind carrier-grade NAT does. Paired with ``eim`` it must end ``punched``: p2pd
has to notice the useless mapping and fall back.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .lab import Lab
from .netns import LabError
from .nodes import Host, Nat, Router, Segment
from .p2pd_procs import REPO, P2pd
from .presets import HOMES, PUBLIC_SERVER, PUBLIC_SUBNET

Kind = Literal["lan", "eim", "upnp", "edm", "blocked", "cgnat"]
# The five kinds, in the order the matrix lists them (best-connected first).
KINDS: tuple[Kind, ...] = ("lan", "eim", "upnp", "edm", "blocked")
# Cells beyond the 15 of the matrix proper (see the module docstring).
EXTRA_CELLS: tuple[tuple[Kind, Kind], ...] = (("eim", "cgnat"),)
# The server's second public address: a second STUN server, for mapping classification.
SECOND_SERVER = "203.0.113.2"
SERVER_ADDRESSES = (PUBLIC_SERVER, SECOND_SERVER)
STUN_PORT = 3478
# The assist's port (any free port; the one the commands use).
ASSIST_PORT = 7000
ASSIST = f"{PUBLIC_SERVER}:{ASSIST_PORT}"
STUN_SERVERS = tuple(f"{address}:{STUN_PORT}" for address in SERVER_ADDRESSES)
# The router each non-LAN kind puts in front of its peer (upnp: eim plus miniupnpd).
ROUTER_NAT: dict[Kind, Nat] = {
    "eim": "eim",
    "upnp": "eim",
    "edm": "edm",
    "blocked": "udp-blocked",
    "cgnat": "eim",
}
# The --timeout of each `p2pd send` (seconds): generous, as a relay or TCP fallback comes
# after the direct attempts have had their turn.
SEND_TIMEOUT = 60
# Seconds beyond SEND_TIMEOUT a send may take to exit (process start, Argon2id, close linger).
EXIT_GRACE = 30
# Seconds the assist relay may take to bind its port after it starts.
ASSIST_READY_TIMEOUT = 30.0
# Seconds between two looks at the assist's sockets while it starts.
ASSIST_POLL_INTERVAL = 0.05


@dataclass(frozen=True)
class Expectation:
    """Paths each peer may report as its best path (``delivered``'s ``path``), and why."""

    left: frozenset[str]
    right: frozenset[str]
    reason: str


@dataclass
class Cell:
    """A built cell: who is where, which services run, and what the paths must be."""

    left: Kind
    right: Kind
    alice: Host
    bob: Host
    server: Host
    routers: list[Router]
    expected: Expectation
    assist: str = ASSIST
    stun: tuple[str, ...] = STUN_SERVERS
    services: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.left}/{self.right}"

    def wan_flags(self) -> list[str]:
        """The flags pointing a p2pd node at this cell's assist and STUN servers."""
        stun = [arg for server in self.stun for arg in ("--stun", server)]
        return ["--assist", self.assist, *stun]


def cells() -> list[tuple[Kind, Kind]]:
    """The 15 unordered pairs of kinds, each once, in `KINDS` order (left never after right)."""
    return list(itertools.combinations_with_replacement(KINDS, 2))


def expected(left: Kind, right: Kind) -> Expectation:
    """The best path(s) the topology allows each peer, with the reasoning (see module doc)."""
    if "cgnat" in (left, right):
        under = expected("eim" if left == "cgnat" else left, "eim" if right == "cgnat" else right)
        return Expectation(
            under.left,
            under.right,
            "the stock miniupnpd grants no usable mapping (its external address is reserved, "
            "as behind carrier-grade NAT), so p2pd must fall back to what the eim NAT under "
            f"it allows: {under.reason}",
        )
    kinds = {left, right}
    if "lan" in kinds:
        return _both(
            {"lan"},
            "one LAN segment: beacons and mDNS find the peer directly, and the LAN candidate "
            "ranks first, whatever the router does (lan/lan has no router at all)",
        )
    if "blocked" in kinds:
        tcp_only = frozenset({"tcp"})
        other = tcp_only if kinds == {"blocked"} else frozenset({"tcp", "relay"})
        return Expectation(
            tcp_only if left == "blocked" else other,
            tcp_only if right == "blocked" else other,
            "no UDP leaves a blocked LAN: its peer runs the session framed over TCP (to the "
            "assist, or to a TCP port its peer mapped); the other peer reaches it through the "
            "assist over UDP (relay) or over TCP (tcp)",
        )
    if "upnp" in kinds and kinds <= {"eim", "upnp"}:
        return _both(
            {"mapped", "punched"},
            "a upnp router is an eim NAT under its mapping, and miniupnpd maps the node's own "
            "port, which masquerade preserves too: the mapped and the punched address are the "
            "same public address, and the punch usually completes before UPnP discovery has "
            "granted the mapping (about a second into the run), so either label is the "
            "direct path",
        )
    if "upnp" in kinds:
        return _both(
            {"mapped"},
            "the miniupnpd router grants a UDP port mapping; the other side sends to that "
            "public address and its own NAT lets the answers back in (flow state), whatever "
            "its mapping behaviour; punching alone cannot work against the edm side",
        )
    if kinds == {"eim"}:
        return _both(
            {"punched"},
            "both mappings are endpoint-independent: the reflexive addresses STUN and the "
            "assist report are the ones the peers' probes use, so simultaneous probes open "
            "both routers' flow state",
        )
    if kinds == {"eim", "edm"}:
        return _both(
            {"punched", "relay"},
            "the edm side's probes leave from a fresh random port that neither STUN nor the "
            "assist saw, and the eim router lets in only flows its peer opened; the eim side "
            "can only spray guessed ports (port prediction) within its packet budget, which "
            "hits a fully-random port with odds of about budget/64,512: usually relay, "
            "punched when the guess lands",
        )
    return _both(
        {"relay"},
        "both mappings are endpoint-dependent and fully random: neither side can learn or "
        "predict the port the other's router will use towards it, so only the assist's "
        "relay carries the session",
    )


def _both(paths: set[str], reason: str) -> Expectation:
    return Expectation(frozenset(paths), frozenset(paths), reason)


def matrix_unavailable_reason(left: Kind, right: Kind) -> str | None:
    """Why this cell cannot be built here (coturn or the lab miniupnpd missing), or None."""
    try:
        from .coturn import turnserver_missing_reason
    except ImportError as exc:
        return f"needs tests/netlab/coturn.py: {exc}"
    reason = turnserver_missing_reason()
    for kind, patched in (("upnp", True), ("cgnat", False)):
        if reason is None and kind in (left, right):
            try:
                from .miniupnpd import miniupnpd_unavailable_reason
            except ImportError as exc:
                return f"needs tests/netlab/miniupnpd.py: {exc}"
            reason = miniupnpd_unavailable_reason(patched=patched)
    return reason


def build_cell(
    lab: Lab, left: Kind, right: Kind, *, state_dir: Path | None = None, assist: bool = True
) -> Cell:
    """Build the cell's topology in lab and start coturn, miniupnpd and (if assist) the assist.

    state_dir holds the assist's state and log (a temporary directory if None). Raises
    LabError when coturn, miniupnpd or the lab build of miniupnpd cannot run here.
    """
    if (left, right) not in cells() + list(EXTRA_CELLS):
        raise LabError(f"no cell {left}/{right}: pass kinds in {KINDS} order (left first)")
    pub = lab.segment("pub", PUBLIC_SUBNET)
    server = lab.host("server")
    lab.attach(server, pub, PUBLIC_SERVER)
    lab.add_address(server, pub, SECOND_SERVER)
    routers: list[Router] = []
    if left == "lan":
        segment, subnet, router_name, wan_address, _ = HOMES[0]
        home = lab.segment(segment, subnet)
        if right != "lan":
            routers.append(_router(lab, router_name, pub, home, right, wan_address))
        alice, bob = lab.host("alice"), lab.host("bob")
        lab.attach(alice, home)
        lab.attach(bob, home)
    else:
        peers = []
        for kind, (segment, subnet, router_name, wan_address, peer) in zip(
            (left, right), HOMES, strict=True
        ):
            home = lab.segment(segment, subnet)
            routers.append(_router(lab, router_name, pub, home, kind, wan_address))
            host = lab.host(peer)
            lab.attach(host, home)
            peers.append(host)
        alice, bob = peers
    cell = Cell(left, right, alice, bob, server, routers, expected(left, right))
    _start_services(lab, cell, state_dir if assist else None, assist=assist)
    return cell


def _router(lab: Lab, name: str, pub: Segment, home: Segment, kind: Kind, wan: str) -> Router:
    """A router of the kind's NAT on pub/home; upnp adds the lab miniupnpd, cgnat the stock one."""
    router = lab.router(name, pub, home, ROUTER_NAT[kind], wan_address=wan, drop_wan_input=True)
    if kind in ("upnp", "cgnat"):
        from .miniupnpd import miniupnpd_unavailable_reason, start_miniupnpd

        patched = kind == "upnp"
        reason = miniupnpd_unavailable_reason(patched=patched)
        if reason is not None:
            raise LabError(reason)
        start_miniupnpd(lab, router, patched=patched)
    return router


def _start_services(lab: Lab, cell: Cell, state_dir: Path | None, *, assist: bool) -> None:
    """coturn on both server addresses, then the assist; return once the assist is bound."""
    try:
        from .coturn import start_coturn
    except ImportError as exc:
        raise LabError(f"needs tests/netlab/coturn.py (start_coturn): {exc}") from exc
    start_coturn(lab, cell.server.name, list(SERVER_ADDRESSES), port=STUN_PORT)
    if not assist:
        return
    state = state_dir or Path(tempfile.mkdtemp(prefix="p2pd-assist-"))
    state.mkdir(parents=True, exist_ok=True)
    log = (state / "assist.log").open("wb")
    argv = P2pd(lab, state).argv(cell.server, "relay", "--bind", cell.assist)
    env = {k: v for k, v in os.environ.items() if k != "P2PD_PASSPHRASE"}
    relay: subprocess.Popen[bytes] = lab.run(
        cell.server, argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
    )
    log.close()
    cell.services.append(relay)
    wait_udp_bound(lab, cell.server, ASSIST_PORT, relay, state / "assist.log")


def wait_udp_bound(
    lab: Lab, host: Host, port: int, proc: subprocess.Popen[bytes], log: Path
) -> None:
    """Return once something in host listens on UDP port; LabError if proc dies or time runs out."""
    deadline = time.monotonic() + ASSIST_READY_TIMEOUT
    while not lab.check_output(host, ["ss", "-Hlun", f"sport = :{port}"]).strip():
        if proc.poll() is not None:
            raise LabError(f"the assist exited with {proc.returncode}: {log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise LabError(f"the assist did not bind UDP port {port} in {ASSIST_READY_TIMEOUT} s")
        time.sleep(ASSIST_POLL_INTERVAL)


@dataclass(frozen=True)
class PeerRun:
    """What one ``p2pd send --json`` printed, when (seconds after its spawn), and its exit."""

    rc: int
    events: list[dict[str, object]]
    stderr: str
    seen_at: list[float] = field(default_factory=list)  # per event, seconds after spawn

    def first(self, event: str) -> dict[str, object] | None:
        return next((e for e in self.events if e.get("event") == event), None)

    @property
    def path(self) -> str | None:
        """The path of the ``delivered`` event (the path the message went over)."""
        delivered = self.first("delivered")
        return None if delivered is None else str(delivered["path"])

    @property
    def connect_ms(self) -> float | None:
        """The node's own time to connect (``connected``'s elapsed_ms, as the node's race
        measures it)."""
        connected = self.first("connected")
        return None if connected is None else float(str(connected["elapsed_ms"]))

    @property
    def connected_after_ms(self) -> float | None:
        """Wall time from spawning the process to its ``connected`` line (process start and
        the Argon2id derivation included: compare with the lan/lan cell, the baseline)."""
        for event, at in zip(self.events, self.seen_at, strict=True):
            if event.get("event") == "connected":
                return round(at * 1000, 1)
        return None

    @property
    def received(self) -> list[str]:
        return [str(e["text"]) for e in self.events if e.get("event") == "message"]


def parse_events(out: bytes) -> list[dict[str, object]]:
    """The JSON objects of a ``--json`` run's stdout, one per line."""
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()]


class _Watch:
    """Reads one process's stdout lines (time-stamped on arrival) and stderr in threads.

    Two processes run at once and either may fill a pipe while the other is waited for;
    threads drain both, and the stamps give the wall time of each JSON event.
    """

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.started = time.monotonic()
        self.lines: list[tuple[float, bytes]] = []
        self.err = b""
        self.threads = [
            threading.Thread(target=self._read_out, daemon=True),
            threading.Thread(target=self._read_err, daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.monotonic() - self.started, line))

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        self.err = self.proc.stderr.read()

    def result(self, timeout: float) -> PeerRun:
        """Wait for the exit (killing the process after timeout) and return the run."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        for thread in self.threads:
            thread.join(timeout)
        kept = [(at, line) for at, line in self.lines if line.strip()]
        events = [json.loads(line) for _, line in kept]
        return PeerRun(rc, events, self.err.decode(errors="replace"), [at for at, _ in kept])


def run_cell(cell: Cell, p2pd: P2pd, phrase: str) -> tuple[PeerRun, PeerRun]:
    """``p2pd send`` on alice and bob at once, each sending one line; both runs' results."""
    watches = [
        _Watch(p2pd.start(host, "send", phrase, f"from {host.name}", *cell.wan_flags(),
                          "--json", "--timeout", str(SEND_TIMEOUT)))
        for host in (cell.alice, cell.bob)
    ]  # fmt: skip
    alice, bob = (watch.result(SEND_TIMEOUT + EXIT_GRACE) for watch in watches)
    return alice, bob
