"""coturn as the lab's STUN server, and a blocking STUN probe to run inside lab namespaces.

Theory of operation: `start_coturn` runs Debian's ``turnserver --stun-only`` (see LAB-NOTES,
"STUN server") inside a lab host's namespace with `Lab.run`, so the lab's teardown kills it
like any other lab process, then polls it with real STUN Binding requests sent from inside
that namespace until every listening address answers (bounded by `COTURN_READY_TIMEOUT`).
Given two addresses, coturn answers RFC 5780 requests and reports the other address and its
alternate port (``port + 1``) in OTHER-ADDRESS.

`probe` drives `transports.stun.StunProber` with a plain blocking socket (``select`` and
``time.monotonic``), the smallest possible driver; ``python -c`` runs it in a namespace via
`run_probe`, which returns the classification as the ``--json`` dict plus the local port.
"""

from __future__ import annotations

import ipaddress
import json
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ifaddr

from transports.natclass import Addr
from transports.stun import Classified, Mapped, StunProber

from .lab import Lab
from .netns import LabError

REPO = Path(__file__).resolve().parents[2]
#: The STUN port (RFC 8489 section 18.4).
STUN_PORT = 3478
#: Seconds coturn gets to start answering on every address; it is up in well under a second.
COTURN_READY_TIMEOUT = 10.0
#: Seconds a probe run inside a namespace may take: the prober gives up on a server after
#: 7.75 s, and a few OTHER-ADDRESS follow-ups start late.
PROBE_TIMEOUT = 30.0
#: Fast retransmissions for the readiness poll (the server is one hop away).
READY_RTO = 0.05
READY_TRIES = 4
#: Longest select() wait of the blocking driver when no timer is pending.
IDLE_WAIT = 0.5
#: Largest datagram the probe reads.
MAX_DATAGRAM = 2048


def turnserver_missing_reason() -> str | None:
    """Why coturn cannot run here (no ``turnserver`` binary), or None."""
    if shutil.which("turnserver") is None:
        return "coturn's `turnserver` is not installed (Debian package coturn)"
    return None


def add_address(lab: Lab, host: str, address: str) -> None:
    """Give lab host ``host`` a further address on the segment whose subnet contains it."""
    node = lab.hosts[host]
    wanted = ipaddress.ip_address(address)
    for attachment in node.attachments:
        segment = attachment.segment
        if wanted in segment.subnet:
            segment.allocate(address)  # refuses addresses in use or outside the subnet
            cidr = f"{address}/{segment.subnet.prefixlen}"
            lab.check_output(node, ["ip", "addr", "add", cidr, "dev", attachment.ifname])
            return
    raise LabError(f"host {host} has no segment whose subnet holds {address}")


def start_coturn(lab: Lab, host: str, addresses: Sequence[str], port: int = STUN_PORT) -> None:
    """Run ``turnserver --stun-only`` in ``host`` on every address; return once all answer.

    The addresses must already be on the host (`add_address`).  Raises LabError, with
    coturn's log, if it exits or does not answer within `COTURN_READY_TIMEOUT`.
    """
    if not addresses:
        raise LabError("start_coturn needs at least one address")
    node = lab.hosts[host]
    log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115  (the process holds it open)
    argv = ["turnserver", "-n", "--stun-only", "-p", str(port), "--no-cli", "--no-tls",
            "--no-dtls", "--log-file", "stdout", "--simple-log",
            "--pidfile", "/dev/null"]  # fmt: skip
    for address in addresses:
        argv += ["-L", address]
    proc = lab.run(node, argv, stdout=log, stderr=subprocess.STDOUT)
    servers = [(address, port) for address in addresses]
    deadline = time.monotonic() + COTURN_READY_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise LabError(f"turnserver exited with {proc.returncode}: {_tail(log)}")
        result = run_probe(lab, host, servers, quick=True)
        if len(result["servers"]) == len(servers):
            return
        if time.monotonic() > deadline:
            raise LabError(f"turnserver did not answer on {servers}: {_tail(log)}")


def _tail(log: Any) -> str:
    log.seek(0)
    return " | ".join(log.read().splitlines()[-10:])


def run_probe(
    lab: Lab, host: str, servers: Sequence[Addr], *, quick: bool = False
) -> dict[str, Any]:
    """Probe ``servers`` from inside ``host``; the classification's ``as_dict`` plus
    ``local_port`` and ``events`` (what the prober reported, in order)."""
    code = (
        f"import sys; sys.path.insert(0, {str(REPO)!r}); "
        "from tests.netlab.coturn import main; main()"
    )
    argv = [sys.executable, "-c", code, "--quick" if quick else "--full"]
    argv += [f"{ip},{port}" for ip, port in servers]
    proc = lab.run(lab.hosts[host], argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=PROBE_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        proc.communicate()
        raise LabError(f"STUN probe in {host} took over {PROBE_TIMEOUT} s") from exc
    if proc.returncode != 0:
        raise LabError(f"STUN probe in {host} failed ({proc.returncode}): {err.strip()}")
    result: dict[str, Any] = json.loads(out)
    return result


def local_addresses(port: int) -> list[Addr]:
    """Our own ``(ip, port)`` for every interface address (how "no NAT" is recognised)."""
    return [
        (ip.ip, port)
        for adapter in ifaddr.get_adapters()
        for ip in adapter.ips
        if isinstance(ip.ip, str)
    ]


def probe(servers: Sequence[Addr], *, quick: bool = False) -> dict[str, Any]:
    """Run one StunProber round on a fresh IPv4 UDP socket; blocking, no trio."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0", 0))  # all of the namespace's interfaces
        port = sock.getsockname()[1]
        tuning: dict[str, Any] = {}
        if quick:
            tuning = {"rto": READY_RTO, "max_tries": READY_TRIES, "follow_other_address": False}
        prober = StunProber(
            servers, time.monotonic(), local=local_addresses(port), local_port=port, **tuning
        )
        events: list[dict[str, Any]] = []
        while True:
            now = time.monotonic()
            for data, addr in prober.datagrams_to_send(now):
                sock.sendto(data, addr)
            while (event := prober.next_event()) is not None:
                if isinstance(event, Classified):
                    return {**event.result.as_dict(), "local_port": port, "events": events}
                kind = "mapped" if isinstance(event, Mapped) else "failed"
                events.append({"event": kind, "server": list(event.server)})
            timer = prober.get_timer()
            wait = IDLE_WAIT if timer is None else max(0.0, timer - now)
            if select.select([sock], [], [], wait)[0]:
                data, source = sock.recvfrom(MAX_DATAGRAM)
                prober.receive_untrusted(data, source, time.monotonic())
            now = time.monotonic()
            if timer is not None and now >= timer:
                prober.handle_timer(now)


def main() -> None:
    """``[--quick|--full] IP,PORT...``: probe, print the result as one JSON line."""
    quick = sys.argv[1] == "--quick"
    servers = [(ip, int(port)) for ip, port in (arg.split(",") for arg in sys.argv[2:])]
    print(json.dumps(probe(servers, quick=quick)), flush=True)
