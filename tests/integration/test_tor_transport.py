"""The Tor transport against real tor: a private, offline Tor network on loopback.

The network (tests/netlab/tornet.py, the ``net`` fixture of conftest.py, shared by every
Tor test here) has its own directory authorities, so nothing here ever dials the real Tor
network.  Tests that need it skip without the tor binary, and fail instead when CI is set.
"""

from __future__ import annotations

import logging
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio

from p2pd.derive import params_from_master
from p2pd.errors import LocalError
from transports.framing import FrameDecoder, encode_frame
from transports.onion import RENDEZVOUS_TIMEOUT, OnionIdentity
from transports.socks5 import TorConnectError, socks5_connect, socks_connect_request
from transports.tor import (
    LOOPBACK,
    TOR_DIR,
    TorBootstrapTimeout,
    TorControlError,
    TorLauncher,
    TorMissingError,
)
from transports.tor_meet import TorStream, meet

#: Virtual port the tests publish on.
PORT = 4242
#: Control password of the password-auth test (a test value, not a secret).
PASSWORD = "p2pd-test-control-password"
#: Seconds the second peer starts after the first, beyond one SELF_WAIT round.
LATE_START = 30.0
#: Seconds any one network step may take in the private network (it takes about one).
STEP_TIMEOUT = 90.0


def _identity(tag: int) -> OnionIdentity:
    return OnionIdentity.from_seed(params_from_master(bytes([tag]) * 32).onion_seed)


def _attach(client: Any) -> TorLauncher:
    return TorLauncher(control=(LOOPBACK, client.control_port), cookie_path=client.cookie_path)


async def _exchange(left: trio.SocketStream, right: trio.SocketStream, size: int = 1000) -> None:
    """Framed datagrams both ways, checked byte for byte."""
    for sender, receiver, marker in ((left, right, b"L"), (right, left, b"R")):
        datagrams = [marker * n for n in (1, size, 65535)]
        await sender.send_all(b"".join(encode_frame(d) for d in datagrams))
        decoder, got = FrameDecoder(), list[bytes]()
        with trio.fail_after(STEP_TIMEOUT):
            while len(got) < len(datagrams):
                got += decoder.feed_untrusted(await receiver.receive_some(65536))
        assert got == datagrams


# --- without a Tor network ---------------------------------------------------------------


async def test_missing_tor_names_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(TorMissingError, match=r"apt install tor.*brew install tor"):
        async with TorLauncher(state_dir=tmp_path / "state"):
            pass  # pragma: no cover


async def test_a_tor_that_cannot_bootstrap_is_a_bootstrap_timeout(tmp_path: Path) -> None:
    """A real tor with ``DisableNetwork 1`` (it dials nothing, so it never bootstraps): the
    launcher gives up with TorBootstrapTimeout, the error a node may survive, and stops it."""
    launcher = TorLauncher(
        state_dir=tmp_path / "state", torrc={"DisableNetwork": "1"}, bootstrap_timeout=4.0
    )
    started = trio.current_time()
    with pytest.raises(TorBootstrapTimeout, match="did not bootstrap in 4 s"):
        async with launcher:
            pass  # pragma: no cover
    assert 4.0 <= trio.current_time() - started < 30.0
    assert launcher._process is None or launcher._process.poll() is not None


async def test_socks_refusal_reason_is_reported() -> None:
    """A SOCKS server on loopback that answers tor's "descriptor not found" (0xF0)."""
    listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
    port = listeners[0].socket.getsockname()[1]
    requests: list[bytes] = []

    async def fake_tor(stream: trio.SocketStream) -> None:
        requests.append(await stream.receive_some(3))
        await stream.send_all(b"\x05\x00")
        requests.append(await stream.receive_some(300))
        await stream.send_all(b"\x05\xf0\x00\x01" + bytes(6))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, fake_tor, listeners)
        with pytest.raises(TorConnectError) as caught:
            await socks5_connect((LOOPBACK, port), "example.onion", 80)
        nursery.cancel_scope.cancel()
    assert caught.value.reason == "onion_descriptor_not_found"
    assert requests == [b"\x05\x01\x00", socks_connect_request("example.onion", 80)]
    assert requests[1] == b"\x05\x01\x00\x03\x0dexample.onion\x00\x50"


async def test_meet_raises_the_local_error_itself(tmp_path: Path) -> None:
    """A failure inside meet's tasks reaches the caller as itself, not as a group."""
    not_entered = TorLauncher(state_dir=tmp_path)
    with pytest.raises(LocalError, match="async with"):
        await meet(not_entered, _identity(6))


# --- against the private Tor network -----------------------------------------------------


async def test_tor_accepts_the_derived_key_as_the_derived_address(net: Any) -> None:
    """tor's own ServiceID for our ADD_ONION key blob is the address we derived."""
    identity = _identity(1)
    async with _attach(net.clients["a"]) as tor:
        with trio.fail_after(STEP_TIMEOUT):
            service = await tor.publish(identity.key_blob, PORT, 9)
        assert service == identity.service_id
        await tor.remove(service)


