"""Planning a privacy budget: the noise a target needs, or the rounds a noise allows.

Both searches evaluate `devicetune.privacy.accounting.epsilon`, which is a
dp-accounting computation of ``rounds`` Poisson-sampled Gaussian rounds, so what they
return is checked by the same accountant that will spend it. Noise is calibrated with
``dp_accounting.calibrate_dp_mechanism`` on fresh RDP or PLD accountants (a bisection
that returns a point whose epsilon is at or below the target). Both aim a hair under the target
(`PLAN_MARGIN`): the server's PLD accountant convolves round by round, which reads
up to about 4e-8 (relative) above one composition of all rounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import dp_accounting

from devicetune.errors import ConfigError
from devicetune.privacy.accounting import (
    ACCOUNTANTS,
    DEFAULT_PLD_INTERVAL,
    AccountantName,
    Epsilons,
    check_round_parameters,
    epsilon,
    round_event,
)

PLAN_MARGIN = 1e-6  # relative; far below any epsilon a user would state
MAX_PLANNED_ROUNDS = 1_000_000
MAX_NOISE_MULTIPLIER = 1e4


def noise_for_budget(target_epsilon: float, delta: float, rounds: int,
                     sampling_rate: float, accountant: AccountantName = "rdp", *,
                     value_discretization_interval: float = DEFAULT_PLD_INTERVAL) -> float:
    """The smallest noise multiplier (to 1e-6) whose epsilon after ``rounds`` is at or
    below ``target_epsilon``.

    Raises:
        ConfigError: a parameter is out of range, or no noise up to
            `MAX_NOISE_MULTIPLIER` reaches the target.
    """
    _check_target(target_epsilon)
    check_round_parameters(1.0, sampling_rate)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"rounds must be a whole number >= 1, got {rounds!r}")
    aim = target_epsilon * (1 - PLAN_MARGIN)

    def spent(noise: float) -> float:
        return epsilon(rounds, noise, sampling_rate, delta, accountant,
                       value_discretization_interval=value_discretization_interval)

    unreachable = ConfigError(
        f"epsilon {target_epsilon:g} at delta {delta:g} over {rounds} rounds is out of "
        f"reach with noise multiplier up to {MAX_NOISE_MULTIPLIER:g} ({accountant.upper()}"
        "); raise --epsilon or lower --rounds or --sampling-rate")
    if spent(MAX_NOISE_MULTIPLIER) > aim:
        raise unreachable
    if accountant == "rdp":
        def fresh() -> dp_accounting.PrivacyAccountant:
            return dp_accounting.rdp.RdpAccountant()
    else:
        def fresh() -> dp_accounting.PrivacyAccountant:
            return dp_accounting.pld.PLDAccountant(
                value_discretization_interval=value_discretization_interval)
    noise = float(dp_accounting.calibrate_dp_mechanism(
        fresh, lambda z: dp_accounting.SelfComposedDpEvent(round_event(z, sampling_rate),
                                                           rounds),
        aim, delta, dp_accounting.LowerEndpointAndGuess(0.0, 1.0), tol=1e-6))
    while spent(noise) > aim:  # the bisection guarantees this; kept as a hard check
        noise *= 1 + 1e-6
    return noise


def rounds_for_budget(noise_multiplier: float, target_epsilon: float, delta: float,
                      sampling_rate: float, accountant: AccountantName = "rdp", *,
                      value_discretization_interval: float = DEFAULT_PLD_INTERVAL) -> int:
    """The most rounds whose epsilon stays at or below ``target_epsilon`` (0 if even one
    round overspends), capped at `MAX_PLANNED_ROUNDS`.

    Raises:
        ConfigError: a parameter is out of range.
    """
    _check_target(target_epsilon)
    check_round_parameters(noise_multiplier, sampling_rate)
    aim = target_epsilon * (1 - PLAN_MARGIN)

    def fits(rounds: int) -> bool:
        return epsilon(rounds, noise_multiplier, sampling_rate, delta, accountant,
                       value_discretization_interval=value_discretization_interval) <= aim

    if not fits(1):
        return 0
    good, bad = 1, 2  # epsilon grows with rounds: double, then bisect
    while fits(bad):
        if bad >= MAX_PLANNED_ROUNDS:
            return MAX_PLANNED_ROUNDS
        good, bad = bad, min(2 * bad, MAX_PLANNED_ROUNDS)
    while bad - good > 1:
        middle = (good + bad) // 2
        good, bad = (middle, bad) if fits(middle) else (good, middle)
    return good


@dataclass(frozen=True)
class PlanRow:
    """A plan under one accountant, with both accountants' epsilon for it."""

    accountant: AccountantName
    noise_multiplier: float
    rounds: int
    epsilons: Epsilons


