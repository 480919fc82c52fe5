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
    class_mask: bool = False  # restrict the softmax to the classes the device holds

    def to_config(self) -> dict[str, int | float | bool]:
        return {"local-epochs": self.local_epochs, "learning-rate": self.learning_rate,
                "proximal-mu": self.proximal_mu, "private": self.private,
                "class-mask": self.class_mask}

    @classmethod
    def from_config(cls, config: dict) -> TrainInstructions:
        return cls(
            server_round=int(config.get("server-round", 0)),
            local_epochs=int(config["local-epochs"]),
            learning_rate=float(config["learning-rate"]),
            proximal_mu=float(config.get("proximal-mu", 0.0)),
            private=bool(config.get("private", False)),
            class_mask=bool(config.get("class-mask", False)),
        )


def weights_to_record(names: list[str], weights: list[np.ndarray]):
    """An ArrayRecord of the named weights, in order, whose arrays stay resident."""
    from flwr.app import ArrayRecord

    record = ArrayRecord()  # filled item by item: its dict constructor copies arrays
    for name, weight in zip(names, weights, strict=True):
        record[name] = resident_array(np.asarray(weight, np.float32))
    return record


def resident_array(ndarray: np.ndarray):
    """A Flower ``Array`` that keeps its ndarray (see `_resident_array_class`)."""
    return _resident_array_class()(ndarray)


_RESIDENT: list[type] = []


def _resident_array_class() -> type:
    """``ResidentArray``: a `flwr.app.Array` holding the ndarray it was made from.

    Flower's Array stores ``.npy`` bytes and parses them on every ``numpy()``; in one
    process a round's replies are read by validation, by the strategy's
    ``aggregate_train`` and by DP clipping, so that parse dominated once training was
    batched. This Array answers ``numpy()`` with a copy of the array it holds, and
    makes the bytes only when something asks for ``data`` (a message leaving the
    process: Flower's Simulation Engine, a SuperLink), so what Flower sends is the same.
    Made on first use: flwr is a heavy import.
    """
    if _RESIDENT:
        return _RESIDENT[0]
    from io import BytesIO

    from flwr.app import Array
    from flwr.common.constant import SType

    class ResidentArray(Array):
        def __init__(self, ndarray: np.ndarray) -> None:
            array = np.array(ndarray, copy=True, order="C")
            array.setflags(write=False)
            # Straight into __dict__: Flower's __setattr__ bookkeeping (a dirty flag,
            # cached ids) costs microseconds per attribute, for a fresh object.
            self.__dict__.update(_resident=array, dtype=str(array.dtype),
                                 shape=tuple(map(int, array.shape)), stype=SType.NUMPY,
                                 _is_dirty=True)

        @property  # type: ignore[override]
        def data(self) -> bytes:
            if "_data" not in self.__dict__:
                buffer = BytesIO()
                np.save(buffer, self.__dict__["_resident"], allow_pickle=False)
                self.__dict__["_data"] = buffer.getvalue()
            return self.__dict__["_data"]

        @data.setter
        def data(self, value: bytes) -> None:  # Flower inflating bytes into it
            self.__dict__["_data"] = value
            self.__dict__.pop("_resident", None)

        def numpy(self) -> np.ndarray:
            resident = self.__dict__.get("_resident")
            return super().numpy() if resident is None else resident.copy()

        def resident(self) -> np.ndarray | None:
            """The held array itself (read-only), without a copy."""
            return self.__dict__.get("_resident")

        def __reduce_ex__(self, protocol):  # pickled (Ray) as the array it holds
            held = self.__dict__.get("_resident")
            return (resident_array, (self.numpy() if held is None else held,))

    # Deflated under Flower's own type name, so the far side inflates a plain Array.
    ResidentArray.__qualname__ = "Array"
    _RESIDENT.append(ResidentArray)
    return ResidentArray


_LAST_DECODED: list = [None, None]


def record_to_weights(record) -> tuple[list[str], list[np.ndarray]]:
    """Names and arrays (read-only) of an ArrayRecord, in its order.

    A round sends one ArrayRecord object to all its devices and Flower's arrays parse
    their bytes on every ``numpy()``, so the last record decoded is remembered; a
    resident array is read without a parse or a copy.
    """
    if _LAST_DECODED[0] is record:
        return _LAST_DECODED[1]
    arrays = [_read_only(array) for array in record.values()]
    decoded = (list(record.keys()), arrays)
    _LAST_DECODED[0], _LAST_DECODED[1] = record, decoded
    return decoded


def _read_only(array) -> np.ndarray:
    held = array.resident() if hasattr(array, "resident") else None
    if held is not None:
        return held
    parsed = array.numpy()
    parsed.setflags(write=False)
    return parsed


def train_reply(request, names: list[str], weights: list[np.ndarray],
                metrics: dict[str, float]):
    """The device's reply to a train instruction."""
    from flwr.app import Message, MetricRecord, RecordDict

    content = RecordDict({ARRAYS: weights_to_record(names, weights),
                          METRICS: MetricRecord(metrics)})
    return Message(content=content, reply_to=request)
