"""The reachability matrix in the lab: every pair of network kinds, and a relay-to-punched upgrade.

Each cell (`matrix.cells`: the 15 unordered pairs of lan, eim, upnp, edm, blocked; see
`tests.netlab.matrix` for what "lan" pairs mean; plus eim/cgnat, the stock miniupnpd) builds
its topology with real coturn, miniupnpd and a ``p2pd relay`` assist on the public segment,
runs ``p2pd send`` on alice and bob at once, and checks both messages arrived and each
peer's ``delivered`` path is one the topology allows. ``tools/reachability`` runs the same
cells and writes docs/reachability.md.

The upgrade test cuts UDP between the two home routers' public addresses on the public
switch, so an eim/eim session can only start through the relay; once alice reports it
``connected`` (over the relay) the cut is healed, and the 20 MiB message must finish intact
with a ``path`` event from relay to punched before it is ``delivered``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import fresh_passphrase
from tests.netlab.fixtures import lab  # noqa: F401
from tests.netlab.lab import Lab, read_line
from tests.netlab.matrix import (
    EXIT_GRACE,
    EXTRA_CELLS,
    SERVER_ADDRESSES,
    STUN_PORT,
    Kind,
    build_cell,
    cells,
    matrix_unavailable_reason,
    run_cell,
)
from tests.netlab.p2pd_procs import REPO, P2pd, finish

pytestmark = [pytest.mark.netlab, pytest.mark.slow]

# The big message of the upgrade test, its timeout, and the alphabet it is drawn from
# (printable ASCII and newline, no "\r", as in test_send_lan's 10 MiB test).
UPGRADE_MESSAGE_BYTES = 20 * 1024 * 1024
UPGRADE_TIMEOUT = 240
ALPHABET = bytes(range(0x20, 0x7F)) + b"\n"
# Seconds to wait for alice's first JSON event (connected, through the relay).
CONNECT_WAIT = 90.0


def wan_flags_missing() -> bool:
    """Whether this checkout's ``p2pd send`` lacks the WAN flags (``--assist``)."""
    help_text = subprocess.run(
        [sys.executable, "-m", "p2pd", "send", "--help"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    ).stdout  # fmt: skip
    return "--assist" not in help_text


@pytest.fixture
def wan_flags() -> None:
    """Skip a test that runs p2pd with the WAN flags when this checkout lacks them."""
    if wan_flags_missing():
        pytest.skip(reason="needs p2pd WAN flags")


def require_services(left: Kind, right: Kind) -> None:
    """Skip (fail under CI) when coturn or the lab miniupnpd this cell needs is missing."""
    reason = matrix_unavailable_reason(left, right)
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI is set, so the matrix must run, but: {reason}", pytrace=False)
    pytest.skip(reason=reason)


ALL_CELLS = [*cells(), *EXTRA_CELLS]
CELL_IDS = [f"{a}-{b}" for a, b in ALL_CELLS]
# The RFC 4787 mapping a STUN probe from behind each router kind must report (RFC 5780
# tests against coturn's two addresses); None: no STUN server can be reached at all.
STUN_MAPPING: dict[Kind, tuple[str, ...] | None] = {
    "eim": ("endpoint-independent",),
    "upnp": ("endpoint-independent",),
    "edm": ("address-dependent", "address-and-port-dependent"),
    "blocked": None,
    "cgnat": ("endpoint-independent",),
}


@pytest.mark.parametrize(("left", "right"), ALL_CELLS, ids=CELL_IDS)
def test_cell_topology_is_the_nat_its_kinds_name(
    lab: Lab,  # noqa: F811
    left: Kind,
    right: Kind,
) -> None:
    """The harness's own check, without p2pd: what STUN sees from each peer fits the kinds."""
    from tests.netlab.coturn import run_probe

    require_services(left, right)
    cell = build_cell(lab, left, right, assist=False)
    servers = [(address, STUN_PORT) for address in SERVER_ADDRESSES]
    if (left, right) == ("lan", "lan"):  # no router: the public segment is out of reach
        with pytest.raises(subprocess.CalledProcessError):
            lab.check_output(cell.alice, ["ip", "route", "get", SERVER_ADDRESSES[0]])
        return
    sides = [(cell.alice, left), (cell.bob, right)] if left != "lan" else [(cell.alice, right)]
    for host, kind in sides:
        result = run_probe(lab, host.name, servers)
        wanted = STUN_MAPPING[kind] if kind != "lan" else None
        if wanted is None:
            assert result["servers"] == [], (host.name, result)
        else:
            assert result["mapping"] in wanted, (host.name, result)


@pytest.mark.usefixtures("wan_flags")
@pytest.mark.parametrize(("left", "right"), ALL_CELLS, ids=CELL_IDS)
def test_cell_delivers_both_messages_over_the_best_path(
    lab: Lab,  # noqa: F811
    tmp_path: Path,
    left: Kind,
    right: Kind,
) -> None:
    require_services(left, right)
    cell = build_cell(lab, left, right, state_dir=tmp_path / "assist")
    alice, bob = run_cell(cell, P2pd(lab, tmp_path), fresh_passphrase())
    for name, run in (("alice", alice), ("bob", bob)):
        print(
            f"cell {cell.name}: {name} {run.path}, connect {run.connect_ms} ms "
            f"({run.connected_after_ms} ms after spawn)"
        )
    assert alice.rc == 0, alice.stderr
    assert bob.rc == 0, bob.stderr
    assert alice.received == ["from bob"]
    assert bob.received == ["from alice"]
    assert alice.path in cell.expected.left, (alice.path, cell.expected.reason)
    assert bob.path in cell.expected.right, (bob.path, cell.expected.reason)
    assert alice.connect_ms is not None
    assert bob.connect_ms is not None


def random_text(size: int) -> bytes:
    table = bytes(ALPHABET[i % len(ALPHABET)] for i in range(256))
    return os.urandom(size).translate(table)


def next_event(proc: subprocess.Popen[bytes], event: str) -> dict[str, object]:
    """Read proc's JSON lines until one of the given event; that one."""
    deadline = time.monotonic() + CONNECT_WAIT
    while True:
        line: dict[str, object] = json.loads(read_line(proc, deadline - time.monotonic()))
        if line["event"] == event:
            return line


@pytest.mark.usefixtures("wan_flags")
def test_a_relayed_session_moves_to_the_punched_path_mid_transfer(
    lab: Lab,  # noqa: F811
    tmp_path: Path,
) -> None:
    require_services("eim", "eim")
    cell = build_cell(lab, "eim", "eim", state_dir=tmp_path / "assist")
    wan = [router.wan.address for router in cell.routers if router.wan is not None]
    pub = lab.segments["pub"]
    lab.cut_udp(pub, *wan)
    p2pd = P2pd(lab, tmp_path)
    phrase = fresh_passphrase()
    message = random_text(UPGRADE_MESSAGE_BYTES)
    message_file = tmp_path / "big.txt"
    message_file.write_bytes(message)
    listener = p2pd.start(
        cell.bob, "listen", phrase, *cell.wan_flags(), "--count", "1",
        "--timeout", str(UPGRADE_TIMEOUT),
    )  # fmt: skip
    sender = p2pd.start(
        cell.alice, "send", phrase, "--message-file", str(message_file), *cell.wan_flags(),
        "--json", "--timeout", str(UPGRADE_TIMEOUT),
    )  # fmt: skip
    connected = next_event(sender, "connected")
    assert connected["path"] == "relay", connected
    lab.heal(pub)
    healed = time.monotonic()
    rc, out, err = finish(listener, UPGRADE_TIMEOUT + EXIT_GRACE)
    assert rc == 0, err
    assert len(out) == len(message) + 1
    assert hashlib.sha256(out).hexdigest() == hashlib.sha256(message + b"\n").hexdigest()
    rc, sender_out, err = finish(sender, UPGRADE_TIMEOUT + EXIT_GRACE)
    assert rc == 0, err
    events = [json.loads(line) for line in sender_out.decode().splitlines()]
    kinds = [(e["event"], e.get("path")) for e in events]
    assert ("path", "punched") in kinds, kinds
    upgrade = kinds.index(("path", "punched"))
    assert events[upgrade]["from"] == "relay"
    assert [e for e, _ in kinds].index("delivered") > upgrade, kinds
    assert ("delivered", "punched") in kinds, kinds
    print(f"20 MiB relay -> punched: delivered {time.monotonic() - healed:.1f} s after the heal")
