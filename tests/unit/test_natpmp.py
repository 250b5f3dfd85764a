"""NAT-PMP (RFC 6886) and PCP MAP (RFC 6887): wire layouts, the client core's timing, fuzz.

The answer vectors marked "miniupnpd" were captured from miniupnpd 2.3.1 in the lab
(tests/netlab/test_portmap.py's topology): external address 203.0.113.11, epoch 2224.
"""

from __future__ import annotations

import contextlib
import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pd.errors import BadFrame, LocalError
from transports.natpmp import (
    BEHIND_CGNAT,
    DELETE_MAX_ATTEMPTS,
    NATPMP_MAX_ATTEMPTS,
    PCP_INITIAL_TIMEOUT,
    PCP_MAP_SIZE,
    Deleted,
    Failed,
    Mapped,
    PortMapCore,
    State,
    external_address_problem,
    natpmp_address_request,
    natpmp_map_request,
    parse_answer_untrusted,
    pcp_map_request,
)

PORT = 41641
EXTERNAL = "203.0.113.11"
CLIENT = "10.1.0.2"
NONCE = bytes(range(12))
# miniupnpd: answer to "external address?" and to "map UDP 41641 -> 41641 for 7200 s".
ADDRESS_ANSWER = bytes.fromhex("00800000000008b0cb00710b")
MAP_ANSWER = bytes.fromhex("00810000000008b0a2a9a2a900001c20")
EPOCH = 0x8B0


def natpmp_map_answer(
    *, op: int = 1, result: int = 0, epoch: int = EPOCH, internal: int = PORT,
    external: int = PORT, lifetime: int = 7200,
) -> bytes:  # fmt: skip
    return struct.pack("!BBHIHHI", 0, 0x80 | op, result, epoch, internal, external, lifetime)


def pcp_map_answer(
    *, result: int = 0, lifetime: int = 7200, epoch: int = EPOCH, nonce: bytes = NONCE,
    protocol: int = 17, internal: int = PORT, external: int = PORT, ip: str = EXTERNAL,
) -> bytes:  # fmt: skip
    header = struct.pack("!BBBBII12x", 2, 0x81, 0, result, lifetime, epoch)
    mapped = ipaddress.IPv6Address(f"::ffff:{ip}").packed
    return header + struct.pack("!12sB3xHH16s", nonce, protocol, internal, external, mapped)


def drain(core: PortMapCore) -> list[object]:
    events = []
    while (event := core.next_event()) is not None:
        events.append(event)
    return events


def mapped_natpmp(now: float = 0.0) -> PortMapCore:
    core = PortMapCore("natpmp", "udp", PORT, now=now)
    assert core.datagrams_to_send(now) == [natpmp_address_request()]
    core.receive_untrusted(ADDRESS_ANSWER, now)
    assert core.datagrams_to_send(now) == [natpmp_map_request("udp", PORT, PORT, 7200)]
    core.receive_untrusted(MAP_ANSWER, now)
    assert drain(core) == [Mapped((EXTERNAL, PORT), 7200)]
    return core


# --- wire layouts ------------------------------------------------------------------------------


def test_natpmp_requests_match_rfc6886_layout() -> None:
    assert natpmp_address_request() == b"\x00\x00"
    assert natpmp_map_request("udp", 0x1234, 0x5678, 7200) == bytes.fromhex(
        "000100001234567800001c20"
    )
    assert natpmp_map_request("tcp", 1, 0, 0)[:2] == b"\x00\x02"


def test_natpmp_answers_from_miniupnpd_parse() -> None:
    address = parse_answer_untrusted(ADDRESS_ANSWER)
    assert (address.opcode, address.result, address.epoch) == (0x80, 0, EPOCH)
    assert address.external_ip == EXTERNAL
    mapping = parse_answer_untrusted(MAP_ANSWER)
    assert (mapping.opcode, mapping.internal_port, mapping.external_port) == (0x81, PORT, PORT)
    assert mapping.lifetime == 7200


