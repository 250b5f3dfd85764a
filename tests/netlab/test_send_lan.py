"""`p2pd send` / `listen` between hosts on one real bridged LAN segment (10.7.0.0/24).

Every node is a real ``python -m p2pd`` process in its own namespace with its own state
directory; nothing is restricted to loopback, so subnet-broadcast beacons and mDNS run for
real on the segment.  nftables counters in the hosts' hooks show which mechanism carried the
discovery (beacons to 10.7.0.255, mDNS to port 5353) and that a listener never answers a
wrong-passphrase host.  Loss is the lab's nftables drop on each host's receive side.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from tests.integration.conftest import fresh_passphrase
from tests.netlab.fixtures import lab  # noqa: F401
from tests.netlab.lab import Lab
from tests.netlab.nodes import Host
from tests.netlab.p2pd_procs import (
    P2pd,
    add_counters,
    finish,
    read_counter,
    text_lines,
    wait_listening,
)

pytestmark = pytest.mark.netlab

SUBNET = "10.7.0.0/24"
BROADCAST = "10.7.0.255"
MDNS_PORT = 5353
# Seconds a sender waits for a peer on a clean LAN (discovery takes about 1-2 s).
SEND_TIMEOUT = 30
# Seconds a listener waits; above SEND_TIMEOUT so the sender's failure shows first.
LISTEN_TIMEOUT = 45
# Seconds the test waits for a process to exit after its own timeout could have fired.
EXIT_GRACE = 30
# Seconds a sender with no way to find its peer is given before it must exit 3.
HOPELESS_TIMEOUT = 4
# The loss test: message size, loss on each receive side, and its generous timeouts.
BIG_MESSAGE_BYTES = 10 * 1024 * 1024
LOSS_PERCENT = 10
BIG_TIMEOUT = 240
# Printable ASCII and newline, the alphabet of the big message (no "\r": text mode would
# fold "\r\n" when the sender reads its message file).
ALPHABET = bytes(range(0x20, 0x7F)) + b"\n"
# Seconds to wait for the intruder's first handshake packet to reach the listener.
INTRUDER_SEEN_TIMEOUT = 20.0
# Seconds the intruder tries: it must outlive the honest exchange (about 2 s) that starts
# once its first packet reached the listener.
INTRUDER_TIMEOUT = 10


def segment_hosts(the_lab: Lab, count: int) -> list[Host]:
    """``count`` hosts on one segment: host1 is 10.7.0.1, host2 10.7.0.2, ..."""
    segment = the_lab.segment("lan", SUBNET)
    hosts = [the_lab.host(f"host{i + 1}") for i in range(count)]
    for host in hosts:
        the_lab.attach(host, segment)
    return hosts


def json_events(out: bytes) -> list[dict[str, object]]:
    return [json.loads(line) for line in text_lines(out)]


def count_discovery(the_lab: Lab, hosts: list[Host], port: int) -> None:
    """Count, in each host's output hook, beacons sent and mDNS packets sent."""
    for host in hosts:
        add_counters(
            the_lab,
            host,
            "probe",
            "output",
            {
                "beacons": f"ip daddr {BROADCAST} udp dport {port}",
                "mdns": f"udp dport {MDNS_PORT}",
            },
        )


def random_text(size: int) -> bytes:
    """``size`` random bytes of printable ASCII and newlines."""
    table = bytes(ALPHABET[i % len(ALPHABET)] for i in range(256))
    return os.urandom(size).translate(table)


def test_listener_gets_the_message_and_sender_names_lan_path_and_listener(
    lab: Lab,  # noqa: F811
    tmp_path: Path,
) -> None:
    host1, host2 = segment_hosts(lab, 2)
    p2pd = P2pd(lab, tmp_path)
    phrase = fresh_passphrase()
    listener_fp = p2pd.fingerprint(host1)
    listener = p2pd.start(host1, "listen", phrase, "--count", "1", "--timeout", str(LISTEN_TIMEOUT))
    wait_listening(listener)
    sender = p2pd.start(
        host2, "send", phrase, "hello across the segment", "--json", "--timeout", str(SEND_TIMEOUT)
    )
    rc, out, err = finish(sender, SEND_TIMEOUT + EXIT_GRACE)
    assert rc == 0, err
    delivered = [e for e in json_events(out) if e["event"] == "delivered"]
    assert len(delivered) == 1
    assert delivered[0]["path"] == "lan"
    assert delivered[0]["peer"] == listener_fp
    rc, out, err = finish(listener, LISTEN_TIMEOUT + EXIT_GRACE)
    assert rc == 0, err
    assert text_lines(out) == ["hello across the segment"]


