from __future__ import annotations

import dp_accounting
import pytest
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from devicetune.config import PrivacyConfig
from devicetune.errors import ConfigError
from devicetune.privacy.accounting import DEFAULT_PLD_INTERVAL, RoundAccountant
from devicetune.privacy.gate import check_round
from devicetune.privacy.planning import noise_for_budget, rounds_for_budget
from tests.conftest import run_cli

DELTA = 1e-5


def _direct(accountant: str, rounds: int, noise: float, q: float) -> float:
    fresh = (RdpAccountant() if accountant == "rdp"
             else PLDAccountant(value_discretization_interval=DEFAULT_PLD_INTERVAL))
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(noise))
    return fresh.compose(event, rounds).get_epsilon(DELTA)


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
@pytest.mark.parametrize(("target", "rounds", "q"), [
    (2.0, 1000, 0.01), (1.0, 200, 0.1), (8.0, 50, 0.1), (0.5, 30, 0.002),
])
def test_a_planned_noise_multiplier_gives_epsilon_within_the_target(
        accountant: str, target: float, rounds: int, q: float) -> None:
    noise = noise_for_budget(target, DELTA, rounds, q, accountant)
    assert _direct(accountant, rounds, noise, q) <= target
    # And it is the least such noise: 0.1% less overspends.
    assert _direct(accountant, rounds, noise * 0.999, q) > target


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_rounds_allowed_is_the_last_round_within_the_budget(accountant: str) -> None:
    rounds = rounds_for_budget(1.0, 2.0, DELTA, 0.02, accountant)
    assert _direct(accountant, rounds, 1.0, 0.02) <= 2.0
    assert _direct(accountant, rounds + 1, 1.0, 0.02) > 2.0
    assert rounds_for_budget(0.3, 1.0, DELTA, 0.5, accountant) == 0


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_the_gate_admits_every_planned_round(accountant: str) -> None:
    rounds, q = 60, 0.05
    noise = noise_for_budget(1.5, DELTA, rounds, q, accountant)
    config = PrivacyConfig(mode="fixed", noise_multiplier=noise, delta=DELTA,
                           max_epsilon=1.5, accountant=accountant)
    accountant_ = RoundAccountant(DELTA)
    for _ in range(rounds):
        check_round(config, accountant_, q)
        accountant_.record(noise, q)
    assert accountant_.epsilons().of(accountant) <= 1.5


def test_bad_targets_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        noise_for_budget(0.0, DELTA, 100, 0.01)
    with pytest.raises(ConfigError):
        noise_for_budget(1.0, DELTA, 0, 0.01)
    with pytest.raises(ConfigError):
        rounds_for_budget(1.0, 1.0, 1.0, 0.01)


def _rows(stdout: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split()[1:] for line in stdout.splitlines()
            if line.split() and line.split()[0] in ("RDP", "PLD")}


def test_cli_plans_the_noise_multiplier_with_both_accountants() -> None:
    result = run_cli("privacy", "plan", "--epsilon", "2", "--delta", "1e-5",
                     "--rounds", "1000", "--sampling-rate", "0.01")
    assert result.returncode == 0, result.stderr
    rows = _rows(result.stdout)
    noise = {name: float(row[0]) for name, row in rows.items()}
    assert noise["RDP"] == pytest.approx(noise_for_budget(2, DELTA, 1000, 0.01), abs=1e-4)
    assert noise["PLD"] == pytest.approx(
        noise_for_budget(2, DELTA, 1000, 0.01, "pld"), abs=1e-4)
    assert noise["PLD"] < noise["RDP"]  # the tighter accountant needs less noise
    assert rows["RDP"][1] == rows["PLD"][1] == "1000"
    assert float(rows["RDP"][2]) <= 2.0 and float(rows["PLD"][3]) <= 2.0


def test_cli_plans_the_rounds_a_noise_multiplier_allows() -> None:
    result = run_cli("privacy", "plan", "--epsilon", "2", "--noise-multiplier", "1.0",
                     "--sampling-rate", "0.01")
    assert result.returncode == 0, result.stderr
    rows = _rows(result.stdout)
    assert int(rows["RDP"][1]) == rounds_for_budget(1.0, 2.0, DELTA, 0.01, "rdp")
    assert int(rows["PLD"][1]) == rounds_for_budget(1.0, 2.0, DELTA, 0.01, "pld")


@pytest.mark.parametrize(("args", "says"), [
    (["--epsilon", "2"], "not both or neither"),
    (["--epsilon", "2", "--rounds", "10", "--noise-multiplier", "1"], "not both"),
    (["--rounds", "10"], "--epsilon is required"),
    (["--epsilon", "0", "--rounds", "10"], "epsilon must be > 0"),
    (["--epsilon", "2", "--rounds", "0"], "rounds must be"),
    (["--epsilon", "2", "--rounds", "10", "--delta", "1.5"], "delta must be in (0, 1)"),
    (["--epsilon", "2", "--rounds", "10", "--sampling-rate", "2"], "sampling rate"),
    (["--epsilon", "1", "--noise-multiplier", "0.3", "--sampling-rate", "0.5"],
     "raise --noise-multiplier"),
])
def test_cli_bad_combinations_print_one_line_and_exit_2(args: list[str], says: str) -> None:
    result = run_cli("privacy", "plan", *args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert says in result.stderr