def test_pcp_map_request_matches_rfc6887_layout() -> None:
    packet = pcp_map_request(
        "udp", PORT, client_ip=CLIENT, nonce=NONCE, lifetime=7200, suggested=(EXTERNAL, 4000)
    )
    assert len(packet) == PCP_MAP_SIZE == 60
    assert packet[:4] == bytes([2, 1, 0, 0])  # version 2, R=0 opcode MAP, reserved
    assert struct.unpack("!I", packet[4:8]) == (7200,)
    assert packet[8:24] == ipaddress.IPv6Address(f"::ffff:{CLIENT}").packed
    assert packet[24:36] == NONCE
    assert packet[36:40] == bytes([17, 0, 0, 0])  # UDP, reserved
    assert struct.unpack("!HH", packet[40:44]) == (PORT, 4000)
    assert packet[44:60] == ipaddress.IPv6Address(f"::ffff:{EXTERNAL}").packed


def test_pcp_answer_parses_ipv4_mapped_external_address() -> None:
    answer = parse_answer_untrusted(pcp_map_answer(external=5000))
    assert (answer.external_ip, answer.external_port, answer.nonce) == (EXTERNAL, 5000, NONCE)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\x80\x00",
        b"\x01" + bytes(11),  # unknown version
        b"\x00\x01" + bytes(10),  # a request, not an answer
        natpmp_map_answer()[:-1],  # truncated success
        b"\x00\x85\x00\x00" + bytes(4),  # unknown opcode 5 with success
        pcp_map_answer()[:-4],  # truncated PCP MAP success
        pcp_map_answer() + b"\x00",  # not a multiple of 4
        bytes([2, 0x82]) + bytes(58),  # PCP PEER, which we never ask
    ],
)
def test_malformed_answers_are_bad_frames(data: bytes) -> None:
    with pytest.raises(BadFrame):
        parse_answer_untrusted(data)


def test_short_error_answer_is_accepted() -> None:
    answer = parse_answer_untrusted(struct.pack("!BBHI", 0, 0x80, 3, 9))
    assert (answer.result, answer.epoch) == (3, 9)


# --- retransmission and failure ----------------------------------------------------------------


def test_natpmp_retransmits_at_250ms_doubling_then_fails() -> None:
    core = PortMapCore("natpmp", "udp", PORT, now=10.0)
    sent_at = []
    now = 10.0
    while (timer := core.get_timer()) is not None and len(sent_at) < 20:
        now = timer
        core.handle_timer(now)
        if core.datagrams_to_send(now):
            sent_at.append(now - 10.0)
    assert sent_at == [0.0, 0.25, 0.75, 1.75, 3.75]
    assert len(sent_at) == NATPMP_MAX_ATTEMPTS
    assert now - 10.0 == 7.75
    assert drain(core) == [Failed("natpmp: no answer", None)]
    assert core.state is State.FAILED


def test_nothing_is_resent_before_it_is_due() -> None:
    core = PortMapCore("natpmp", "udp", PORT, now=0.0)
    assert core.datagrams_to_send(0.0)
    assert core.datagrams_to_send(0.2) == []
    assert core.datagrams_to_send(0.25) == [natpmp_address_request()]


def test_pcp_uses_its_own_initial_timeout() -> None:
    core = PortMapCore("pcp", "udp", PORT, now=0.0, client_ip=CLIENT, nonce=NONCE)
    assert len(core.datagrams_to_send(0.0)[0]) == PCP_MAP_SIZE
    assert core.get_timer() == PCP_INITIAL_TIMEOUT


def test_error_result_fails_with_its_name() -> None:
    core = PortMapCore("natpmp", "udp", PORT, now=0.0)
    core.datagrams_to_send(0.0)
    core.receive_untrusted(struct.pack("!BBHI", 0, 0x80, 3, 1), 0.0)
    (event,) = drain(core)
    assert isinstance(event, Failed) and event.result == 3 and "network failure" in event.reason


# --- mapping, renewal, reboot, deletion ---------------------------------------------------------


