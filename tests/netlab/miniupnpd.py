"""Run a real miniupnpd (UPnP IGD, NAT-PMP, PCP) on a lab router's LAN side.

Theory of operation: `start_miniupnpd` takes a router made by `Lab.router` and gives it what
the Debian nftables build of miniupnpd expects to find (LAB-NOTES, "miniupnpd in the lab"):
one ``table inet filter`` holding a ``forward`` base chain (policy drop, established and
LAN-to-WAN traffic accepted, then ``jump miniupnpd``), nat ``prerouting``/``postrouting``
base chains jumping to ``prerouting_miniupnpd``/``postrouting_miniupnpd``, and the three
empty chains miniupnpd fills with one rule per mapping. A router built with NAT already has
the lab's masquerade and its own forward chain, which drops everything new from the WAN;
packets that a mapping DNATed must get past that chain too, so one rule
(``ct status dnat accept``) is inserted at its head, as a home router's firewall does for
its port forwards. A router built without NAT gets the masquerade here.

The daemon runs in the foreground (``-d``) in the router's namespace, with its config,
pid file, lease file and log in a per-router temporary directory (so two routers never
share a pid file), and the function returns once it answers a NAT-PMP request and accepts
a TCP connection on its HTTP port, both from inside the router.

``patched=True`` runs the lab build from ``tools/build-miniupnpd`` (TEST-NET counts as a
public address, so it grants real mappings); ``patched=False`` runs Debian's stock binary,
which refuses its TEST-NET external address: the "UPnP gateway behind carrier-grade NAT"
cell, where GetExternalIPAddress is empty, AddPortMapping fails and NAT-PMP answers 3.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import uuid

from .lab import Lab
from .netns import LabError
from .nodes import Router

#: The lab build (tools/build-miniupnpd); overridable for a build kept elsewhere.
PATCHED_BINARY = os.environ.get("P2PD_MINIUPNPD_LAB", "/var/cache/p2pd-lab/miniupnpd-lab")
#: Debian's miniupnpd-nftables binary, unchanged.
STOCK_BINARY = "/usr/sbin/miniupnpd"
#: The IGD's HTTP (SOAP) port on the LAN address; fixed so logs and captures are readable.
HTTP_PORT = 5000
#: The NAT-PMP/PCP server port (RFC 6886 section 3, RFC 6887 section 19.1).
NATPMP_PORT = 5351
#: Mapped external ports miniupnpd may grant, and for which internal ports: unprivileged only,
#: as the Debian example config suggests.
ALLOWED_PORTS = "1024-65535"
#: Seconds to wait for a freshly started daemon to answer.
READY_TIMEOUT = 10.0
#: Where each router's files live, so tests can read the log: (lab prefix, router) -> dir.
_WORKDIRS: dict[tuple[str, str], str] = {}

# Waits until miniupnpd answers a NAT-PMP external-address request (any result code counts:
# the stock binary answers 3) and accepts a TCP connection on its HTTP port.
_PROBE = r"""
import socket, sys, time
lan, natpmp, http, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
deadline = time.monotonic() + timeout
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.settimeout(0.1)
answered = natpmp == 0
while time.monotonic() < deadline:
    if not answered:
        udp.sendto(b"\x00\x00", (lan, natpmp))
        try:
            answered = len(udp.recv(64)) >= 4
        except OSError:
            continue
    if not answered:
        continue
    if http == 0:
        sys.exit(0)
    try:
        socket.create_connection((lan, http), timeout=0.1).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.05)
