"""EtherSync spaces between real ``p2pd space`` processes on two lab segments joined by a router.

Five peers (tests/netlab/space_procs.py): peer1..peer3 on 10.7.0.0/24, peer4 and peer5 on
10.8.0.0/24, a plain router (no NAT) between them.  LAN beacons find the peers of one
segment; the other segment is reached only through bootstrap addresses saved with
``space peers add HOST:PORT`` (the passphrase's derived port).  Every process has its own
state, data and download directories.  What a peer holds is read from its SQLite store
and its download directory; how many bytes crossed a link, from nftables counters in the
receiving host's input hook.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ethersync.chunks import CHUNK_OVERHEAD, CHUNK_SIZE
from p2pd.commands import EXIT_TERMINATED
from tests.integration.conftest import fresh_passphrase
from tests.netlab.fixtures import lab  # noqa: F401
from tests.netlab.lab import Lab
from tests.netlab.p2pd_procs import P2pd
from tests.netlab.space_procs import (
    Events,
    SpacePeer,
    bytes_from,
    corrupt_chunk,
    count_bytes,
    kill,
    random_file,
    sha256_file,
    space_peers,
    stop,
    store_counts,
    two_segments,
    udp_from,
    wait_for,
)

pytestmark = pytest.mark.netlab

MIB = 1024 * 1024
# The big file of the fan-out test (the 200 MiB: 800 chunks).
BIG_FILE = 200 * MIB
# Seconds the big file may take to reach all four peers on this 2-core machine.
BIG_TIMEOUT = 150.0
# The file of the other tests: enough chunks to kill a fetch midway (256 of 256 KiB).
MID_FILE = 64 * MIB
# The tamper test's file: four chunks, so the fetcher's bytes from the tamperer tell
# whether the bad chunk crossed (3 chunks with framing stay well under 4 chunk sizes).
SMALL_CHUNKS = 4
# Seconds for a peer to connect, sync envelopes and fetch a mid-size file.
STEP_TIMEOUT = 60.0
# Kill the fetcher once this share of the chunks is verified, and not above the second
# share (then it was too late to show a resume).
KILL_AT, KILL_BEFORE = 0.3, 0.8
# Bytes of framing and retransmission allowed per byte of chunk when a resumed fetch
# is compared with what was left (measured on the lab: ~1.06 framing).
FRAMING_ALLOWANCE = 1.25
# Seconds the wrong-passphrase peer keeps trying while the honest peers finish.
INTRUDER_TIMEOUT = 60.0


def saved(events: Events, file_id: str, timeout: float) -> Path:
    """Wait for ``saved`` of ``file_id``; the path it was written to."""
    event = events.wait(
        f"saved {file_id[:16]}",
        lambda e: e.get("event") == "saved" and e.get("id") == file_id,
        timeout,
    )
    assert "error" not in event, event
    return Path(event["path"])


def published(events: Events) -> str:
    """Wait for the publisher's ``published`` line; the file id."""
    return str(
        events.wait("published", lambda e: e.get("event") == "published", STEP_TIMEOUT)["id"]
    )


def listening(events: Events) -> dict[str, object]:
    return events.wait("listening", lambda e: e.get("event") == "listening", STEP_TIMEOUT)


def setup(lab: Lab, tmp: Path) -> tuple[list[SpacePeer], str, int]:  # noqa: F811
    """The five peers, a fresh passphrase and its derived port."""
    hosts = two_segments(lab)
    peers = space_peers(lab, hosts, tmp)
    phrase = fresh_passphrase()
    port = P2pd(lab, tmp).derived_port(hosts[0], phrase)
    return peers, phrase, port


def address(peer: SpacePeer, port: int) -> str:
    return f"{peer.host.ip}:{port}"


