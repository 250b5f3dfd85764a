"""``p2pd daemon`` and its HTTP API, against real daemon processes over loopback.

What is checked: the security edge (token, Host header, no CORS, private files), the
contract's endpoints and error shapes, two daemons exchanging messages with the events
streamed in order and resumable with ``Last-Event-ID``, the lifecycle (flock, SIGTERM,
``/v1/shutdown``), and a fuzz run of malformed and oversized bodies at every endpoint
that must neither crash the daemon nor grow its memory.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pd.derive import derive
from p2pd.offer import parse_offer_untrusted
from tests.integration.conftest import fresh_passphrase
from tests.integration.daemon_fixture import (
    Daemon,
    Daemons,
    daemon_command,
    daemon_fixture,  # noqa: F401  (the "daemon" fixture)
    daemons_fixture,  # noqa: F401  (the "daemons" fixture)
)

pytestmark = pytest.mark.slow

#: Upper bound on the daemon's memory growth over the fuzz run.
RSS_GROWTH_LIMIT_KIB = 100 * 1024
#: A body over every limit (the largest is 17 MiB, for send).
HUGE_BODY = b"x" * (20 * 1024 * 1024)
#: The whole shutdown must fit in this (the contract says about 2 s).
SHUTDOWN_LIMIT = 2.5


def is_error_json(response: httpx.Response) -> bool:
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(error.get("code"), str) and isinstance(error.get("message"), str)


def sse_events(lines: Iterator[str], until: Any) -> list[dict[str, Any]]:
    """Parse Server-Sent Events from ``lines`` until ``until(events)`` is true."""
    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    for line in lines:
        if line.startswith(":"):
            continue
        if not line:
            if current:
                events.append(current)
                current = {}
                if until(events):
                    return events
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            current["id"] = int(value)
        elif name == "event":
            current["event"] = value
        elif name == "data":
            current["data"] = json.loads(value)
    raise AssertionError(f"the stream ended after {events}")


def texts_seen(wanted: list[str]) -> Any:
    def done(events: list[dict[str, Any]]) -> bool:
        seen = [e["data"].get("text") for e in events if e.get("event") == "message"]
        return all(text in seen for text in wanted)

    return done


def send(sender: Daemon, session: str, text: str, **extra: Any) -> httpx.Response:
    return sender.post(f"/v1/sessions/{session}/send", {"text": text, "wait_peer": 20, **extra})


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, Daemon, str, str]]:
    """Two daemons in one session: (a, b, session id, passphrase)."""
    factory = Daemons(tmp_path_factory.mktemp("pair"))
    try:
        a, b = factory.start("a"), factory.start("b")
        phrase = fresh_passphrase()
        session = a.join(phrase)
        assert b.join(phrase) == session
        yield a, b, session, phrase
    finally:
        factory.close()


# -- the security edge ----------------------------------------------------------------


def test_request_without_token_is_401_json(daemon: Daemon) -> None:
    with daemon.client(token="") as client:
        response = client.get("/v1/status")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


def test_request_with_wrong_token_is_401(daemon: Daemon) -> None:
    with daemon.client(token="0" * 64) as client:
        response = client.get("/v1/status")
    assert response.status_code == 401
    assert is_error_json(response)


def test_foreign_host_header_is_403_even_with_the_token(daemon: Daemon) -> None:
    response = daemon.get("/v1/status", headers={"Host": "evil.example"})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden_host"


def test_foreign_host_is_checked_before_the_token(daemon: Daemon) -> None:
    with daemon.client(token="") as client:
        response = client.get("/v1/status", headers={"Host": "evil.example:3000"})
    assert response.status_code == 403


def test_preflight_gets_no_cors_headers(daemon: Daemon) -> None:
    preflight = {
        "Origin": "http://evil.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }
    with daemon.client(token="") as anonymous, daemon.client() as authed:
        for client in (anonymous, authed):
            response = client.options("/v1/sessions", headers=preflight)
            assert response.status_code in (401, 405)
            assert is_error_json(response)
            assert not [h for h in response.headers if h.lower().startswith("access-control-")]
    response = daemon.get("/v1/status", headers={"Origin": "http://evil.example"})
    assert not [h for h in response.headers if h.lower().startswith("access-control-")]


def test_options_with_token_is_405_json(daemon: Daemon) -> None:
    with daemon.client() as client:
        response = client.options("/v1/status")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_token_and_daemon_json_are_0600(daemon: Daemon) -> None:
    for name in ("api-token", "daemon.json"):
        mode = stat.S_IMODE((daemon.state_dir / name).stat().st_mode)
        assert mode == 0o600, (name, oct(mode))
    info = json.loads((daemon.state_dir / "daemon.json").read_text())
    assert info["pid"] == daemon.pid
    assert info["api"] == daemon.base_url
    assert isinstance(info["version"], str)


def test_token_is_new_at_every_start(daemons: Daemons) -> None:
    first = daemons.start("d")
    old = first.token
    assert first.stop() == 0
    second = daemons.start("d")
    assert second.token != old
    with second.client(token=old) as client:
        assert client.get("/v1/status").status_code == 401


def test_non_loopback_api_is_refused_without_allow_remote(tmp_path: Path) -> None:
    command = daemon_command(tmp_path / "d")
    command[command.index("127.0.0.1:0")] = "0.0.0.0:0"
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert "--api-allow-remote" in result.stderr
    assert not (tmp_path / "d" / "daemon.json").exists()


def test_api_on_a_unix_socket(daemons: Daemons, tmp_path: Path) -> None:
    socket_path = tmp_path / "api.sock"
    handle = daemons.start("d", "--api", f"unix:{socket_path}")
    assert handle.base_url == f"unix:{socket_path}"
    assert stat.S_IMODE(socket_path.stat().st_mode) == 0o600
    assert handle.get("/v1/status").json()["daemon"]["api"] == f"unix:{socket_path}"
    assert handle.stop() == 0
    assert not socket_path.exists()


# -- the config file --------------------------------------------------------------------


def test_config_file_joins_sessions_from_passphrase_files(daemons: Daemons, tmp_path: Path) -> None:
    phrase = fresh_passphrase()
    phrase_file = tmp_path / "team.phrase"
    phrase_file.write_text(phrase + "\n")
    phrase_file.chmod(0o600)
    config = tmp_path / "p2pd.toml"
    config.write_text(f'log_level = "debug"\n\n[[sessions]]\npassphrase_file = "{phrase_file}"\n')
    handle = daemons.start("d", "--config", str(config))
    sessions = handle.get("/v1/sessions").json()["sessions"]
    assert [s["id"] for s in sessions] == [derive(phrase).rendezvous_id.hex()]
    assert phrase not in handle.log()


def test_config_file_with_an_inline_passphrase_is_refused(tmp_path: Path) -> None:
    phrase = fresh_passphrase()
    config = tmp_path / "p2pd.toml"
    config.write_text(f'[[sessions]]\npassphrase = "{phrase}"\n')
    command = [*daemon_command(tmp_path / "d"), "--config", str(config)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert "passphrase_file" in result.stderr
    assert phrase not in result.stderr


# -- the endpoints ----------------------------------------------------------------------


def test_openapi_document_describes_every_endpoint(daemon: Daemon) -> None:
    response = daemon.get("/v1/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    assert doc["openapi"].startswith("3.1")
    paths = doc["paths"]
    for path, method in [
        ("/v1/identity", "get"),
        ("/v1/status", "get"),
        ("/v1/metrics", "get"),
        ("/v1/shutdown", "post"),
        ("/v1/sessions", "get"),
        ("/v1/sessions", "post"),
        ("/v1/sessions/{id}", "get"),
        ("/v1/sessions/{id}", "delete"),
        ("/v1/sessions/{id}/send", "post"),
        ("/v1/sessions/{id}/events", "get"),
        ("/v1/sessions/{id}/offer", "post"),
    ]:
        assert method in paths[path], (path, method)
    for path, method in [("/v1/sessions", "post"), ("/v1/sessions/{id}/send", "post")]:
        schema = paths[path][method]["requestBody"]["content"]["application/json"]["schema"]
        name = schema["$ref"].rsplit("/", 1)[1]
        assert doc["components"]["schemas"][name]["required"]


def test_openapi_needs_the_token(daemon: Daemon) -> None:
    with daemon.client(token="") as client:
        assert client.get("/v1/openapi.json").status_code == 401


def test_identity_is_the_state_dirs_identity(daemon: Daemon) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "p2pd", "identity", "--json", "--state-dir", str(daemon.state_dir)],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert daemon.get("/v1/identity").json() == json.loads(result.stdout)


def test_join_is_idempotent_and_listed(daemon: Daemon) -> None:
    phrase = fresh_passphrase()
    first = daemon.post("/v1/sessions", {"passphrase": phrase})
    again = daemon.post("/v1/sessions", {"passphrase": f"  {phrase}  "})  # normalised alike
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    listed = daemon.get("/v1/sessions").json()["sessions"]
    assert [s["id"] for s in listed] == [first.json()["id"]]
    assert daemon.get("/v1/status").json()["sessions"][0]["port"] == first.json()["port"]


def test_weak_passphrase_is_refused(daemon: Daemon) -> None:
    response = daemon.post("/v1/sessions", {"passphrase": "password1"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "weak_passphrase"
    assert "password1" not in response.text


def test_left_session_is_gone(daemon: Daemon) -> None:
    session = daemon.join(fresh_passphrase())
    with daemon.client() as client:
        assert client.delete(f"/v1/sessions/{session}").status_code == 204
        response = client.get(f"/v1/sessions/{session}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "no_session"


def test_send_without_peer_and_no_wait_is_409(daemon: Daemon) -> None:
    session = daemon.join(fresh_passphrase())
    response = send(daemon, session, "anyone?", wait_peer=0)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "no_peer"


def test_offer_names_the_session_node_and_expires(daemon: Daemon) -> None:
    phrase = fresh_passphrase()
    session = daemon.join(phrase)
    response = daemon.post(f"/v1/sessions/{session}/offer", {"ttl": 120})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["offer"].startswith("P2PD1") and phrase not in response.text
    assert body["candidates"] and abs(body["expires_at"] - time.time() - 120) < 5
    offer = parse_offer_untrusted(body["offer"], derive(phrase).tag_key, now_wall=time.time())
    assert offer.resume == bytes.fromhex(daemon.get("/v1/identity").json()["public_key"])
    assert daemon.post(f"/v1/sessions/{session}/offer", {"ttl": -1}).status_code == 400


def test_events_of_unknown_session_is_404_json(daemon: Daemon) -> None:
    response = daemon.get(f"/v1/sessions/{'0' * 32}/events")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "no_session"


# -- two daemons ------------------------------------------------------------------------


def test_peers_see_each_other(pair: tuple[Daemon, Daemon, str, str]) -> None:
    a, b, session, _ = pair
    send(a, session, "warm-up")  # waits for the peer
    b_fingerprint = b.get("/v1/identity").json()["fingerprint"]
    peers = a.get(f"/v1/sessions/{session}").json()["peers"]
    assert [p["fingerprint"] for p in peers] == [b_fingerprint]
    assert peers[0]["path"] == "lan"


def test_sent_messages_are_delivered_and_streamed_in_order(
    pair: tuple[Daemon, Daemon, str, str],
) -> None:
    a, b, session, _ = pair
    a_fingerprint = a.get("/v1/identity").json()["fingerprint"]
    texts = [f"in order {i}" for i in range(5)]
    with b.client() as client, client.stream("GET", f"/v1/sessions/{session}/events") as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        assert next(lines) == ": stream open"
        for text in texts:
            response = send(a, session, text)
            assert response.status_code == 200, response.text
            assert response.json()["delivered"] is True
            assert response.json()["rtt_ms"] >= 0
        events = sse_events(lines, texts_seen(texts))
    messages = [e for e in events if e["event"] == "message"]
    assert [e["data"]["text"] for e in messages] == texts
    assert {e["data"]["peer"] for e in messages} == {a_fingerprint}
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_sender_stream_shows_delivered_events(pair: tuple[Daemon, Daemon, str, str]) -> None:
    a, _, session, _ = pair
    result = send(a, session, "acknowledge me").json()
    with (
        a.client() as client,
        client.stream("GET", f"/v1/sessions/{session}/events", params={"since": 0}) as stream,
    ):
        events = sse_events(
            stream.iter_lines(),
            lambda evs: any(e["data"].get("message_id") == result["message_id"] for e in evs),
        )
    delivered = events[-1]
    assert delivered["event"] == "delivered"
    assert delivered["data"]["peer"] == result["peer"]
    assert delivered["data"]["rtt_ms"] >= 0


def test_reconnect_with_last_event_id_resumes_without_gaps_or_duplicates(
    pair: tuple[Daemon, Daemon, str, str],
) -> None:
    a, b, session, _ = pair
    texts = [f"resume {i}" for i in range(6)]
    for text in texts:
        assert send(a, session, text).status_code == 200
    path = f"/v1/sessions/{session}/events"
    with b.client() as client:
        with client.stream("GET", path, params={"since": 0}) as stream:
            everything = sse_events(stream.iter_lines(), texts_seen(texts))
        ids = [e["id"] for e in everything]
        assert ids == list(range(ids[0], ids[0] + len(ids)))  # consecutive
        resume_after = next(e["id"] for e in everything if e["data"].get("text") == texts[2])
        expected = [e for e in everything if e["id"] > resume_after]
        for how in ({"headers": {"Last-Event-ID": str(resume_after)}},
                    {"params": {"since": resume_after}}):  # fmt: skip
            with client.stream("GET", path, **how) as stream:  # type: ignore[arg-type]
                resumed = sse_events(stream.iter_lines(), lambda evs: len(evs) == len(expected))
            assert resumed == expected


def test_logs_are_json_and_hold_no_secret(pair: tuple[Daemon, Daemon, str, str]) -> None:
    a, b, session, phrase = pair
    secret_text = "the text is private " + os.urandom(4).hex()
    assert send(a, session, secret_text).status_code == 200
    for handle in (a, b):
        log = handle.log()
        lines = [json.loads(line) for line in log.splitlines() if line.strip()]
        assert {"time", "level", "event"} <= set(lines[0])
        for forbidden in (phrase, handle.token, secret_text):
            assert forbidden not in log
    assert any(
        line.get("event") == "message_received" and line.get("length") == len(secret_text)
        for line in map(json.loads, b.log().splitlines())
    )


# -- the lifecycle ----------------------------------------------------------------------


def test_second_daemon_on_same_state_dir_exits_2(daemon: Daemon) -> None:
    command = daemon_command(daemon.state_dir)
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    expected = f"p2pd: error: a daemon is already running on {daemon.state_dir} (pid {daemon.pid})"
    assert result.stderr.strip().splitlines()[-1] == expected
    assert daemon.get("/v1/status").status_code == 200  # the first one is untouched


def test_sigterm_stops_cleanly_and_quickly(daemon: Daemon) -> None:
    session = daemon.join(fresh_passphrase())
    with daemon.client() as client, client.stream("GET", f"/v1/sessions/{session}/events") as s:
        lines = s.iter_lines()
        assert next(lines) == ": stream open"
        start = time.monotonic()
        assert daemon.stop(signal.SIGTERM) == 0
        elapsed = time.monotonic() - start
        assert [line for line in lines if line] == []  # the stream ended with the daemon
    assert elapsed < SHUTDOWN_LIMIT
    assert not (daemon.state_dir / "daemon.json").exists()
    with (daemon.state_dir / "daemon.lock").open("rb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released


def test_shutdown_endpoint_stops_the_daemon(daemon: Daemon) -> None:
    daemon.join(fresh_passphrase())
    response = daemon.post("/v1/shutdown")
    assert response.status_code == 202
    assert daemon.proc.wait(timeout=SHUTDOWN_LIMIT) == 0
    assert not (daemon.state_dir / "daemon.json").exists()


# -- fuzzing ----------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
wrong_or_right = st.one_of(
    json_values,
    st.text(max_size=80),
    st.floats(min_value=0, max_value=0.1),
    st.just("x" * 70_000),
)
structured = st.fixed_dictionaries(
    {},
    optional={
        "passphrase": wrong_or_right,
        "text": wrong_or_right,
        "peer": wrong_or_right,
        "wait_peer": st.one_of(
            st.floats(min_value=0, max_value=0.1), st.floats(min_value=3601), json_values
        ),
        "wait_delivery": json_values,
        "extra": json_values,
    },
)
bodies = st.one_of(
    st.binary(max_size=2048),
    json_values.map(lambda v: json.dumps(v).encode()),
    structured.map(lambda v: json.dumps(v).encode()),
    st.just(b"[" * 100_000),
    st.just(json.dumps({"text": "y" * (17 * 1024 * 1024)}).encode()),
    st.just(HUGE_BODY),
)
#: Every endpoint but /v1/shutdown (tested on its own above), with a real session id.
ENDPOINTS = [
    "/v1/openapi.json", "/v1/identity", "/v1/status", "/v1/metrics", "/v1/sessions",
    "/v1/sessions/{id}", "/v1/sessions/{id}/send", "/v1/sessions/{id}/events",
    "/v1/sessions/{id}/offer", "/v1/sessions/{other}/send", "/v1/nowhere",
]  # fmt: skip


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
)  # fmt: skip
@given(
    method=st.sampled_from(["POST", "PUT", "PATCH", "GET", "DELETE"]),
    endpoint=st.sampled_from(ENDPOINTS),
    other=st.text(min_size=1, max_size=40).filter(lambda s: "/" not in s and "?" not in s),
    body=bodies,
    content_type=st.sampled_from(["application/json", "text/plain", "application/octet-stream"]),
)
def test_fuzzed_bodies_never_crash_or_grow_the_daemon(
    fuzz_target: tuple[Daemon, str, httpx.Client, int],
    method: str,
    endpoint: str,
    other: str,
    body: bytes,
    content_type: str,
) -> None:
    target, session, client, rss_before = fuzz_target
    path = endpoint.format(id=session, other=quote(other, safe=""))
    if method == "DELETE" and endpoint == "/v1/sessions/{id}":
        method = "POST"  # keep the session the other examples aim at
    headers = {"Content-Type": content_type}
    with client.stream(method, path, content=body, headers=headers) as response:
        if response.status_code == 200 and endpoint.endswith("/events"):
            assert response.headers["content-type"].startswith("text/event-stream")
        else:
            response.read()
            if not response.is_success:
                assert is_error_json(response), (response.status_code, response.text[:200])
    assert target.proc.poll() is None
    assert client.get("/v1/status").status_code == 200
    assert target.rss_kib() - rss_before < RSS_GROWTH_LIMIT_KIB


@pytest.fixture
def fuzz_target(daemon: Daemon) -> Iterator[tuple[Daemon, str, httpx.Client, int]]:
    session = daemon.join(fresh_passphrase())
    with daemon.client(timeout=30) as client:
        yield daemon, session, client, daemon.rss_kib()
