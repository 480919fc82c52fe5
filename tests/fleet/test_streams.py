"""The round-at-once seeding equals numpy's own, draw for draw."""

from __future__ import annotations

import numpy as np
import pytest

from devicetune.config import FleetConfig
from devicetune.data.synthetic import SyntheticFleet
from devicetune.fleet.population import Population
from devicetune.fleet.streams import StreamSource, first_uniforms, pcg64_states

PREFIXES = [(0, 6, 1), (0, 8, 37), (2**40 + 5, 8, 12), (123,), (0,), (7, 0, 0),
            (2**64 + 3, 2**33, 9, 4), (1, 2, 3, 4, 5, 6)]


def _reference(prefix: tuple[int, ...], device: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([*prefix, device]))


@pytest.mark.parametrize("prefix", PREFIXES)
def test_states_and_first_draws_equal_default_rng(prefix: tuple[int, ...]) -> None:
    devices = np.concatenate([np.arange(200), [9_999, 123_456, 2**31, 2**32 - 1]])
    states = pcg64_states(prefix, devices)
    uniforms = first_uniforms(prefix, devices)
    for device, (state, inc), uniform in zip(devices, states, uniforms, strict=True):
        reference = _reference(prefix, int(device))
        held = reference.bit_generator.state["state"]
        assert (state, inc) == (held["state"], held["inc"]), (prefix, device)
        assert uniform == reference.random()  # exactly, not approximately


def test_a_stream_source_continues_as_default_rng_would() -> None:
    source = StreamSource()
    for state, device in zip(pcg64_states((3, 8, 5), np.arange(50)), range(50), strict=True):
        rng, reference = source.generator(state), _reference((3, 8, 5), device)
        for size in (1, 7, 40):
            np.testing.assert_array_equal(rng.permutation(size), reference.permutation(size))
        assert rng.normal() == reference.normal()


def test_refuses_entropy_numpy_would_not_take() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        pcg64_states((-1, 2), np.arange(3))
    with pytest.raises(ValueError, match="2\\*\\*32"):
        pcg64_states((1,), np.array([2**32]))


def test_dropouts_are_the_per_device_coins_they_were() -> None:
    fleet = FleetConfig.model_validate({"devices": 3000, "dropout": 0.3})
    population = Population(fleet, SyntheticFleet(3000, seed=11), seed=11)
    devices = np.arange(3000)
    for server_round in (1, 4):
        coins = np.array([_reference((11, 6, server_round), int(d)).random()
                          for d in devices])
        np.testing.assert_array_equal(population.dropouts(devices, server_round),
                                      coins < 0.3)
        assert population.drops_out(17, server_round) == (coins[17] < 0.3)
    assert not Population(FleetConfig.model_validate({"devices": 5, "dropout": 0.0}),
                          SyntheticFleet(5), seed=0).dropouts(range(5), 1).any()
