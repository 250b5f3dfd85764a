"""A network lab of real Linux network namespaces: hosts, bridged segments, NAT routers, loss.

Theory of operation: a `Lab` owns a random prefix (``p2pl-<6 hex>``) and makes one namespace per
node, ``<prefix>-<host>`` for hosts and routers, ``<prefix>-sw-<segment>`` for the bridge ("switch")
of each segment. Attaching a host to a segment creates a veth pair *from inside the host's
namespace* with its peer created directly in the switch's namespace
(``ip -n HOST link add ethN type veth peer name pM netns SWITCH``), so no interface ever exists
in, or is moved out of, the root namespace. Routers masquerade with nftables; loss is an
nftables ``numgen`` drop in the receiving namespace's prerouting hook (this kernel has no netem).

Loss per datagram under UDP GSO: a sender using ``UDP_SEGMENT`` (p2pd's node does) hands the
kernel up to 64 datagrams as one skb, and a veth passes that skb along whole, so nftables sees,
counts and drops the batch as one packet (measured: 200 sends of 50 datagrams reached the
receiver's prerouting hook as 200 packets, and 10 % loss dropped whole batches of 50). Every lab
veth end therefore gets ``gso_max_segs`` `WIRE_GSO_MAX_SEGS` (1): the kernel segments a batch in
software as it leaves the sender, as a real NIC would on the wire, so hooks, NAT and loss see
each datagram (then 10,000 packets, and 10 % loss left 9,016 of 10,000). ``ethtool -K IF gso
off`` does not do this (the batch still crossed as one skb); ``tx-udp-segmentation off`` does
but needs ethtool. ``Lab(segment_offload=True)`` keeps the kernel default.

Invariants:

- Only addresses inside `ALLOWED_NETWORKS` are ever assigned, and only inside lab namespaces.
- No namespace gets a route to the root namespace: a host's only default route is via a lab
  router on one of its segments, and a router whose WAN segment has no router of its own gets
  no default route at all, so ``ip route get 1.1.1.1`` fails in it.
- Teardown (`close`, also run by ``with``, by the pytest fixture and by ``atexit``) kills the
  processes started with `run`, then everything left inside the namespaces, then deletes every
  namespace carrying this lab's prefix, including half-built ones.

Extension points for later work: services (miniupnpd, coturn, tor) run with `Lab.run` and load
their firewall with `Lab.nft`; a `Router` exposes its ``wan``/``lan`` interface names and
addresses for their configs. Delay and reordering need a userspace relay: route a segment
through a ``router(..., nat=None)`` whose `nft` ruleset redirects UDP to a relay process started
with `run`; `loss` shows the per-host ruleset pattern to copy. Topologies live in `presets`.
"""

from __future__ import annotations

import atexit
import functools
import ipaddress
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from .netns import (
    LAB_NAMESPACE_PREFIX,
    LabError,
    check_prefix,
    destroy_prefix,
    run_command,
)
from .netns import (
    read_line as read_line,  # re-exported: lab users read process output with it
)
from .nodes import (
    IFNAME_PATTERN,
    NODE_NAME_PATTERN,
    Attachment,
    Host,
    Nat,
    Router,
    Segment,
    allowed,
)

# Hex digits of randomness in a generated prefix: 2**24 labs make a collision negligible.
PREFIX_RANDOM_BYTES = 3
# Seconds a tracked process gets after SIGTERM at teardown before it is SIGKILLed.
TERMINATE_GRACE = 1.0
# Loss is given in whole percent; nftables draws numgen random mod PERCENT per packet.
PERCENT = 100
# Default seconds for `check_output` and `read_line`.
DEFAULT_TIMEOUT = 10.0
# nftables masquerade flavour per NAT kind: plain masquerade keeps the source port when it can,
# which makes Linux NAT endpoint-independent for UDP; fully-random picks a port per flow
# (endpoint-dependent, "symmetric"). The UDP-blocking firewall NATs TCP like a home router.
MASQUERADE = {
    "eim": "masquerade",
    "edm": "masquerade random,fully-random",
    "udp-blocked": "masquerade",
}
# Forward-chain rules placed before the stateful accept, per router kind: the UDP-blocking
# firewall drops UDP both ways, replies included (TCP, ICMP and everything else pass).
FORWARD_FIRST = {"eim": "", "edm": "", "udp-blocked": "meta l4proto udp drop"}
# The input rules of a router that drops unsolicited WAN input (`Lab.router`'s drop_wan_input).
WAN_INPUT_DROP = 'ct state established,related accept\niifname "wan0" drop'
# Datagrams a lab veth may carry in one skb: 1 makes the kernel cut GSO batches before the
# wire, so nftables hooks (loss, counters, NAT) act per datagram (see the module docstring).
WIRE_GSO_MAX_SEGS = 1
# A host's interface on an IPv6 segment skips duplicate address detection (no one else
# claims lab addresses), so the address is usable at once instead of after about 1-2 s.
IPV6_NODAD = "nodad"