def plan(target_epsilon: float, delta: float, sampling_rate: float, *,
         rounds: int | None = None, noise_multiplier: float | None = None
         ) -> list[PlanRow]:
    """Plan under both accountants: the noise for ``rounds``, or the rounds for
    ``noise_multiplier`` (give exactly one).

    Raises:
        ConfigError: a parameter is out of range, or neither plan is possible.
    """
    if (rounds is None) == (noise_multiplier is None):
        raise ConfigError("give rounds (to plan the noise) or noise_multiplier "
                          "(to plan the rounds), not both or neither")
    rows = []
    for name in ACCOUNTANTS:
        if rounds is not None:
            noise = noise_for_budget(target_epsilon, delta, rounds, sampling_rate, name)
            allowed = rounds
        else:
            assert noise_multiplier is not None
            noise = noise_multiplier
            allowed = rounds_for_budget(noise, target_epsilon, delta, sampling_rate, name)
        spent = Epsilons(*(epsilon(allowed, noise, sampling_rate, delta, other)
                           for other in ACCOUNTANTS))
        rows.append(PlanRow(name, noise, allowed, spent))
    if all(row.rounds == 0 for row in rows):
        one = epsilon(1, rows[0].noise_multiplier, sampling_rate, delta, "pld")
        raise ConfigError(
            f"noise multiplier {noise_multiplier:g} spends epsilon {one:.4g} (PLD) in a "
            f"single round at sampling rate {sampling_rate:g}, past the target "
            f"{target_epsilon:g}; raise --noise-multiplier or --epsilon, or lower "
            "--sampling-rate")
    return rows


def format_plan(rows: list[PlanRow], target_epsilon: float, delta: float,
                sampling_rate: float) -> str:
    """The plan as a small text table."""
    lines = [f"target: epsilon <= {target_epsilon:g} at delta {delta:g}, sampling rate "
             f"{sampling_rate:g} (devices per round / population)",
             f"{'accountant':<11}{'noise multiplier':>17}{'rounds':>10}"
             f"{'epsilon RDP':>13}{'epsilon PLD':>13}"]
    for row in rows:
        rounds = (f">={row.rounds}" if row.rounds >= MAX_PLANNED_ROUNDS
                  else str(row.rounds))
        lines.append(f"{row.accountant.upper():<11}{row.noise_multiplier:>17.4f}"
                     f"{rounds:>10}{row.epsilons.rdp:>13.4f}{row.epsilons.pld:>13.4f}")
    lines.append("Each row is planned with its accountant; privacy.accountant picks the "
                 "one the budget gate uses.")
    return "\n".join(lines)


def _check_target(target_epsilon: float) -> None:
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ConfigError(f"target epsilon must be > 0, got {target_epsilon}")


__all__ = [
    "MAX_NOISE_MULTIPLIER",
    "MAX_PLANNED_ROUNDS",
    "PLAN_MARGIN",
    "PlanRow",
    "format_plan",
    "noise_for_budget",
    "plan",
    "rounds_for_budget",
]