def test_broadcast_beacons_alone_connect(lab: Lab, tmp_path: Path) -> None:  # noqa: F811
    hosts = segment_hosts(lab, 2)
    p2pd = P2pd(lab, tmp_path)
    phrase = fresh_passphrase()
    count_discovery(lab, hosts, p2pd.derived_port(hosts[0], phrase))
    listener = p2pd.start(
        hosts[0], "listen", phrase, "--no-mdns", "--count", "1", "--timeout", str(LISTEN_TIMEOUT)
    )
    wait_listening(listener)
    sender = p2pd.start(
        hosts[1], "send", phrase, "by beacon", "--no-mdns", "--json",
        "--timeout", str(SEND_TIMEOUT),
    )  # fmt: skip
    rc, out, err = finish(sender, SEND_TIMEOUT + EXIT_GRACE)
    assert rc == 0, err
    assert [e["path"] for e in json_events(out) if e["event"] == "delivered"] == ["lan"]
    assert text_lines(finish(listener, LISTEN_TIMEOUT + EXIT_GRACE)[1]) == ["by beacon"]
    for host in hosts:
        assert read_counter(lab, host, "probe", "beacons") > 0, host.name
        assert read_counter(lab, host, "probe", "mdns") == 0, host.name


def test_mdns_alone_connects_to_a_non_derived_port(lab: Lab, tmp_path: Path) -> None:  # noqa: F811
    hosts = segment_hosts(lab, 2)
    p2pd = P2pd(lab, tmp_path)
    phrase = fresh_passphrase()
    derived = p2pd.derived_port(hosts[0], phrase)
    # The listener is not where the passphrase says: only its mDNS record tells the sender.
    other_port = derived + 1 if derived < 65535 else derived - 1
    count_discovery(lab, hosts, derived)
    listener = p2pd.start(
        hosts[0], "listen", phrase, "--no-beacon", "--port", str(other_port),
        "--count", "1", "--timeout", str(LISTEN_TIMEOUT),
    )  # fmt: skip
    assert wait_listening(listener) == other_port
    sender = p2pd.start(
        hosts[1], "send", phrase, "by mdns", "--no-beacon", "--json",
        "--timeout", str(SEND_TIMEOUT),
    )  # fmt: skip
    rc, out, err = finish(sender, SEND_TIMEOUT + EXIT_GRACE)
    assert rc == 0, err
    connected = [e for e in json_events(out) if e["event"] == "connected"]
    assert [(e["path"], e["addr"]) for e in connected] == [("lan", f"{hosts[0].ip}:{other_port}")]
    assert text_lines(finish(listener, LISTEN_TIMEOUT + EXIT_GRACE)[1]) == ["by mdns"]
    for host in hosts:
        assert read_counter(lab, host, "probe", "mdns") > 0, host.name
        assert read_counter(lab, host, "probe", "beacons") == 0, host.name


def test_without_beacons_or_mdns_nothing_connects(lab: Lab, tmp_path: Path) -> None:  # noqa: F811
    """The control for the two tests above: discovery has no third, hidden way."""
    hosts = segment_hosts(lab, 2)
    p2pd = P2pd(lab, tmp_path)
    phrase = fresh_passphrase()
    off = ("--no-beacon", "--no-mdns", "--timeout", str(HOPELESS_TIMEOUT))
    first = p2pd.start(hosts[0], "send", phrase, "one", *off)
    second = p2pd.start(hosts[1], "send", phrase, "two", *off)
    for proc in (first, second):
        rc, out, err = finish(proc, HOPELESS_TIMEOUT + EXIT_GRACE)
        assert rc == 3, err
        assert out == b""


def test_two_senders_on_two_hosts_each_print_the_others_message(
    lab: Lab,  # noqa: F811
    tmp_path: Path,
) -> None:
    host1, host2 = segment_hosts(lab, 2)
    p2pd = P2pd(lab, tmp_path)
    phrase = fresh_passphrase()
    a = p2pd.start(host1, "send", phrase, "from host1", "--timeout", str(SEND_TIMEOUT))
    b = p2pd.start(host2, "send", phrase, "from host2", "--timeout", str(SEND_TIMEOUT))
    rc_a, out_a, err_a = finish(a, SEND_TIMEOUT + EXIT_GRACE)
    rc_b, out_b, err_b = finish(b, SEND_TIMEOUT + EXIT_GRACE)
    assert (rc_a, rc_b) == (0, 0), err_a + err_b
    assert text_lines(out_a) == ["from host2"]
    assert text_lines(out_b) == ["from host1"]


