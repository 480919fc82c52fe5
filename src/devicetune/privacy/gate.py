"""The budget gate: a round that would push epsilon past the budget does not run.

Before each round the server asks `check_round`; it previews the round in the
accountant (nothing is recorded) and refuses with `PrivacyBudgetExceeded` if epsilon
of the configured accountant would exceed ``PrivacyConfig.max_epsilon``. Before
emitting a model version, `check_emit` refuses if the epsilon already spent is past
the budget (a resumed run whose budget was lowered, say).
"""

from __future__ import annotations

from devicetune.config import PrivacyConfig
from devicetune.errors import ConfigError, PrivacyBudgetExceeded
from devicetune.privacy.accounting import Epsilons, RoundAccountant


def check_round(config: PrivacyConfig, accountant: RoundAccountant, sampling_rate: float,
                *, noise_multiplier: float | None = None) -> Epsilons:
    """Allow one more round, or raise; return the epsilons it would leave.

    Args:
        config: The privacy section; ``max_epsilon`` None means no budget.
        accountant: The rounds run so far (at ``config.delta``).
        sampling_rate: Expected devices per round / population, for this round.
        noise_multiplier: The round's noise; ``config.noise_multiplier`` by default.

    Raises:
        PrivacyBudgetExceeded: the round would push epsilon past ``max_epsilon``.
    """
    _check_delta(config, accountant)
    noise = config.noise_multiplier if noise_multiplier is None else noise_multiplier
    after = accountant.preview(noise, sampling_rate)
    budget = config.max_epsilon
    if budget is not None and after.of(config.accountant) > budget:
        spent = accountant.epsilons().of(config.accountant)
        raise PrivacyBudgetExceeded(
            f"privacy budget: round {accountant.rounds + 1} would raise epsilon "
            f"({config.accountant.upper()}, delta {config.delta:g}) to "
            f"{after.of(config.accountant):.4g}, past privacy.max_epsilon = {budget:g}; "
            f"the budget allowed {accountant.rounds} rounds, which spent epsilon "
            f"{spent:.4g}; to train longer raise privacy.max_epsilon or "
            "privacy.noise_multiplier, or sample fewer devices per round")
    return after


def check_emit(config: PrivacyConfig, accountant: RoundAccountant) -> Epsilons:
    """Allow emitting a model trained on these rounds, or raise; return epsilon spent.

    Raises:
        PrivacyBudgetExceeded: epsilon spent is already past ``max_epsilon``.
    """
    _check_delta(config, accountant)
    spent = accountant.epsilons()
    budget = config.max_epsilon
    if budget is not None and spent.of(config.accountant) > budget:
        raise PrivacyBudgetExceeded(
            f"privacy budget: the model's {accountant.rounds} rounds spent epsilon "
            f"({config.accountant.upper()}, delta {config.delta:g}) "
            f"{spent.of(config.accountant):.4g}, past privacy.max_epsilon = {budget:g}; "
            "it is not emitted. Emit an earlier version, or raise privacy.max_epsilon")
    return spent


def _check_delta(config: PrivacyConfig, accountant: RoundAccountant) -> None:
    if accountant.delta != config.delta:
        raise ConfigError(
            f"privacy.delta is {config.delta:g} but the accountant (and its ledger) "
            f"use {accountant.delta:g}; a run keeps one delta, so restore it")


__all__ = ["check_emit", "check_round"]
