"""Peer exchange: two devices that only know a third one end up connected directly."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import cbor2
import pytest

from p2pd.errors import BadFrame
from p2pd.space.px import PX_MAX, px_untrusted
from tests.integration.conftest import fresh_passphrase
from tests.integration.test_space_loopback import Space, is_event, wait_for


@pytest.fixture
def space(tmp_path: Path) -> Iterator[Space]:
    s = Space(tmp_path)
    try:
        yield s
    finally:
        s.close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_peers_of_a_peer_are_connected_through_px(space: Space) -> None:
    phrase = fresh_passphrase()
    pa, pb, pc = free_port(), free_port(), free_port()
    b = space.spawn("b", phrase, "join", "--port", str(pb), "--no-beacon")
    hub = wait_for(b, is_event("listening"))["fingerprint"]
    target = ("--target", f"127.0.0.1:{pb}", "--no-beacon")
    a = space.spawn("a", phrase, "join", "--port", str(pa), *target)
    c = space.spawn("c", phrase, "join", "--port", str(pc), *target)
    fp_c = wait_for(c, is_event("listening"))["fingerprint"]
    fp_a = wait_for(a, is_event("listening"))["fingerprint"]
    assert len({hub, fp_a, fp_c}) == 3
    # a learns of c only from b's px frame (no beacon, no mDNS, no target of c).
    event = wait_for(a, lambda e: e.get("event") == "connected" and e["peer"] == fp_c)
    assert event["addr"] == f"127.0.0.1:{pc}"
    wait_for(c, lambda e: e.get("event") == "connected" and e["peer"] == fp_a)


@pytest.mark.parametrize(
    "addrs",
    [
        "x",
        [["127.0.0.1"]],
        [["127.0.0.1", 0]],
        [["127.0.0.1", 65536]],
        [["127.0.0.1", True]],
        [["not-an-ip", 4000]],
        [["224.0.0.1", 4000]],
        [["0.0.0.0", 4000]],
        [["127.0.0.1", 4000]] * (PX_MAX + 1),
    ],
)
def test_px_frames_are_validated(addrs: object) -> None:
    with pytest.raises(BadFrame):
        px_untrusted(cbor2.dumps({"t": "px", "a": addrs}))


def test_px_frame_round_trip() -> None:
    frame = cbor2.dumps({"t": "px", "a": [["127.0.0.1", 4000], ["::1", 65535]]})
    assert px_untrusted(frame) == [("127.0.0.1", 4000), ("::1", 65535)]
