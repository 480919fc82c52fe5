"""Stacked device updates: validated like single replies, aggregated like them."""

from __future__ import annotations

import numpy as np

from devicetune.fleet.grid import _become_the_server_app
from devicetune.fleet.messages import NUM_EXAMPLES, record_to_weights, weights_to_record
from devicetune.fleet.round_updates import RoundUpdates, aggregates_by_weighted_mean
from devicetune.server.validation import update_problem

NAMES = ["dense0_kernel", "dense0_bias"]


def _requests(count: int) -> list:
    from flwr.app import ConfigRecord, Message, RecordDict

    _become_the_server_app()
    content = RecordDict({"arrays": weights_to_record(NAMES, _global()),
                          "config": ConfigRecord({"server-round": 1})})
    return [Message(content=content, dst_node_id=1000 + k, message_type="train",
                    group_id="1") for k in range(count)]


def _global() -> list[np.ndarray]:
    return [np.zeros((4, 3), np.float32), np.zeros(3, np.float32)]


def _updates(weights: list[np.ndarray], shards: list[int]) -> RoundUpdates:
    count = len(weights[0])
    return RoundUpdates(NAMES, weights, {
        NUM_EXAMPLES: np.arange(1, count + 1, dtype=np.float64) * 10,
        "train-loss": np.linspace(0.5, 1.0, count),
        "device-id": np.arange(count, dtype=np.float64)}, _requests(count), shards)


def test_stacked_validation_finds_what_a_single_reply_check_finds() -> None:
    rng = np.random.default_rng(0)
    kernels = rng.normal(0, 0.1, (4, 4, 3)).astype(np.float32)
    biases = rng.normal(0, 0.1, (4, 3)).astype(np.float32)
    kernels[1, 2, 0] = np.nan
    biases[3] = 50.0  # norm about 87
    updates = _updates([kernels, biases], [4])
    problems = updates.problems(NAMES, _global(), max_update_norm=10.0)
    expected = [update_problem(NAMES, [kernels[i], biases[i]], NAMES, _global(), 10.0)
                for i in range(4)]
    assert [p is None for p in problems] == [True, False, True, False]
    assert [p is None for p in expected] == [p is None for p in problems]
    assert "NaN" in problems[1] and "norm" in problems[3]
    kept = updates.select(np.array([p is None for p in problems]))
    assert kept.devices == 2 and kept.shards == [2]
    np.testing.assert_array_equal(kept.metrics["device-id"], [0, 2])


def test_shard_means_aggregate_to_the_mean_of_every_device() -> None:
    """FedAvg given one weighted-mean message per shard returns what it returns given
    one message per device."""
    from flwr.serverapp.strategy import FedAvg, FedMedian

    rng = np.random.default_rng(1)
    weights = [rng.normal(size=(5, 4, 3)).astype(np.float32),
               rng.normal(size=(5, 3)).astype(np.float32)]
    strategy = FedAvg()
    assert aggregates_by_weighted_mean(strategy)
    assert not aggregates_by_weighted_mean(FedMedian())
    per_device = RoundUpdates.concatenate([_updates([w[:2] for w in weights], [2]),
                                           _updates([w[2:] for w in weights], [3])])
    per_device.metrics[NUM_EXAMPLES] = np.array([10.0, 20.0, 10.0, 20.0, 30.0])
    assert per_device.shards == [2, 5]
    by_shard, _ = strategy.aggregate_train(1, per_device.shard_messages())
    by_device, _ = strategy.aggregate_train(1, per_device.device_messages())
    for ours, theirs in zip(record_to_weights(by_shard)[1], record_to_weights(by_device)[1],
                            strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)
    share = per_device.metrics[NUM_EXAMPLES] / per_device.metrics[NUM_EXAMPLES].sum()
    np.testing.assert_allclose(record_to_weights(by_shard)[1][1],
                               np.tensordot(share, weights[1], axes=1), rtol=1e-6)


def test_resident_arrays_travel_as_flower_arrays() -> None:
    """What leaves the process is byte for byte Flower's own encoding."""
    import pickle

    from flwr.app import Array, ArrayRecord

    weights = [np.arange(12, dtype=np.float32).reshape(4, 3), np.ones(3, np.float32)]
    ours = weights_to_record(NAMES, weights)
    theirs = ArrayRecord({n: Array(w) for n, w in zip(NAMES, weights, strict=True)})
    assert ours.object_id == theirs.object_id
    assert [a.data for a in ours.values()] == [a.data for a in theirs.values()]
    copy = ours["dense0_kernel"].numpy()
    copy[0, 0] = 99.0  # numpy() is the caller's own array, as with Flower's
    np.testing.assert_array_equal(ours["dense0_kernel"].numpy(), weights[0])
    again = pickle.loads(pickle.dumps(ours))
    for name, w in zip(NAMES, weights, strict=True):
        np.testing.assert_array_equal(again[name].numpy(), w)
