"""p2pd on an IPv6-only LAN (`lan2-v6`: no IPv4 at all): a direct target, and an assist relay
reached over IPv6 whose peers punch to each other's IPv6 addresses.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.conftest import fresh_passphrase
from tests.netlab.fixtures import lab  # noqa: F401
from tests.netlab.lab import Lab, read_line
from tests.netlab.p2pd_procs import P2pd, finish, text_lines, wait_listening
from tests.netlab.presets import lan2_v6

SEND_TIMEOUT = 30
EXIT_GRACE = 30
HOST1 = "2001:db8:7::1"
RELAY_PORT = 7000
#: No IPv4 beacons can work here and mDNS is kept out: only the path under test remains.
QUIET = ("--no-mdns", "--no-beacon", "--no-upnp")


def delivered_paths(out: bytes) -> list[object]:
    events = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    return [e["path"] for e in events if e["event"] == "delivered"]


def test_a_direct_ipv6_target(lab: Lab, tmp_path: Path) -> None:  # noqa: F811
    lan2_v6(lab)
    host1, host2 = lab.hosts["host1"], lab.hosts["host2"]
    p2pd = P2pd(lab, tmp_path)
    phrase = fresh_passphrase()
    listener = p2pd.start(host1, "listen", phrase, *QUIET, "--count", "1", "--timeout", "45")
    port = wait_listening(listener)
    sender = p2pd.start(
        host2, "send", phrase, "over IPv6", *QUIET, "--target", f"[{HOST1}]:{port}",
        "--json", "--timeout", str(SEND_TIMEOUT),
    )  # fmt: skip
    rc, out, err = finish(sender, SEND_TIMEOUT + EXIT_GRACE)
    assert rc == 0, err
    assert delivered_paths(out) == ["direct"]
    rc, out, err = finish(listener, SEND_TIMEOUT + EXIT_GRACE)
    assert rc == 0, err
    assert text_lines(out) == ["over IPv6"]


def test_an_assist_over_ipv6_and_a_punched_ipv6_path(lab: Lab, tmp_path: Path) -> None:  # noqa: F811
    lan2_v6(lab)
    host1, host2 = lab.hosts["host1"], lab.hosts["host2"]
    p2pd = P2pd(lab, tmp_path)
    relay = p2pd.start(host1, "relay", "--bind", f"[{HOST1}]:{RELAY_PORT}", "--json")
    assert json.loads(read_line(relay, 30))["event"] == "relay"
    phrase = fresh_passphrase()
    assist = ("--assist", f"[{HOST1}]:{RELAY_PORT}")
    a = p2pd.start(host1, "send", phrase, "from 1", *QUIET, *assist, "--json", "--timeout", "30")
    b = p2pd.start(host2, "send", phrase, "from 2", *QUIET, *assist, "--json", "--timeout", "30")
    (rc_a, out_a, err_a), (rc_b, out_b, err_b) = finish(a, 60), finish(b, 60)
    assert (rc_a, rc_b) == (0, 0), err_a + err_b
    assert delivered_paths(out_a) == ["punched"] and delivered_paths(out_b) == ["punched"]