async def test_publish_on_a_connect_from_b_framed_both_ways(
    net: Any, caplog: pytest.LogCaptureFixture
) -> None:
    identity = _identity(2)
    listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
    target = listeners[0].socket.getsockname()[1]
    # stem traces every control request only when a handler on its own logger wants TRACE.
    stem_logger = logging.getLogger("stem")
    caplog.set_level(1, logger="stem")
    stem_logger.addHandler(caplog.handler)
    async with _attach(net.clients["a"]) as tor_a, _attach(net.clients["b"]) as tor_b:
        with trio.fail_after(STEP_TIMEOUT):
            try:
                await tor_a.publish(identity.key_blob, PORT, target)
            finally:
                stem_logger.removeHandler(caplog.handler)
            outbound = await tor_b.connect(identity.address, PORT, STEP_TIMEOUT)
            inbound = await listeners[0].accept()
        await _exchange(outbound, inbound)
        await outbound.aclose()
        await inbound.aclose()
    await listeners[0].aclose()
    assert any("ADD_ONION" in record.getMessage() for record in caplog.records)
    assert identity.key_blob not in caplog.text


async def test_both_meet_at_the_same_instant_on_one_stream(net: Any) -> None:
    """Both peers publish and connect at once; both keep the same stream, not a self-loop."""
    identity = _identity(3)
    results: dict[str, TorStream] = {}
    counters: dict[str, Any] = {}

    async def peer(name: str, tor: TorLauncher) -> None:
        results[name], counters[name] = await meet(tor, identity)

    async with _attach(net.clients["a"]) as tor_a, _attach(net.clients["b"]) as tor_b:
        with trio.fail_after(4 * STEP_TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(peer, "a", tor_a)
                nursery.start_soon(peer, "b", tor_b)
        a, b = results["a"], results["b"]
        assert a.nonce == b.nonce, counters
        assert a.outbound != b.outbound
        assert a.stream.socket.getsockname() != b.stream.socket.getsockname()
        await _exchange(a.stream, b.stream)
        await a.stream.aclose()
        await b.stream.aclose()


async def test_a_late_peer_is_met_after_a_withdrawal(net: Any) -> None:
    """A alone reaches itself, waits, withdraws; B comes 30 s later; they still meet."""
    identity = _identity(7)
    results: dict[str, TorStream] = {}
    counters: dict[str, Any] = {}

    async def peer(name: str, tor: TorLauncher, delay: float) -> None:
        await trio.sleep(delay)
        results[name], counters[name] = await meet(tor, identity)

    async with _attach(net.clients["a"]) as tor_a, _attach(net.clients["b"]) as tor_b:
        with trio.fail_after(RENDEZVOUS_TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(peer, "a", tor_a, 0.0)
                nursery.start_soon(peer, "b", tor_b, LATE_START)
        a, b = results["a"], results["b"]
        assert a.nonce == b.nonce, counters
        assert counters["a"]["hello_self"] >= 1, counters
        await _exchange(a.stream, b.stream)
        await a.stream.aclose()
        await b.stream.aclose()


def _private_torrc(net: Any) -> dict[str, str | list[str]]:
    """The network's torrc lines (authorities and testing options) as a torrc mapping."""
    torrc: dict[str, str | list[str]] = {}
    for line in net.common_lines():
        key, _, value = line.partition(" ")
        existing = torrc.get(key)
        if existing is None:
            torrc[key] = value
        else:
            torrc[key] = [*([existing] if isinstance(existing, str) else existing), value]
    return torrc


async def test_attach_with_a_password(net: Any, tmp_path: Path) -> None:
    """A tor that takes a control password only: the right one attaches, a wrong one is a
    clear local error."""
    hashed = subprocess.run(
        ["tor", "--hash-password", PASSWORD], capture_output=True, text=True, check=True
    ).stdout.split()[-1]
    torrc = {**_private_torrc(net), "CookieAuthentication": "0", "HashedControlPassword": hashed}
    launcher = TorLauncher(state_dir=tmp_path / "state", torrc=torrc, password=PASSWORD)
    async with launcher as owner:
        assert owner.control is not None
        with pytest.raises(TorControlError, match="authentication"):
            async with TorLauncher(control=owner.control, password="wrong-" + PASSWORD):
                pass  # pragma: no cover
        async with TorLauncher(control=owner.control, password=PASSWORD) as attached:
            assert not attached.launched
            assert attached.socks == owner.socks


async def test_launched_tor_keeps_no_key_on_disk_and_stops(net: Any, tmp_path: Path) -> None:
    """Our own tor, in the private network: 0700 data dir, key never written, process gone."""
    torrc = _private_torrc(net)
    identity = _identity(4)
    state = tmp_path / "state"
    launcher = TorLauncher(state_dir=state, torrc=torrc)
    async with launcher as tor:
        assert tor.launched
        process = tor._process
        assert process is not None
        with trio.fail_after(STEP_TIMEOUT):
            await tor.publish(identity.key_blob, PORT, 9)
        data_dir = state / TOR_DIR
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        secrets_ = [identity.key_blob.encode(), identity.expanded_key]
        for path in data_dir.rglob("*"):
            if path.is_file():
                content = path.read_bytes()
                assert not any(secret in content for secret in secrets_), path
    assert process.poll() is not None
    assert repr(launcher).startswith("<TorLauncher")


def test_stem_trace_logging_is_redacted(caplog: pytest.LogCaptureFixture) -> None:
    """The filter on stem's logger blanks key material whatever logs it."""
    blob = _identity(5).key_blob
    caplog.set_level(1, logger="stem")
    logging.getLogger("stem").log(5, f"Sent to tor: ADD_ONION ED25519-V3:{blob} Port=1")
    assert blob not in caplog.text
    assert "ED25519-V3:<redacted>" in caplog.text
