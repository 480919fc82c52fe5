"""The global model's evaluation, and the devices personalization is measured on.

Both the simulation and the server evaluate each round's global model on the future
data of a fixed sample of devices; it lives below both so that neither imports the other.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from devicetune.config import DevicetuneConfig
from devicetune.data.labeled import LabeledData
from devicetune.data.sources import FleetInput
from devicetune.device.runtime import DeviceRuntime
from devicetune.errors import ConfigError
from devicetune.fleet.population import Population


def global_evaluator(config: DevicetuneConfig, population: Population,
                     runtime: DeviceRuntime, data_dir: Path, data: FleetInput | None = None
                     ) -> Callable[[list[np.ndarray]], dict[str, Any]]:
    """Global accuracy on the future data of a fixed sample of devices (features are
    computed once: the backbone is frozen). The devices are those personalization is
    measured on: when they are other people than the fleet's, the set is held out."""
    assert config.fleet is not None
    population, _ = personalization_population(config, population, data_dir, data)
    features, labels, platforms, tiers = [], [], [], []
    for device_id in population.sample_ids(config.fleet.eval_devices, salt=0):
        test = population.local_data(device_id).test
        profile = population.profile(device_id)
        features.append(runtime.features(test.x))
        labels.append(test.y)
        platforms += [profile.platform] * len(test)
        tiers += [profile.tier] * len(test)
    x, y = np.concatenate(features), np.concatenate(labels)
    cohorts = {"by_platform": np.array(platforms), "by_tier": np.array(tiers)}

    def evaluate(weights: list[np.ndarray]) -> dict[str, Any]:
        """Overall loss and accuracy, and accuracy per platform and per compute tier
        (the cohorts a new version must not regress)."""
        runtime.set_weights(weights)
        loss, accuracy = runtime.evaluate(x, y)
        result: dict[str, Any] = {"accuracy": accuracy, "loss": loss}
        for key, members in cohorts.items():
            result[key] = {str(c): runtime.evaluate(x[members == c], y[members == c])[1]
                           for c in np.unique(members)}
        return result

    return evaluate


def personalization_population(config: DevicetuneConfig, fleet_population: Population,
                               data_dir: Path, data: FleetInput | None = None
                               ) -> tuple[Population, list[int]]:
    """The devices personalization is measured on (with their own test fraction), and
    which of them to use."""
    assert config.fleet is not None
    spec = config.fleet.personalization
    population = fleet_population
    if spec.subjects:
        if data is not None and not isinstance(data, LabeledData):
            raise ConfigError("fleet.personalization.subjects picks users of a pooled "
                              "dataset; with a DeviceDataSource given in Python, leave it "
                              "empty (the source's own devices personalise)")
        fleet = config.fleet.model_copy(update={
            "devices": len(spec.subjects),
            "data": config.fleet.data.model_copy(update={"subjects": spec.subjects,
                                                         "partition": "natural"}),
        })
        classes = config.model.classes if config.model is not None else None
        population = Population.from_config(fleet, config.seed, data_dir, data=data,
                                            class_names=classes,
                                            test_fraction=spec.test_fraction)
    elif spec.test_fraction is not None:
        population = Population(config.fleet, fleet_population.source, config.seed,
                                spec.test_fraction)
    return population, population.sample_ids(spec.max_devices, salt=1)
