"""WAN paths between real processes on loopback: an assist relay, offers, `p2pd relay`.

No LAN discovery at all (``--no-beacon``): the peers meet only through the assist or the
offer, so the path they report is the one these features made.
"""

from __future__ import annotations

import json
import signal
import subprocess

from tests.integration.conftest import LOOPBACK_ONLY, Procs, fresh_passphrase, read_line

WAN_ONLY = (*LOOPBACK_ONLY, "--no-beacon", "--json", "--timeout", "30")


def start_relay(procs: Procs) -> tuple[subprocess.Popen[str], str]:
    relay = procs.start("relay", "relay", "--bind", "127.0.0.1:0", "--json")
    event = json.loads(read_line(relay, timeout=30, stdout=True))
    assert event["event"] == "relay"
    return relay, str(event["addr"])


def events(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_two_senders_meet_through_an_assist(procs: Procs) -> None:
    relay, addr = start_relay(procs)
    phrase = fresh_passphrase()
    a = procs.start("a", "send", phrase, "from a", "--assist", addr, *WAN_ONLY)
    b = procs.start("b", "send", phrase, "from b", "--assist", addr, *WAN_ONLY)
    (rc_a, out_a, err_a), (rc_b, out_b, err_b) = procs.finish(a), procs.finish(b)
    assert (rc_a, rc_b) == (0, 0), err_a + err_b
    for out, other in ((out_a, "from b"), (out_b, "from a")):
        got = events(out)
        delivered = [e for e in got if e["event"] == "delivered"]
        assert [e["path"] for e in delivered] == ["lan"]  # loopback is one hop
        assert [e["text"] for e in got if e["event"] == "message"] == [other]
    relay.send_signal(signal.SIGTERM)
    rc, out, err = procs.finish(relay)
    assert rc == 143, err
    assert out, (
        err,
        relay.pid,
        list(__import__("tests.integration.conftest", fromlist=["x"])._READERS),
    )
    stopped = events(out)[-1]
    assert stopped["event"] == "stopped"
    assert stopped["counters"]["registered"] >= 2  # type: ignore[index]


def test_without_assist_or_lan_nobody_meets(procs: Procs) -> None:
    phrase = fresh_passphrase()
    a = procs.start("a", "send", phrase, "x", *LOOPBACK_ONLY, "--no-beacon", "--timeout", "3")
    rc, out, _err = procs.finish(a)
    assert rc == 3 and out == ""


def test_an_offer_alone_connects(procs: Procs) -> None:
    phrase = fresh_passphrase()
    offerer = procs.start(
        "o",
        "offer",
        phrase,
        "--count",
        "1",
        "--ttl",
        "120",
        *LOOPBACK_ONLY,
        "--no-beacon",
        "--json",
    )
    offer = json.loads(read_line(offerer, timeout=30, stdout=True))
    assert offer["event"] == "offer" and str(offer["offer"]).startswith("P2PD1")
    assert phrase not in str(offer)
    sender = procs.start(
        "s", "send", phrase, "via offer", "--offer", str(offer["offer"]), *WAN_ONLY
    )
    rc, out, err = procs.finish(sender)
    assert rc == 0, err
    assert [e["path"] for e in events(out) if e["event"] == "delivered"] == ["lan"]
    rc, out, err = procs.finish(offerer)
    assert rc == 0, err
    assert any(e.get("text") == "via offer" for e in events(out)), (out, err)


def test_an_offer_for_another_passphrase_is_one_clear_error(procs: Procs) -> None:
    offerer = procs.start(
        "o", "offer", fresh_passphrase(), "--no-listen", *LOOPBACK_ONLY, "--no-beacon", "--json"
    )
    rc, out, _err = procs.finish(offerer)
    assert rc == 0
    offer = json.loads(out.splitlines()[0])["offer"]
    sender = procs.start("s", "send", fresh_passphrase(), "x", "--offer", offer, *WAN_ONLY)
    rc, out, err = procs.finish(sender)
    assert rc == 2 and out == ""
    assert "offer" in err.strip().splitlines()[-1]