def test_two_hundred_mib_reach_four_peers_across_two_segments(
    lab: Lab,  # noqa: F811
    tmp_path: Path,
) -> None:
    peers, phrase, port = setup(lab, tmp_path)
    publisher, *others = peers
    # Every peer knows the other segment's peers: the publisher leaves once one peer holds
    # the file, and nothing else would tell peer2 and peer3 about segment B (no peer exchange).
    segment_a, segment_b = peers[:3], peers[3:]
    for near, far in ((segment_a, segment_b), (segment_b, segment_a)):
        for peer in near:
            peer.add_bootstrap(*(address(other, port) for other in far))
    source = tmp_path / "big.bin"
    digest = random_file(source, BIG_FILE)
    joined = [peer.join(phrase) for peer in others]
    for events in joined:
        listening(events)
    started = time.monotonic()
    publishing = publisher.publish(phrase, source)
    file_id = published(publishing)
    paths = [saved(events, file_id, BIG_TIMEOUT) for events in joined]
    elapsed = time.monotonic() - started
    for path in paths:
        assert path.name == source.name
        assert sha256_file(path) == digest
    # The publisher stays until one peer holds every chunk, then leaves: exit 0.
    assert publishing.proc.wait(STEP_TIMEOUT) == 0, publishing.tail()
    for events in joined:
        assert stop(events) == EXIT_TERMINATED, events.tail()
    slowest = max(e.of("saved")[0]["_t"] for e in joined) - started
    print(
        f"{BIG_FILE // MIB} MiB to 4 peers on two segments: {elapsed:.1f} s from publish "
        f"start (chunking included) to the last peer's file written ({slowest:.1f} s)"
    )


def test_a_peer_down_while_publishing_gets_the_file_when_it_returns(
    lab: Lab,  # noqa: F811
    tmp_path: Path,
) -> None:
    peers, phrase, port = setup(lab, tmp_path)
    publisher, peer2, peer5 = peers[0], peers[1], peers[4]
    peer5.add_bootstrap(address(peer2, port))
    source = tmp_path / "mid.bin"
    digest = random_file(source, MID_FILE)
    holder = peer2.join(phrase)
    listening(holder)
    publishing = publisher.publish(phrase, source)
    file_id = published(publishing)
    assert sha256_file(saved(holder, file_id, STEP_TIMEOUT)) == digest
    assert publishing.proc.wait(STEP_TIMEOUT) == 0, publishing.tail()
    assert store_counts(peer5.data_dir).envelopes == 0
    # peer5 was never up: it learns of the file from peer2 alone, the publisher is gone.
    returning = peer5.join(phrase)
    assert sha256_file(saved(returning, file_id, STEP_TIMEOUT)) == digest
    for events in (holder, returning):
        assert stop(events) == EXIT_TERMINATED, events.tail()


def test_a_fetcher_killed_midway_resumes_without_refetching_verified_chunks(
    lab: Lab,  # noqa: F811
    tmp_path: Path,
) -> None:
    """SIGKILL mid-fetch; the restarted fetcher asks only for the chunks it had not verified.

    The publisher's process goes away too before the fetcher returns, and comes back as a
    seeding ``space join``: a node that stays up keeps its open channel of the killed peer
    and takes the restarted peer's handshake for a rekey of it, so the two talk again only
    after that channel idles out and the next handshake comes (measured: 122 s; see
    docs/ethersync.md, "Proof and benchmark").
    """
    peers, phrase, port = setup(lab, tmp_path)
    publisher, fetcher = peers[0], peers[3]
    fetcher.add_bootstrap(address(publisher, port))
    publisher.add_bootstrap(address(fetcher, port))
    count_bytes(lab, fetcher.host, {"publisher": udp_from(publisher.host.ip)})
    source = tmp_path / "mid.bin"
    digest = random_file(source, MID_FILE)
    chunks = MID_FILE // CHUNK_SIZE
    publishing = publisher.publish(phrase, source)
    file_id = published(publishing)
    first = fetcher.join(phrase)
    wait_for(
        "a third of the chunks verified",
        lambda: store_counts(fetcher.data_dir).verified >= KILL_AT * chunks,
        STEP_TIMEOUT,
    )
    kill(first)
    before = store_counts(fetcher.data_dir).verified
    assert KILL_AT * chunks <= before < KILL_BEFORE * chunks, before
    assert first.of("saved") == []
    assert stop(publishing) == EXIT_TERMINATED, publishing.tail()
    received_before = bytes_from(lab, fetcher.host, "publisher")
    seeding = publisher.join(phrase)
    listening(seeding)
    second = fetcher.join(phrase)
    assert sha256_file(saved(second, file_id, STEP_TIMEOUT)) == digest
    assert store_counts(fetcher.data_dir).verified == chunks
    resumed = bytes_from(lab, fetcher.host, "publisher") - received_before
    left = (chunks - before) * (CHUNK_SIZE + CHUNK_OVERHEAD)
    print(
        f"killed with {before}/{chunks} chunks verified; the restart received {resumed} bytes "
        f"for {chunks - before} chunks left ({resumed / left:.2f} x their size)"
    )
    assert resumed <= left * FRAMING_ALLOWANCE
    assert resumed < MID_FILE  # a refetch of everything would be above the file's size
    for events in (second, seeding):
        assert stop(events) == EXIT_TERMINATED, events.tail()