sys.exit(1)
"""


def miniupnpd_unavailable_reason(*, patched: bool = True) -> str | None:
    """Why the wanted miniupnpd binary cannot run here, or None."""
    binary = PATCHED_BINARY if patched else STOCK_BINARY
    if not os.access(binary, os.X_OK):
        hint = "tools/build-miniupnpd" if patched else "tools/install-lab-deps"
        return f"{binary} is missing: run {hint} as root"
    return None


def miniupnpd_log(lab: Lab, router: Router) -> str:
    """The daemon's log so far (for assertion messages)."""
    workdir = _WORKDIRS.get((lab.prefix, router.name))
    if workdir is None:
        return ""
    try:
        with open(os.path.join(workdir, "miniupnpd.log"), encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _ruleset(router: Router) -> str:
    wan, lan = _ifnames(router)
    masquerade = "" if router.nat is not None else f'oifname "{wan}" masquerade'
    # One statement per line: nft's file syntax rejects "jump x }" on one line (LAB-NOTES).
    return f"""
table inet filter {{
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "{lan}" oifname "{wan}" accept
        jump miniupnpd
    }}
    chain miniupnpd {{
    }}
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        jump prerouting_miniupnpd
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        jump postrouting_miniupnpd
        {masquerade}
    }}
    chain prerouting_miniupnpd {{
    }}
    chain postrouting_miniupnpd {{
    }}
}}
"""


def _ifnames(router: Router) -> tuple[str, str]:
    if router.wan is None or router.lan is None:
        raise LabError(f"{router.name} is not a router made by Lab.router")
    return router.wan.ifname, router.lan.ifname


def _config(router: Router, workdir: str, *, upnp: bool, natpmp: bool) -> str:
    wan, lan = _ifnames(router)
    assert router.lan is not None
    subnet = router.lan.segment.subnet
    return "\n".join(
        [
            f"ext_ifname={wan}",
            f"listening_ip={lan}",
            f"http_port={HTTP_PORT}",
            f"enable_natpmp={'yes' if natpmp else 'no'}",
            f"enable_upnp={'yes' if upnp else 'no'}",
            "ipv6_disable=yes",
            "secure_mode=yes",
            "system_uptime=yes",
            f"uuid={uuid.uuid4()}",
            f"lease_file={os.path.join(workdir, 'leases')}",
            "upnp_table_name=filter",
            "upnp_nat_table_name=filter",
            "upnp_forward_chain=miniupnpd",
            "upnp_nat_chain=prerouting_miniupnpd",
            "upnp_nat_postrouting_chain=postrouting_miniupnpd",
            f"allow {ALLOWED_PORTS} {subnet} {ALLOWED_PORTS}",
            "deny 0-65535 0.0.0.0/0 0-65535",
            "",
        ]
    )


def start_miniupnpd(
    lab: Lab, router: Router, *, patched: bool = True, upnp: bool = True, natpmp: bool = True
) -> None:
    """Load miniupnpd's nftables chains on router and run it on the LAN side until it answers.

    ``upnp``/``natpmp`` switch the IGD and NAT-PMP/PCP services (tests of one method alone);
    the readiness probe checks only what is enabled.

    Raises `LabError` when the binary is missing or the daemon does not answer in time
    (the message carries its log).
    """
    reason = miniupnpd_unavailable_reason(patched=patched)
    if reason is not None:
        raise LabError(reason)
    _ifnames(router)  # a router made by Lab.router, or LabError
    assert router.lan is not None
    lab.nft(router, _ruleset(router))
    if router.nat is not None:
        lab.nft(router, "insert rule inet lab_router lab_fwd ct status dnat accept")
    workdir = tempfile.mkdtemp(prefix=f"{lab.prefix}-{router.name}-miniupnpd-")
    atexit.register(shutil.rmtree, workdir, True)
    _WORKDIRS[(lab.prefix, router.name)] = workdir
    conf = os.path.join(workdir, "miniupnpd.conf")
    with open(conf, "w", encoding="utf-8") as f:
        f.write(_config(router, workdir, upnp=upnp, natpmp=natpmp))
    binary = PATCHED_BINARY if patched else STOCK_BINARY
    with open(os.path.join(workdir, "miniupnpd.log"), "wb") as log:
        proc = lab.run(
            router,
            [binary, "-f", conf, "-d", "-P", os.path.join(workdir, "miniupnpd.pid")],
            stdout=log,
            stderr=log,
        )
    probe = lab.run(
        router,
        [
            sys.executable,
            "-c",
            _PROBE,
            router.lan.address,
            str(NATPMP_PORT if natpmp else 0),
            str(HTTP_PORT if upnp else 0),
            str(READY_TIMEOUT),
        ],
    )
    status = probe.wait(READY_TIMEOUT + 5)
    if status != 0 or proc.poll() is not None:
        raise LabError(
            f"miniupnpd on {router.name} did not answer within {READY_TIMEOUT} s "
            f"(exit {proc.poll()}):\n{miniupnpd_log(lab, router)}"
        )