def test_mapping_renews_at_half_the_lifetime_for_the_same_port() -> None:
    core = mapped_natpmp(0.0)
    assert core.external == (EXTERNAL, PORT)
    assert core.get_timer() == 3600.0
    core.handle_timer(3599.0)
    assert core.datagrams_to_send(3599.0) == []
    core.handle_timer(3600.0)
    assert core.state is State.RENEWING
    assert core.datagrams_to_send(3600.0) == [natpmp_map_request("udp", PORT, PORT, 7200)]
    core.receive_untrusted(natpmp_map_answer(epoch=EPOCH + 3600), 3600.0)
    assert drain(core) == [Mapped((EXTERNAL, PORT), 7200)]
    assert core.get_timer() == 7200.0


def test_unanswered_renewal_retries_and_expires() -> None:
    core = mapped_natpmp(0.0)
    now = 0.0
    while core.state is not State.FAILED:
        timer = core.get_timer()
        assert timer is not None and timer >= now
        now = timer
        core.handle_timer(now)
        core.datagrams_to_send(now)
    assert now == 7200.0
    assert drain(core) == [Failed("mapping expired without a renewal", None)]


def test_epoch_going_backwards_means_reboot_and_relearns_the_address() -> None:
    core = mapped_natpmp(0.0)
    core.handle_timer(3600.0)
    core.datagrams_to_send(3600.0)
    core.receive_untrusted(natpmp_map_answer(epoch=5), 3600.0)
    assert core.reboots == 1
    assert drain(core) == [Mapped((EXTERNAL, PORT), 7200)]
    assert core.datagrams_to_send(3600.0) == [natpmp_address_request()]
    core.receive_untrusted(struct.pack("!BBHI4s", 0, 0x80, 0, 6, bytes([198, 51, 100, 7])), 3600)
    assert core.datagrams_to_send(3600.0) == [natpmp_map_request("udp", PORT, PORT, 7200)]
    core.receive_untrusted(natpmp_map_answer(epoch=6), 3600.0)
    assert drain(core) == [Mapped(("198.51.100.7", PORT), 7200)]
    assert core.state is State.MAPPED


def test_close_sends_lifetime_zero_and_reports_confirmed_deletion() -> None:
    core = mapped_natpmp(0.0)
    core.close(10.0)
    assert core.datagrams_to_send(10.0) == [natpmp_map_request("udp", PORT, 0, 0)]
    core.receive_untrusted(natpmp_map_answer(external=0, lifetime=0), 10.0)
    assert drain(core) == [Deleted(confirmed=True)]
    assert core.state is State.CLOSED and core.get_timer() is None


def test_unanswered_deletion_gives_up_quickly() -> None:
    core = mapped_natpmp(0.0)
    core.close(0.0)
    sends = 0
    while (timer := core.get_timer()) is not None:
        core.handle_timer(timer)
        sends += len(core.datagrams_to_send(timer))
    assert sends == DELETE_MAX_ATTEMPTS
    assert drain(core) == [Deleted(confirmed=False)]


def test_close_before_any_answer_needs_no_packet() -> None:
    core = PortMapCore("natpmp", "udp", PORT, now=0.0)
    core.close(0.0)
    assert core.datagrams_to_send(0.0) == []
    assert drain(core) == [Deleted(confirmed=False)]


def test_pcp_maps_with_the_address_from_its_answer() -> None:
    core = PortMapCore("pcp", "tcp", PORT, now=0.0, client_ip=CLIENT, nonce=NONCE)
    core.datagrams_to_send(0.0)
    core.receive_untrusted(pcp_map_answer(protocol=6, external=5000), 0.0)
    assert drain(core) == [Mapped((EXTERNAL, 5000), 7200)]
    core.close(1.0)
    request = core.datagrams_to_send(1.0)[0]
    assert struct.unpack("!I", request[4:8]) == (0,) and request[24:36] == NONCE


def test_pcp_rejects_a_foreign_nonce() -> None:
    core = PortMapCore("pcp", "udp", PORT, now=0.0, client_ip=CLIENT, nonce=NONCE)
    with pytest.raises(BadFrame, match="nonce"):
        core.receive_untrusted(pcp_map_answer(nonce=bytes(12)), 0.0)
    assert core.state is State.MAPPING and drain(core) == []


