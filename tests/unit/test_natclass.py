"""NAT classification: each RFC 4787 mapping behaviour from the observations that show it."""

from __future__ import annotations

import json

from transports.natclass import Observation, classify

A1, A2 = ("203.0.113.1", 3478), ("203.0.113.2", 3478)
A2_ALT = ("203.0.113.2", 3479)
WAN_IP = "203.0.113.11"


def obs(*pairs: tuple[tuple[str, int], int]) -> list[Observation]:
    """Observations of mapped port ``port`` at the WAN IP, per server."""
    return [Observation(server, (WAN_IP, port)) for server, port in pairs]


def test_same_mapping_towards_two_ips_is_endpoint_independent() -> None:
    result = classify(obs((A1, 5000), (A2, 5000)), local_port=5000)
    assert (result.presence, result.mapping) == ("nat", "endpoint-independent")
    assert result.reflexive == (WAN_IP, 5000)
    assert result.port_preserved is True
    assert not result.endpoint_dependent
    assert "endpoint-independent" in result.describe()


def test_different_mappings_towards_two_ips_are_address_dependent_untested() -> None:
    result = classify(obs((A1, 5000), (A2, 6000)), local_port=4000)
    assert result.mapping == "address-dependent"
    assert not result.port_dependence_tested
    assert result.endpoint_dependent
    assert result.port_preserved is False
    assert "not tested" in result.describe()


def test_same_mapping_for_two_ports_of_one_ip_but_not_across_ips_is_address_dependent() -> None:
    result = classify(obs((A1, 5000), (A2, 6000), (A2_ALT, 6000)))
    assert result.mapping == "address-dependent"
    assert result.port_dependence_tested
    assert "not tested" not in result.describe()


def test_different_mapping_for_two_ports_of_one_ip_is_address_and_port_dependent() -> None:
    result = classify(obs((A1, 5000), (A2, 6000), (A2_ALT, 7000)))
    assert result.mapping == "address-and-port-dependent"
    assert result.port_dependence_tested


def test_a_mapped_address_that_is_ours_means_no_nat() -> None:
    me = ("198.51.100.5", 4242)
    result = classify([Observation(A1, me), Observation(A2, me)], local=[me])
    assert (result.presence, result.mapping, result.reflexive) == (
        "no-nat",
        "endpoint-independent",
        me,
    )
    assert "none" in result.describe()


def test_one_server_ip_cannot_tell_the_mapping() -> None:
    result = classify(obs((A1, 5000)))
    assert (result.presence, result.mapping) == ("nat", "unknown")
    assert classify(obs((A2, 5000), (A2_ALT, 5000))).mapping == "unknown"


def test_no_answer_at_all_is_unknown() -> None:
    result = classify([])
    assert (result.presence, result.mapping, result.reflexive) == ("unknown", "unknown", None)
    assert "no STUN server answered" in result.describe()


def test_ipv4_mapped_ipv6_addresses_compare_as_ipv4() -> None:
    me = ("198.51.100.5", 4242)
    result = classify([Observation(A1, ("::ffff:198.51.100.5", 4242))], local=[me])
    assert result.presence == "no-nat"
    assert result.observations[0].mapped == me


def test_json_form_is_plain_data() -> None:
    result = classify(
        [Observation(A1, ("2001:db8::1", 5000)), Observation(A2, ("2001:db8::1", 5000))]
    )
    data = json.loads(json.dumps(result.as_dict()))
    assert data["nat"] == "nat"
    assert data["mapping"] == "endpoint-independent"
    assert data["reflexive"] == "[2001:db8::1]:5000"
    assert data["servers"][0] == {"server": "203.0.113.1:3478", "mapped": "[2001:db8::1]:5000"}