class Lab:
    """A set of namespaces sharing one prefix; a context manager that always tears down."""

    def __init__(self, prefix: str | None = None, *, segment_offload: bool = False) -> None:
        """segment_offload=False (default) cuts GSO batches per datagram on every veth."""
        self.prefix = check_prefix(
            prefix or LAB_NAMESPACE_PREFIX + secrets.token_hex(PREFIX_RANDOM_BYTES)
        )
        self.segment_offload = segment_offload
        self.hosts: dict[str, Host] = {}
        self.segments: dict[str, Segment] = {}
        self.processes: list[subprocess.Popen[Any]] = []
        self._loss: dict[str, dict[int | None, int]] = {}
        self._closed = False
        atexit.register(self.close)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- building -------------------------------------------------------------------------

    def _new_namespace(self, node: str) -> str:
        if self._closed:
            raise LabError(f"lab {self.prefix} is closed")
        netns = f"{self.prefix}-{node}"
        run_command(["ip", "netns", "add", netns])
        run_command(["ip", "-n", netns, "link", "set", "lo", "up"])
        return netns

    def _check_new_name(self, name: str) -> None:
        if not NODE_NAME_PATTERN.match(name):
            raise LabError(f"name {name!r} must match {NODE_NAME_PATTERN.pattern}")
        if name in self.hosts or name in self.segments:
            raise LabError(f"name {name!r} is already used in lab {self.prefix}")

    def host(self, name: str) -> Host:
        """A new namespace with loopback up and forwarding off."""
        self._check_new_name(name)
        host = Host(name, self._new_namespace(name))
        self.hosts[name] = host
        self.sysctl(host, "net.ipv4.ip_forward", "0")
        return host

    def segment(self, name: str, subnet: str) -> Segment:
        """A new bridge in its own namespace; hosts `attach` to it. IPv4 or IPv6 (one family)."""
        self._check_new_name(name)
        network = ipaddress.ip_network(subnet)
        if not allowed(network):
            raise LabError(f"subnet {network} is outside the lab's allowed networks")
        netns = self._new_namespace(f"sw-{name}")
        segment = Segment(name, netns, network)
        self.segments[name] = segment
        # mcast_snooping 0: behave like a dumb switch so mDNS/SSDP flood without an IGMP querier.
        run_command(
            ["ip", "-n", netns, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"]
        )
        run_command(["ip", "-n", netns, "link", "set", "br0", "up"])
        return segment

    def attach(
        self, host: Host, segment: Segment, address: str | None = None, *, ifname: str | None = None
    ) -> str:
        """Wire host to segment with a new veth pair, assign an address (auto if None), return it.

        If the segment has a router, the host also gets a default route via it (unless it has one).
        """
        ifname = ifname or f"eth{len(host.attachments)}"
        if not IFNAME_PATTERN.match(ifname):
            raise LabError(f"interface name {ifname!r} must match {IFNAME_PATTERN.pattern}")
        ip = segment.allocate(address)
        port = f"p{segment.ports}"
        segment.ports += 1
        run_command(
            ["ip", "-n", host.netns, "link", "add", ifname, "type", "veth",
             "peer", "name", port, "netns", segment.netns]
        )  # fmt: skip
        if not self.segment_offload:
            for netns, dev in ((host.netns, ifname), (segment.netns, port)):
                run_command(
                    ["ip", "-n", netns, "link", "set", dev, "gso_max_segs", str(WIRE_GSO_MAX_SEGS)]
                )
        run_command(["ip", "-n", segment.netns, "link", "set", port, "master", "br0", "up"])
        self._add_address(host, ifname, segment, str(ip))
        run_command(["ip", "-n", host.netns, "link", "set", ifname, "up"])
        host.attachments.append(Attachment(segment, ifname, str(ip)))
        if segment.gateway is not None and segment.gateway != str(ip):
            self._default_route(host, segment.gateway)
        return str(ip)

    def _add_address(self, host: Host, ifname: str, segment: Segment, address: str) -> None:
        flags = [IPV6_NODAD] if segment.subnet.version == 6 else []
        run_command(
            ["ip", "-n", host.netns, "addr", "add", f"{address}/{segment.subnet.prefixlen}",
             "dev", ifname, *flags]
        )  # fmt: skip

    def add_address(self, host: Host, segment: Segment, address: str) -> str:
        """Give host a further address on a segment it is attached to (a multi-homed server)."""
        attachment = host.on(segment)
        ip = str(segment.allocate(address))
        self._add_address(host, attachment.ifname, segment, ip)
        host.extra_addresses.append(ip)
        return ip

    def _default_route(self, host: Host, gateway: str) -> None:
        if host.has_default_route:
            return
        run_command(["ip", "-n", host.netns, "route", "add", "default", "via", gateway])
        host.has_default_route = True

    def router(
        self,
        name: str,
        wan: Segment,
        lan: Segment,
        nat: Nat | None,
        *,
        wan_address: str | None = None,
        lan_address: str | None = None,
        drop_wan_input: bool = False,
    ) -> Router:
        """A forwarding host between wan and lan; LAN hosts route via it.

        nat="eim": ``masquerade`` (endpoint-independent mapping); nat="edm":
        ``masquerade random,fully-random`` (endpoint-dependent, "symmetric"); nat="udp-blocked":
        like "eim" for TCP, but no UDP is forwarded either way; None: plain routing.
        With NAT, unsolicited inbound forwarding from the WAN is dropped, as in a home router;
        drop_wan_input also drops unsolicited WAN traffic to the router itself, before conntrack
        confirms an entry for it. Without that, a peer's early punch probe leaves an entry
        that takes the port masquerade would have preserved for the LAN host's own flow to
        that peer (tests/netlab/test_punch.py shows it); real home routers drop such input.
        Routers are IPv4 only (NAT66 is not a home-network case worth modelling).
        The router gets a default route only if wan itself has a router (nested NAT).
        Addresses not given are the lowest free ones (so a router made first on a LAN is ``.1``).
        """
        if lan.gateway is not None:
            raise LabError(f"segment {lan.name} already has a router")
        if wan.subnet.version != 4 or lan.subnet.version != 4:
            raise LabError(f"router {name}: routers join IPv4 segments only")
        self._check_new_name(name)
        router = Router(name, self._new_namespace(name), nat=nat)
        self.hosts[name] = router
        self.attach(router, wan, wan_address, ifname="wan0")
        router.wan = router.on(wan)
        self.attach(router, lan, lan_address, ifname="lan0")
        router.lan = router.on(lan)
        lan.gateway = router.lan.address
        self.sysctl(router, "net.ipv4.ip_forward", "1")
        if nat is not None:
            self.nft(
                router,
                f"""
                table ip lab_nat {{
                    chain lab_post {{
                        type nat hook postrouting priority srcnat; policy accept;
                        oifname "wan0" {MASQUERADE[nat]}
                    }}
                }}
                table inet lab_router {{
                    chain lab_fwd {{
                        type filter hook forward priority filter; policy accept;
                        {FORWARD_FIRST[nat]}
                        ct state established,related accept
                        iifname "wan0" drop
                    }}
                    chain lab_in {{
                        type filter hook input priority filter; policy accept;
                        {WAN_INPUT_DROP if drop_wan_input else ""}
                    }}
                }}
                """,
            )
        for other in self.hosts.values():
            if other is not router and any(a.segment is lan for a in other.attachments):
                self._default_route(other, lan.gateway)
        return router

    # --- impairments and firewalls ---------------------------------------------------------

    def nft(self, host: Host, script: str) -> None:
        """Load an nftables script (`nft -f -`) inside host's namespace, atomically."""
        run_command(["ip", "netns", "exec", host.netns, "nft", "-f", "-"], stdin=script)

    def sysctl(self, host: Host, key: str, value: str) -> None:
        """Set a (per-namespace) sysctl inside host's namespace."""
        run_command(["ip", "netns", "exec", host.netns, "sysctl", "-qw", f"{key}={value}"])

    def loss(self, host: Host, percent: int, *, udp_port: int | None = None) -> None:
        """Drop percent % of packets arriving at host (all IP, or UDP to one port); 0 removes it.

        The drop sits in host's prerouting hook at raw priority, so it acts like loss on the wire
        before conntrack or NAT see the packet; loopback traffic is exempt. Calling again for the
        same host and port replaces the earlier rate (rates for different ports, and the all-traffic
        rate, compound); the whole table is swapped atomically.
        """
        if not 0 <= percent <= PERCENT:
            raise LabError(f"loss percent {percent} is not in 0..100")
        rates = self._loss.setdefault(host.name, {})
        rates[udp_port] = percent
        rules = "\n".join(
            f'iifname != "lo" {"" if port is None else f"udp dport {port} "}'
            # nft rejects "< 100" (numgen's range is 0..99), so total loss is a plain drop.
            f"{'' if rate == PERCENT else f'numgen random mod {PERCENT} < {rate} '}drop"
            for port, rate in sorted(rates.items(), key=lambda item: item[0] or -1)
            if rate > 0
        )
        self._replace_table(
            host,
            "lab_loss",
            "chain lab_pre {\ntype filter hook prerouting priority raw; policy accept;\n"
            f"{rules}\n}}",
        )

    def block_udp(self, host: Host) -> None:
        """Silently drop all UDP the host receives or forwards (a "UDP blocked" network)."""
        self._replace_table(
            host,
            "lab_block",
            """
            chain lab_in {
                type filter hook input priority filter; policy accept;
                iifname != "lo" meta l4proto udp drop
            }
            chain lab_fwd {
                type filter hook forward priority filter; policy accept;
                meta l4proto udp drop
            }
            """,
        )

    def cut_udp(self, segment: Segment, a: str, b: str) -> None:
        """Drop UDP between addresses a and b (both ways) on segment's switch, until `heal`.

        A bridge-family rule in the switch namespace: the hosts, their conntrack and NAT see
        nothing, as when a path in the middle of the internet loses the packets.
        """
        switch = Host(f"sw-{segment.name}", segment.netns)
        pairs = ((a, b), (b, a))
        rules = "\n".join(
            f"ip saddr {src} ip daddr {dst} meta l4proto udp drop" for src, dst in pairs
        )
        hook = "type filter hook forward priority filter; policy accept;"
        chain = f"chain lab_fwd {{\n{hook}\n{rules}\n}}"
        self._replace_table(switch, "lab_cut", chain, family="bridge")

    def heal(self, segment: Segment) -> None:
        """Remove what `cut_udp` put on segment's switch."""
        self._replace_table(
            Host(f"sw-{segment.name}", segment.netns), "lab_cut", "", family="bridge"
        )

    def _replace_table(self, host: Host, table: str, body: str, *, family: str = "inet") -> None:
        # Declare, delete and re-create in one transaction: atomic, and works on first use.
        self.nft(host, f"table {family} {table} {{}}\ndelete table {family} {table}\n"
                       f"table {family} {table} {{\n{body}\n}}\n")  # fmt: skip

    # --- processes ---------------------------------------------------------------------------

    def run(self, host: Host, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start argv inside host's namespace; it is killed at teardown if still running."""
        if self._closed:
            raise LabError(f"lab {self.prefix} is closed")
        popen_kwargs.setdefault("start_new_session", True)
        proc: subprocess.Popen[Any] = subprocess.Popen(
            ["ip", "netns", "exec", host.netns, *argv], **popen_kwargs
        )
        self.processes.append(proc)
        return proc

    def python(self, host: Host, code: str, *args: str) -> subprocess.Popen[str]:
        """Start ``python -c code args...`` in host with text pipes on stdin and stdout."""
        proc: subprocess.Popen[str] = self.run(
            host,
            [sys.executable, "-c", code, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        return proc

    def check_output(
        self, host: Host, argv: Sequence[str], timeout: float = DEFAULT_TIMEOUT
    ) -> str:
        """Run argv in host to completion and return its stdout; raise CalledProcessError."""
        return subprocess.run(
            ["ip", "netns", "exec", host.netns, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        ).stdout

    # --- teardown ----------------------------------------------------------------------------

    def detach(self) -> None:
        """Leave the namespaces in place when this object goes away (used by `tools/netlab up`)."""
        self._closed = True
        atexit.unregister(self.close)

    def close(self) -> None:
        """Kill tracked processes, then whatever is left in the namespaces, then delete them."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        for proc in self.processes:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes:
            try:
                proc.wait(TERMINATE_GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        destroy_prefix(self.prefix)


@functools.cache
def lab_unavailable_reason() -> str | None:
    """Why this machine cannot run the lab (not root, no ip/nft, namespaces refused), or None.

    Probes once per process by building and tearing down a one-host lab that loads a ruleset.
    """
    if os.geteuid() != 0:
        return "the network lab needs root (network namespaces, veth, nftables)"
    for tool in ("ip", "nft", "sysctl"):
        if shutil.which(tool) is None:
            return f"the network lab needs `{tool}`: run tools/install-lab-deps as root"
    try:
        with Lab() as lab:
            lab.nft(lab.host("probe"), "table inet lab_probe {}")
    except LabError as exc:
        return f"network namespaces are unusable here: {exc}"
    return None
