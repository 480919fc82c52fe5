from __future__ import annotations

import math

import dp_accounting
import pytest
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from devicetune.errors import ConfigError
from devicetune.privacy.accounting import (
    DEFAULT_PLD_INTERVAL,
    RoundAccountant,
    device_epsilon,
    epsilon,
    round_event,
)

DELTA = 1e-5


def _event(noise: float, q: float) -> dp_accounting.DpEvent:
    return dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(noise))


def _pld() -> PLDAccountant:
    return PLDAccountant(value_discretization_interval=DEFAULT_PLD_INTERVAL)


def test_design_sanity_target_noise_1_q_001_1000_rounds() -> None:
    # DESIGN.md: RDP 2.10 and PLD 1.83 at delta 1e-5.
    assert epsilon(1000, 1.0, 0.01, DELTA, "rdp") == pytest.approx(2.10, abs=0.005)
    assert epsilon(1000, 1.0, 0.01, DELTA, "pld") == pytest.approx(1.83, abs=0.005)


def test_every_round_equals_dp_accounting_composing_the_same_events() -> None:
    accountant = RoundAccountant(DELTA)
    rdp, pld = RdpAccountant(), _pld()
    # Rounds differ in noise and sampling rate, as after a config change and resume.
    schedule = [(1.0, 0.01)] * 8 + [(1.3, 0.02)] * 6 + [(0.9, 0.01), (2.0, 0.05)] * 4
    for noise, q in schedule:
        spent = accountant.record(noise, q)
        rdp.compose(_event(noise, q))
        pld.compose(_event(noise, q))
        assert spent.rdp == rdp.get_epsilon(DELTA)
        assert spent.pld == pld.get_epsilon(DELTA)
    assert accountant.rounds == len(schedule)
    assert accountant.epsilons() == spent

    # The recorded events, handed to fresh dp-accounting accountants, say the same.
    event = accountant.dp_event()
    assert RdpAccountant().compose(event).get_epsilon(DELTA) == spent.rdp
    assert _pld().compose(event).get_epsilon(DELTA) == spent.pld


def test_epsilon_at_another_delta_is_dp_accountings() -> None:
    accountant = RoundAccountant(DELTA)
    for _ in range(20):
        accountant.record(1.1, 0.03)
    other = accountant.epsilons_at(1e-7)
    event = accountant.dp_event()
    assert other.rdp == RdpAccountant().compose(event).get_epsilon(1e-7)
    assert other.pld == _pld().compose(event).get_epsilon(1e-7)
    assert other.rdp > accountant.epsilons().rdp  # a smaller delta costs more epsilon


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_epsilon_function_is_a_direct_dp_accounting_computation(accountant: str) -> None:
    fresh = RdpAccountant() if accountant == "rdp" else _pld()
    fresh.compose(_event(0.8, 0.02), 300)
    assert epsilon(300, 0.8, 0.02, DELTA, accountant) == fresh.get_epsilon(DELTA)


def test_the_per_round_fold_agrees_with_one_composition_of_all_rounds() -> None:
    accountant = RoundAccountant(DELTA)
    for _ in range(200):
        spent = accountant.record(1.0, 0.01)
    assert spent.rdp == pytest.approx(epsilon(200, 1.0, 0.01, DELTA, "rdp"), rel=1e-12)
    # Round-by-round convolution truncates a little more often: a hair more epsilon.
    assert spent.pld == pytest.approx(epsilon(200, 1.0, 0.01, DELTA, "pld"), rel=1e-7)


def test_preview_records_nothing_and_record_matches_it() -> None:
    accountant = RoundAccountant(DELTA)
    accountant.record(1.0, 0.05)
    before = accountant.epsilons()
    preview = accountant.preview(1.0, 0.05)
    assert accountant.rounds == 1 and accountant.epsilons() == before
    assert preview.rdp > before.rdp and preview.pld > before.pld
    assert accountant.preview(2.0, 0.05).rdp < preview.rdp  # more noise, less spent
    assert accountant.record(1.0, 0.05) == preview


def test_no_noise_means_no_guarantee() -> None:
    accountant = RoundAccountant(DELTA)
    accountant.record(1.0, 0.01)
    assert math.isinf(accountant.record(0.0, 0.01).rdp)
    assert math.isinf(accountant.record(1.0, 0.01).pld)  # and it stays spent
    assert math.isinf(epsilon(10, 0.0, 0.01, DELTA, "pld"))
    assert epsilon(0, 1.0, 0.01, DELTA) == 0.0


def test_device_dp_sgd_epsilon_uses_batch_over_examples() -> None:
    # A phone with 400 examples, batch 8, 250 local steps of DP-SGD with noise 1.1.
    direct = RdpAccountant().compose(_event(1.1, 8 / 400), 250).get_epsilon(DELTA)
    assert device_epsilon(250, 1.1, 8, 400, DELTA) == direct
    pld = _pld().compose(_event(1.1, 8 / 400), 250).get_epsilon(DELTA)
    assert device_epsilon(250, 1.1, 8, 400, DELTA, "pld") == pld
    # Fewer examples than a batch: every step sees every example.
    assert device_epsilon(5, 1.1, 8, 4, DELTA) == pytest.approx(
        RdpAccountant().compose(dp_accounting.GaussianDpEvent(1.1), 5).get_epsilon(DELTA))
    assert device_epsilon(0, 1.1, 8, 400, DELTA) == 0.0


@pytest.mark.parametrize("call", [
    lambda: round_event(-1.0, 0.01),
    lambda: round_event(1.0, 0.0),
    lambda: round_event(1.0, 1.5),
    lambda: epsilon(10, 1.0, 0.01, 0.0),
    lambda: epsilon(-1, 1.0, 0.01, DELTA),
    lambda: epsilon(10, 1.0, 0.01, DELTA, "gdp"),  # type: ignore[arg-type]
    lambda: RoundAccountant(1.5),
    lambda: RoundAccountant(DELTA).record(float("nan"), 0.01),
    lambda: device_epsilon(10, 1.0, 0, 100, DELTA),
])
def test_bad_parameters_are_config_errors(call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError):
        call()
