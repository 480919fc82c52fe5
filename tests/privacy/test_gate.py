from __future__ import annotations

import dp_accounting
import pytest
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from devicetune.config import PrivacyConfig
from devicetune.errors import ConfigError, PrivacyBudgetExceeded
from devicetune.privacy.accounting import DEFAULT_PLD_INTERVAL, RoundAccountant
from devicetune.privacy.gate import check_emit, check_round

DELTA, NOISE, Q = 1e-5, 1.0, 0.05


def _direct_epsilons(accountant: str, rounds: int) -> list[float]:
    """Epsilon after each of ``rounds`` rounds, from dp-accounting itself."""
    fresh = (RdpAccountant() if accountant == "rdp"
             else PLDAccountant(value_discretization_interval=DEFAULT_PLD_INTERVAL))
    event = dp_accounting.PoissonSampledDpEvent(Q, dp_accounting.GaussianDpEvent(NOISE))
    spent = []
    for _ in range(rounds):
        fresh.compose(event)
        spent.append(fresh.get_epsilon(DELTA))
    return spent


def _rounds_run(config: PrivacyConfig, limit: int) -> tuple[int, str]:
    accountant = RoundAccountant(config.delta)
    for _ in range(limit):
        try:
            check_round(config, accountant, Q)
        except PrivacyBudgetExceeded as exc:
            return accountant.rounds, str(exc)
        accountant.record(config.noise_multiplier, Q)
    return accountant.rounds, ""


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_the_gate_refuses_exactly_the_round_that_would_overspend(accountant: str) -> None:
    direct = _direct_epsilons(accountant, 13)
    budget = (direct[11] + direct[12]) / 2  # 12 rounds fit, the 13th overspends
    config = PrivacyConfig(mode="fixed", noise_multiplier=NOISE, delta=DELTA,
                           max_epsilon=budget, accountant=accountant)
    ran, message = _rounds_run(config, 30)
    assert ran == 12
    assert "round 13" in message and "allowed 12 rounds" in message
    assert f"{direct[11]:.4g}" in message and f"{direct[12]:.4g}" in message
    assert "\n" not in message and "privacy.max_epsilon" in message


def test_a_budget_equal_to_the_epsilon_of_a_round_lets_that_round_run() -> None:
    direct = _direct_epsilons("rdp", 12)
    config = PrivacyConfig(mode="fixed", noise_multiplier=NOISE, delta=DELTA,
                           max_epsilon=direct[9], accountant="rdp")
    assert _rounds_run(config, 20)[0] == 10


def test_the_gate_previews_the_noise_a_round_will_use() -> None:
    accountant = RoundAccountant(DELTA)
    config = PrivacyConfig(mode="fixed", noise_multiplier=0.5, delta=DELTA,
                           max_epsilon=1.0)
    with pytest.raises(PrivacyBudgetExceeded, match="allowed 0 rounds"):
        check_round(config, accountant, Q)
    assert check_round(config, accountant, Q, noise_multiplier=3.0).rdp < 1.0
    assert accountant.rounds == 0


def test_without_a_budget_every_round_runs() -> None:
    config = PrivacyConfig(mode="fixed", noise_multiplier=NOISE, delta=DELTA)
    assert _rounds_run(config, 30) == (30, "")


def test_emitting_is_refused_once_spent_is_past_the_budget() -> None:
    accountant = RoundAccountant(DELTA)
    for _ in range(10):
        accountant.record(NOISE, Q)
    spent = accountant.epsilons()
    within = PrivacyConfig(mode="fixed", delta=DELTA, max_epsilon=spent.rdp)
    assert check_emit(within, accountant) == spent
    # A resumed run whose budget was lowered below what was already spent.
    lowered = PrivacyConfig(mode="fixed", delta=DELTA, max_epsilon=spent.rdp * 0.9)
    with pytest.raises(PrivacyBudgetExceeded, match="not emitted"):
        check_emit(lowered, accountant)


def test_a_changed_delta_is_a_config_error() -> None:
    config = PrivacyConfig(mode="fixed", delta=1e-6, max_epsilon=5.0)
    with pytest.raises(ConfigError, match="delta"):
        check_round(config, RoundAccountant(1e-5), Q)
