"""`p2pd send` / `listen` between real processes on loopback (two and three of them)."""

from __future__ import annotations

import json
import signal
import subprocess
import time

from tests.integration.conftest import LOOPBACK_ONLY, Procs, fresh_passphrase, read_line


def wait_listening(proc: subprocess.Popen[str]) -> None:
    """Block until ``proc`` says it is bound (so it owns the derived port)."""
    for _ in range(5):
        if "listening on UDP port" in read_line(proc, timeout=30):
            return
    raise AssertionError("the listener never said it was listening")


def test_two_senders_each_print_the_others_message(procs: Procs) -> None:
    phrase = fresh_passphrase()
    a = procs.start("a", "send", phrase, "hello from a", *LOOPBACK_ONLY, "--timeout", "30")
    b = procs.start("b", "send", phrase, "hello from b", *LOOPBACK_ONLY, "--timeout", "30")
    rc_a, out_a, err_a = procs.finish(a)
    rc_b, out_b, err_b = procs.finish(b)
    assert (rc_a, rc_b) == (0, 0), err_a + err_b
    assert out_a.splitlines() == ["hello from b"]
    assert out_b.splitlines() == ["hello from a"]
    assert "delivered" in err_a and "delivered" in err_b


def test_three_processes_listener_gets_both(procs: Procs) -> None:
    phrase = fresh_passphrase()
    listener = procs.start(
        "l",
        "listen",
        "--count",
        "2",
        "--timeout",
        "40",
        *LOOPBACK_ONLY,
        env={"P2PD_PASSPHRASE": phrase},
    )
    wait_listening(listener)
    s1 = procs.start(
        "s1", "send", "one", *LOOPBACK_ONLY, "--timeout", "30", env={"P2PD_PASSPHRASE": phrase}
    )
    s2 = procs.start(
        "s2", "send", "-", "two", *LOOPBACK_ONLY, "--timeout", "30", stdin=phrase + "\n"
    )
    assert procs.finish(s1)[0] == 0
    assert procs.finish(s2)[0] == 0
    rc, out, err = procs.finish(listener)
    assert rc == 0, err
    assert sorted(out.splitlines()) == ["one", "two"]


def test_json_delivered_event_names_path_rtt_and_peer(procs: Procs) -> None:
    phrase = fresh_passphrase()
    ident = procs.start("l", "identity", "--json")
    listener_fp = json.loads(procs.finish(ident)[1])["fingerprint"]
    listener = procs.start("l", "listen", phrase, "--count", "1", "--timeout", "40", *LOOPBACK_ONLY)
    wait_listening(listener)
    sender = procs.start("s", "send", phrase, "json please", "--json", *LOOPBACK_ONLY)
    rc, out, _ = procs.finish(sender)
    assert rc == 0
    events = [json.loads(line) for line in out.splitlines()]
    delivered = [e for e in events if e["event"] == "delivered"]
    assert len(delivered) == 1
    assert delivered[0]["peer"] == listener_fp
    assert delivered[0]["path"] == "lan"
    assert delivered[0]["rtt_ms"] >= 0
    assert procs.finish(listener)[1].splitlines() == ["json please"]


def test_wrong_passphrase_learns_and_receives_nothing(procs: Procs) -> None:
    phrase = fresh_passphrase()
    listener = procs.start("l", "listen", phrase, "--count", "1", "--timeout", "40", *LOOPBACK_ONLY)
    wait_listening(listener)
    # The intruder shares the port (same derived port is forced) but not the passphrase.
    port = json.loads(procs.finish(procs.start("d", "derive", phrase, "--json"))[1])["port"]
    intruder = procs.start(
        "x",
        "send",
        fresh_passphrase(),
        "intrusion",
        *LOOPBACK_ONLY,
        "--target",
        f"127.0.0.1:{port}",
        "--timeout",
        "5",
    )
    rc_x, out_x, _err_x = procs.finish(intruder)
    assert rc_x == 3
    assert out_x == ""
    honest = procs.start("s", "send", phrase, "legit", *LOOPBACK_ONLY, "--timeout", "30")
    assert procs.finish(honest)[0] == 0
    rc, out, err = procs.finish(listener)
    assert rc == 0
    assert out.splitlines() == ["legit"]
    assert "intrusion" not in out + err


def test_no_peer_exits_3_with_one_clear_line(procs: Procs) -> None:
    started = time.monotonic()
    rc, out, err = procs.finish(
        procs.start("a", "send", fresh_passphrase(), "anyone?", *LOOPBACK_ONLY, "--timeout", "2")
    )
    assert rc == 3
    assert out == ""
    errors = [line for line in err.splitlines() if line.startswith("p2pd: error")]
    assert len(errors) == 1 and "no peer answered" in errors[0]
    assert time.monotonic() - started < 15


def test_sigterm_ends_within_a_second(procs: Procs) -> None:
    proc = procs.start("a", "listen", *LOOPBACK_ONLY, env={"P2PD_PASSPHRASE": fresh_passphrase()})
    assert "listening on UDP port" in read_line(proc, timeout=20)
    proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    proc.communicate(timeout=10)
    assert time.monotonic() - started < 1.0


def test_chat_is_interactive_both_ways_and_ends_at_end_of_input(procs: Procs) -> None:
    env = {"P2PD_PASSPHRASE": fresh_passphrase()}
    a = procs.start("a", "chat", *LOOPBACK_ONLY, env=env, interactive=True)
    b = procs.start("b", "chat", *LOOPBACK_ONLY, env=env, interactive=True)
    assert a.stdin is not None and b.stdin is not None
    a.stdin.write("from a 1\nfrom a 2\n")
    a.stdin.flush()
    assert read_line(b, 30, stdout=True) == "from a 1\n"
    assert read_line(b, 30, stdout=True) == "from a 2\n"
    b.stdin.write("from b\n")
    b.stdin.flush()
    assert read_line(a, 30, stdout=True) == "from b\n"
    a.stdin.close()
    b.stdin.close()
    a.stdin = b.stdin = None
    assert procs.finish(a, timeout=30)[0] == 0
    assert procs.finish(b, timeout=30)[0] == 0