def test_pcp_to_a_natpmp_only_gateway_fails_unsupported_version() -> None:
    core = PortMapCore("pcp", "udp", PORT, now=0.0, client_ip=CLIENT, nonce=NONCE)
    core.receive_untrusted(struct.pack("!BBHI", 0, 0x81, 1, 7), 0.0)
    (event,) = drain(core)
    assert isinstance(event, Failed) and event.result == 1


@pytest.mark.parametrize(
    "answer",
    [
        natpmp_map_answer(internal=PORT + 1),  # another port's mapping
        natpmp_map_answer(op=2),  # the TCP answer
        ADDRESS_ANSWER,  # an answer to the address question we no longer ask
    ],
)
def test_answers_to_other_requests_are_bad_frames(answer: bytes) -> None:
    core = PortMapCore("natpmp", "udp", PORT, now=0.0)
    core.receive_untrusted(ADDRESS_ANSWER, 0.0)
    with pytest.raises(BadFrame):
        core.receive_untrusted(answer, 0.0)
    assert core.state is State.MAPPING


def test_answer_when_nothing_is_asked_is_a_bad_frame() -> None:
    core = mapped_natpmp(0.0)
    with pytest.raises(BadFrame, match="unexpected"):
        core.receive_untrusted(MAP_ANSWER, 1.0)


def test_local_misuse_raises_local_error() -> None:
    with pytest.raises(LocalError):
        PortMapCore("natpmp", "udp", 0, now=0.0)
    with pytest.raises(LocalError):
        PortMapCore("pcp", "udp", PORT, now=0.0)  # no nonce, no client address


# --- useless external addresses ----------------------------------------------------------------


@pytest.mark.parametrize(
    "ip", ["", "10.0.0.1", "172.16.5.5", "192.168.1.1", "100.64.0.1", "127.0.0.1", "0.0.0.0", "x"]
)
def test_private_cgnat_or_missing_external_address_is_useless(ip: str) -> None:
    problem = external_address_problem(ip)
    assert problem is not None and problem.startswith(BEHIND_CGNAT)


@pytest.mark.parametrize("ip", ["203.0.113.11", "198.51.100.7", "192.0.2.1"])
def test_test_net_external_address_counts_as_public(ip: str) -> None:
    assert external_address_problem(ip) is None


# --- fuzz ---------------------------------------------------------------------------------------


@settings(max_examples=500)
@given(st.binary(max_size=120))
def test_parser_raises_only_bad_frame(data: bytes) -> None:
    with contextlib.suppress(BadFrame):
        parse_answer_untrusted(data)


VALID = [ADDRESS_ANSWER, MAP_ANSWER, pcp_map_answer(), natpmp_map_answer(op=2)]


@settings(max_examples=500)
@given(
    st.sampled_from(["natpmp", "pcp"]),
    st.lists(
        st.one_of(
            st.binary(max_size=80),
            st.tuples(st.sampled_from(VALID), st.integers(0, 59), st.integers(0, 255)).map(
                lambda t: t[0][: t[1]] + bytes([t[2]]) + t[0][t[1] + 1 :]
            ),
            st.sampled_from(VALID),
        ),
        max_size=8,
    ),
)
def test_core_survives_any_datagrams(method: str, datagrams: list[bytes]) -> None:
    """Only BadFrame escapes (an illegal transition would raise LocalError), and it changes
    nothing; whatever came in, close() still ends the core."""
    core = PortMapCore(method, "udp", PORT, now=0.0, client_ip=CLIENT, nonce=NONCE)  # type: ignore[arg-type]
    now = 0.0
    for data in datagrams:
        before = core.state
        core.datagrams_to_send(now)
        try:
            core.receive_untrusted(data, now)
        except BadFrame:
            assert core.state is before
        now += 0.1
    core.close(now)
    while (timer := core.get_timer()) is not None:
        core.handle_timer(timer)
        core.datagrams_to_send(timer)
    assert core.state in (State.CLOSED, State.FAILED)
