"""Robust aggregation against model poisoning: 20% of the fleet sends sign-flipped,
scaled updates (within the norm bound, so validation lets them through).

Measured here (20 devices, all sampled every round, devices 0-3 attacking, 15 rounds;
global accuracy, mean of the last three rounds): clean FedAvg about 0.90; attacked
FedAvg falls below 0.35; attacked FedMedian and FedTrimmedAvg stay within a point of
clean FedAvg. (On clean data the robust rules themselves land a few points away from
FedAvg, up or down with the fleet, so the reference is the clean FedAvg run: what the
federation would reach without attackers.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from devicetune.device.runtime import LiteRTDevice
from devicetune.fleet.evaluation import global_evaluator
from devicetune.fleet.flower_log import quiet_flower
from devicetune.fleet.messages import TrainInstructions
from devicetune.fleet.population import Population
from devicetune.server.loop import FederatedLoop
from devicetune.server.strategies import make_strategy
from tests.conftest import small_config
from tests.server.faulty_devices import AttackGrid

DEVICES, ROUNDS, ATTACKERS = 20, 15, 4  # 20% of the fleet


def _accuracy(strategy: str, attacked: bool, artifacts: Path, data_dir: Path) -> float:
    config = small_config(fleet={"devices": DEVICES, "data": {"windows_per_device": 48}},
                          server={"strategy": strategy, "devices_per_round": DEVICES,
                                  "min_devices": 1})
    population = Population.from_config(config.fleet, config.seed, data_dir)
    runtime = LiteRTDevice(artifacts / "model.tflite", 0.005)
    evaluate = global_evaluator(config, population,
                                LiteRTDevice(artifacts / "model.tflite", 0.005), data_dir)
    loop = FederatedLoop(
        strategy=make_strategy(config.server), names=runtime.weight_names,
        weights=runtime.get_weights(), devices_per_round=DEVICES,
        instructions=TrainInstructions(0, local_epochs=1, learning_rate=0.005),
        max_update_norm=config.server.max_update_norm, evaluate=evaluate, seed=config.seed)
    faults = {k: "flip" for k in range(ATTACKERS)} if attacked else {}
    grid = AttackGrid(population, {"android": runtime}, faults=faults,
                      max_update_norm=config.server.max_update_norm)
    accuracy = []
    for server_round in range(1, ROUNDS + 1):
        record = loop.run_round(grid, server_round)
        assert record.rejected == 0  # the attack passes validation: only aggregation helps
        accuracy.append(record.global_accuracy)
    return float(np.mean(accuracy[-3:]))


@pytest.fixture(scope="module")
def clean_fedavg(small_artifacts: Path, data_dir: Path) -> float:
    quiet_flower()
    return _accuracy("fedavg", False, small_artifacts, data_dir)


def test_fedavg_is_hurt_by_the_attack(clean_fedavg: float, small_artifacts: Path,
                                      data_dir: Path) -> None:
    attacked = _accuracy("fedavg", True, small_artifacts, data_dir)
    print(f"fedavg: clean {clean_fedavg:.3f}, attacked {attacked:.3f}")
    assert attacked < clean_fedavg - 0.20


@pytest.mark.parametrize("strategy", ["fedmedian", "fedtrimmedavg"])
def test_robust_aggregation_keeps_the_clean_accuracy(clean_fedavg: float, strategy: str,
                                                     small_artifacts: Path,
                                                     data_dir: Path) -> None:
    attacked = _accuracy(strategy, True, small_artifacts, data_dir)
    clean = _accuracy(strategy, False, small_artifacts, data_dir)
    print(f"{strategy}: attacked {attacked:.3f}, clean {clean:.3f}; "
          f"clean fedavg {clean_fedavg:.3f}")
    assert abs(attacked - clean_fedavg) <= 0.02