def test_a_tampered_chunk_is_rejected_and_fetched_again_from_another_peer(
    lab: Lab,  # noqa: F811
    tmp_path: Path,
) -> None:
    peers, phrase, port = setup(lab, tmp_path)
    publisher, tamperer, fetcher = peers[0], peers[1], peers[3]
    fetcher.add_bootstrap(address(tamperer, port), address(publisher, port))
    publisher.add_bootstrap(address(fetcher, port))
    source = tmp_path / "small.bin"
    size = SMALL_CHUNKS * CHUNK_SIZE
    digest = random_file(source, size)
    # The tamperer fetches the file honestly, then one of its stored chunks is damaged.
    holder = tamperer.join(phrase)
    listening(holder)
    publishing = publisher.publish(phrase, source)
    file_id = published(publishing)
    saved(holder, file_id, STEP_TIMEOUT)
    assert publishing.proc.wait(STEP_TIMEOUT) == 0, publishing.tail()
    assert stop(holder) == EXIT_TERMINATED, holder.tail()
    corrupt_chunk(tamperer.data_dir)
    count_bytes(
        lab,
        fetcher.host,
        {"tamperer": udp_from(tamperer.host.ip), "publisher": udp_from(publisher.host.ip)},
    )
    # Only the tamperer is up: the fetcher gets every chunk from it, one of them bad.
    serving = tamperer.join(phrase)
    listening(serving)
    fetching = fetcher.join(phrase)
    wait_for(
        "every chunk to cross from the tamperer",
        lambda: bytes_from(lab, fetcher.host, "tamperer") >= size,
        STEP_TIMEOUT,
    )
    wait_for(
        "the good chunks to be verified",
        lambda: store_counts(fetcher.data_dir).verified == SMALL_CHUNKS - 1,
        STEP_TIMEOUT,
    )
    assert fetching.of("saved") == []
    assert bytes_from(lab, fetcher.host, "publisher") == 0
    # The publisher returns, seeding from its store; the fetcher asks it for the bad chunk.
    returned_at = time.monotonic()
    seeding = publisher.join(phrase)
    path = saved(fetching, file_id, STEP_TIMEOUT)
    assert sha256_file(path) == digest
    assert fetching.of("saved")[0]["_t"] > returned_at
    assert bytes_from(lab, fetcher.host, "publisher") >= CHUNK_SIZE
    for events in (serving, fetching, seeding):
        assert stop(events) == EXIT_TERMINATED, events.tail()


def test_a_peer_with_the_wrong_passphrase_stores_nothing(
    lab: Lab,  # noqa: F811
    tmp_path: Path,
) -> None:
    peers, phrase, port = setup(lab, tmp_path)
    publisher, honest, intruder = peers[0], peers[1], peers[2]
    source = tmp_path / "small.bin"
    digest = random_file(source, SMALL_CHUNKS * CHUNK_SIZE)
    # The intruder aims at the publisher's real port on the same segment.
    count_bytes(lab, publisher.host, {"intruder": f"{udp_from(intruder.host.ip)} udp dport {port}"})
    intruding = intruder.join(
        fresh_passphrase(),
        "--target", address(publisher, port), "--timeout", str(INTRUDER_TIMEOUT),
    )  # fmt: skip
    listening(intruding)
    holder = honest.join(phrase)
    listening(holder)
    publishing = publisher.publish(phrase, source)
    file_id = published(publishing)
    assert sha256_file(saved(holder, file_id, STEP_TIMEOUT)) == digest
    assert publishing.proc.wait(STEP_TIMEOUT) == 0, publishing.tail()
    assert intruding.proc.poll() is None, "the intruder left before the honest exchange ended"
    assert bytes_from(lab, publisher.host, "intruder") > 0, "the intruder never reached peer1"
    assert stop(intruding) == EXIT_TERMINATED, intruding.tail()
    assert intruding.of("connected") == []
    assert intruding.of("file") == []
    counts = store_counts(intruder.data_dir)
    assert (counts.envelopes, counts.chunks, counts.verified) == (0, 0, 0)
    assert intruder.downloaded() == []
    assert stop(holder) == EXIT_TERMINATED, holder.tail()