def test_wrong_passphrase_host_gets_no_answer_while_the_honest_exchange_happens(
    lab: Lab,  # noqa: F811
    tmp_path: Path,
) -> None:
    listener_host, honest_host, intruder_host = segment_hosts(lab, 3)
    p2pd = P2pd(lab, tmp_path)
    phrase = fresh_passphrase()
    port = p2pd.derived_port(listener_host, phrase)
    # Every UDP datagram the listener's host sends to a peer, except mDNS: zeroconf may answer
    # the intruder's mDNS query by unicast (public: the rendezvous id and port), and the kernel
    # answers its late handshake retries with ICMP once the listener has exited.
    add_counters(
        lab,
        listener_host,
        "probe",
        "output",
        {
            "to_intruder": f"ip daddr {intruder_host.ip} udp dport != {MDNS_PORT}",
            "to_honest": f"ip daddr {honest_host.ip} udp dport != {MDNS_PORT}",
        },
    )
    add_counters(
        lab,
        listener_host,
        "probe_in",
        "input",
        {"from_intruder": f"ip saddr {intruder_host.ip} udp dport {port}"},
    )
    listener = p2pd.start(
        listener_host, "listen", phrase, "--count", "1", "--timeout", str(LISTEN_TIMEOUT)
    )
    assert wait_listening(listener) == port
    intruder = p2pd.start(
        intruder_host, "send", fresh_passphrase(), "intrusion",
        "--target", f"{listener_host.ip}:{port}", "--timeout", str(INTRUDER_TIMEOUT),
    )  # fmt: skip
    # The honest sender starts once the intruder's handshake is reaching the listener.
    deadline = time.monotonic() + INTRUDER_SEEN_TIMEOUT
    while read_counter(lab, listener_host, "probe_in", "from_intruder") == 0:
        assert time.monotonic() < deadline, "the intruder's packets never reached the listener"
        assert intruder.poll() is None, "the intruder exited before sending anything"
    honest = p2pd.start(honest_host, "send", phrase, "legit", "--timeout", str(SEND_TIMEOUT))
    rc, _, err = finish(honest, SEND_TIMEOUT + EXIT_GRACE)
    assert rc == 0, err
    assert intruder.poll() is None, "the intruder was not running during the honest exchange"
    rc, out, err = finish(listener, LISTEN_TIMEOUT + EXIT_GRACE)
    assert rc == 0, err
    assert text_lines(out) == ["legit"]
    assert "intrusion" not in err
    rc, out, err = finish(intruder, INTRUDER_TIMEOUT + EXIT_GRACE)
    assert rc == 3, err
    assert out == b""
    assert read_counter(lab, listener_host, "probe", "to_honest") > 0
    assert read_counter(lab, listener_host, "probe", "to_intruder") == 0


@pytest.mark.slow
def test_ten_mebibytes_arrive_intact_through_ten_percent_loss_each_way(
    lab: Lab,  # noqa: F811
    tmp_path: Path,
) -> None:
    host1, host2 = segment_hosts(lab, 2)
    for host in (host1, host2):
        lab.loss(host, LOSS_PERCENT)
    p2pd = P2pd(lab, tmp_path)
    phrase = fresh_passphrase()
    message = random_text(BIG_MESSAGE_BYTES)
    message_file = tmp_path / "big.txt"
    message_file.write_bytes(message)
    listener = p2pd.start(host1, "listen", phrase, "--count", "1", "--timeout", str(BIG_TIMEOUT))
    wait_listening(listener)
    started = time.monotonic()
    sender = p2pd.start(
        host2, "send", phrase, "--message-file", str(message_file), "--json",
        "--timeout", str(BIG_TIMEOUT),
    )  # fmt: skip
    rc, out, err = finish(listener, BIG_TIMEOUT + EXIT_GRACE)
    received_after = time.monotonic() - started
    assert rc == 0, err
    assert len(out) == len(message) + 1
    assert hashlib.sha256(out).hexdigest() == hashlib.sha256(message + b"\n").hexdigest()
    rc, sender_out, err = finish(sender, BIG_TIMEOUT + EXIT_GRACE)
    assert rc == 0, err
    delivered = [e for e in json_events(sender_out) if e["event"] == "delivered"]
    assert len(delivered) == 1
    print(
        f"10 MiB through {LOSS_PERCENT} % loss each way: received after {received_after:.1f} s "
        f"(sender done after {time.monotonic() - started:.1f} s, both including process start)"
    )
