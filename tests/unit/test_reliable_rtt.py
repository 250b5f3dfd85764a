"""RTT estimation and RTO against RFC 6298's arithmetic, worked by hand."""

from __future__ import annotations

import pytest

from p2pd.reliable._config import GRANULARITY, INITIAL_RTO, MAX_RTO, MIN_RTO
from p2pd.reliable._rtt import RttEstimator


def test_rto_before_any_sample_is_the_initial_rto() -> None:
    rtt = RttEstimator()
    assert rtt.srtt is None
    assert rtt.rto == INITIAL_RTO == 1.0


def test_first_sample_sets_srtt_to_r_and_rttvar_to_half_r() -> None:
    rtt = RttEstimator(min_rto=0.001)
    rtt.on_sample(0.100)
    assert rtt.srtt == pytest.approx(0.100)
    assert rtt.rttvar == pytest.approx(0.050)
    # RTO = SRTT + max(G, 4 * RTTVAR) = 0.1 + 0.2
    assert rtt.rto == pytest.approx(0.300)


def test_second_sample_updates_rttvar_with_the_old_srtt_then_srtt() -> None:
    rtt = RttEstimator(min_rto=0.001)
    rtt.on_sample(0.100)
    rtt.on_sample(0.200)
    # RTTVAR = 3/4 * 0.05 + 1/4 * |0.1 - 0.2| = 0.0375 + 0.025 = 0.0625
    assert rtt.rttvar == pytest.approx(0.0625)
    # SRTT = 7/8 * 0.1 + 1/8 * 0.2 = 0.0875 + 0.025 = 0.1125
    assert rtt.srtt == pytest.approx(0.1125)
    # RTO = 0.1125 + 4 * 0.0625 = 0.3625
    assert rtt.rto == pytest.approx(0.3625)


def test_three_samples_follow_the_rfc_recurrences() -> None:
    rtt = RttEstimator(min_rto=0.001)
    for sample in (0.100, 0.200, 0.050):
        rtt.on_sample(sample)
    # RTTVAR = 3/4 * 0.0625 + 1/4 * |0.1125 - 0.05| = 0.046875 + 0.015625 = 0.0625
    assert rtt.rttvar == pytest.approx(0.0625)
    # SRTT = 7/8 * 0.1125 + 1/8 * 0.05 = 0.0984375 + 0.00625 = 0.1046875
    assert rtt.srtt == pytest.approx(0.1046875)
    assert rtt.rto == pytest.approx(0.1046875 + 0.25)


def test_granularity_bounds_the_variance_term_when_rtt_is_steady() -> None:
    rtt = RttEstimator(min_rto=0.0001)
    for _ in range(200):
        rtt.on_sample(0.010)
    assert rtt.rttvar < GRANULARITY / 4
    # RTO = SRTT + max(G, K * RTTVAR) = 0.010 + G
    assert rtt.rto == pytest.approx(0.010 + GRANULARITY)


def test_rto_is_floored_at_min_rto() -> None:
    rtt = RttEstimator()
    rtt.on_sample(0.001)
    assert rtt.rto == MIN_RTO == 0.2


def test_rto_is_capped_at_max_rto() -> None:
    rtt = RttEstimator()
    rtt.on_sample(100.0)
    assert rtt.rto == MAX_RTO == 60.0


def test_back_off_doubles_rto_up_to_max() -> None:
    rtt = RttEstimator(min_rto=0.001)
    rtt.on_sample(0.100)
    rtt.back_off()
    assert rtt.rto == pytest.approx(0.600)
    rtt.back_off()
    assert rtt.rto == pytest.approx(1.200)
    for _ in range(20):
        rtt.back_off()
    assert rtt.rto == MAX_RTO


def test_back_off_applies_before_the_first_sample_too() -> None:
    rtt = RttEstimator()
    rtt.back_off()
    assert rtt.rto == pytest.approx(2 * INITIAL_RTO)


def test_new_sample_recomputes_rto_and_clears_back_off() -> None:
    rtt = RttEstimator(min_rto=0.001)
    rtt.on_sample(0.100)
    rtt.back_off()
    rtt.on_sample(0.100)
    # RTTVAR = 3/4 * 0.05 + 0 = 0.0375; SRTT = 0.1; RTO = 0.1 + 0.15
    assert rtt.backoff == 0
    assert rtt.rto == pytest.approx(0.250)


def test_ack_delay_is_subtracted_when_the_result_stays_above_min_rtt() -> None:
    rtt = RttEstimator(min_rto=0.001)
    rtt.on_ack_sample(0.100, ack_delay=0.0)
    rtt.on_ack_sample(0.130, ack_delay=0.025)
    # adjusted sample 0.105 >= min_rtt 0.1
    assert rtt.srtt == pytest.approx(7 / 8 * 0.100 + 1 / 8 * 0.105)
    assert rtt.latest_rtt == pytest.approx(0.130)


def test_ack_delay_is_ignored_when_it_would_go_below_min_rtt() -> None:
    rtt = RttEstimator(min_rto=0.001)
    rtt.on_ack_sample(0.100, ack_delay=0.0)
    rtt.on_ack_sample(0.110, ack_delay=0.025)
    assert rtt.srtt == pytest.approx(7 / 8 * 0.100 + 1 / 8 * 0.110)
