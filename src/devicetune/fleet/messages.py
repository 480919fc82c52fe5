"""What the server and a device say to each other, as Flower Message records.

A train instruction carries the global weights (``arrays``, named as the artifact's
`weight_names`) and a ``config`` record; a reply carries the device's new weights and a
``metrics`` record whose ``num-examples`` weights it in aggregation. The same encoding
serves the in-process grid, Flower's simulation engine and real SuperNodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
NUM_EXAMPLES = "num-examples"


@dataclass(frozen=True)
class TrainInstructions:
    """How a device trains this round (decoded from the ``config`` record)."""

    server_round: int
    local_epochs: int
    learning_rate: float
    proximal_mu: float = 0.0
    private: bool = False

    def to_config(self) -> dict[str, int | float | bool]:
        return {"local-epochs": self.local_epochs, "learning-rate": self.learning_rate,
                "proximal-mu": self.proximal_mu, "private": self.private}

    @classmethod
    def from_config(cls, config: dict) -> TrainInstructions:
        return cls(
            server_round=int(config.get("server-round", 0)),
            local_epochs=int(config["local-epochs"]),
            learning_rate=float(config["learning-rate"]),
            proximal_mu=float(config.get("proximal-mu", 0.0)),
            private=bool(config.get("private", False)),
        )


def weights_to_record(names: list[str], weights: list[np.ndarray]):
    """An ArrayRecord of the named weights, in order."""
    from flwr.app import Array, ArrayRecord

    return ArrayRecord({n: Array(np.asarray(w, np.float32))
                        for n, w in zip(names, weights, strict=True)})


_LAST_DECODED: list = [None, None]


def record_to_weights(record) -> tuple[list[str], list[np.ndarray]]:
    """Names and arrays (read-only) of an ArrayRecord, in its order.

    A round sends one ArrayRecord object to all its devices and Flower's arrays parse
    their bytes on every ``numpy()``, so the last record decoded is remembered.
    """
    if _LAST_DECODED[0] is record:
        return _LAST_DECODED[1]
    arrays = [array.numpy() for array in record.values()]
    for array in arrays:
        array.setflags(write=False)
    decoded = (list(record.keys()), arrays)
    _LAST_DECODED[0], _LAST_DECODED[1] = record, decoded
    return decoded


def train_reply(request, names: list[str], weights: list[np.ndarray],
                metrics: dict[str, float]):
    """The device's reply to a train instruction."""
    from flwr.app import Message, MetricRecord, RecordDict

    content = RecordDict({ARRAYS: weights_to_record(names, weights),
                          METRICS: MetricRecord(metrics)})
    return Message(content=content, reply_to=request)
