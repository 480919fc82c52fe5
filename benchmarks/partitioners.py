"""Flower Datasets' partitioners against devicetune's own, for a 10,000-device fleet.

Decides whether devicetune should split a team's data with `flwr-datasets` (the
ecosystem's names for the usual splits) or keep its own index-array partitions. Both
split the same 600,000 labelled rows (6 classes, 10,000 users) naturally by user and by
a Dirichlet(0.5) draw over labels into 10,000 devices, in one process; the table gives
seconds, the peak memory each adds, and the time to hand out one device's rows.

flwr-datasets is not a devicetune dependency (it pulls in Hugging Face `datasets`,
pandas and their dependencies), so run this where it is installed::

    python3.11 -m venv /tmp/fds && /tmp/fds/bin/pip install flwr-datasets pydantic psutil
    PYTHONPATH=src /tmp/fds/bin/python benchmarks/partitioners.py
"""

from __future__ import annotations

import gc
import json
import threading
import time

import numpy as np
import psutil

ROWS, USERS, CLASSES, DEVICES, FEATURES = 600_000, 10_000, 6, 10_000, 8


class PeakRSS:
    """Peak resident memory above the start, sampled every 5 ms in a thread."""

    def __enter__(self) -> PeakRSS:
        gc.collect()
        self._process = psutil.Process()
        self.start = self._process.memory_info().rss
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)

    @property
    def mib(self) -> float:
        return (self.peak - self.start) / 2**20


def main() -> None:
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner, NaturalIdPartitioner

    from devicetune.data.labeled import LabeledData
    from devicetune.data.sources import DirichletPartition, NaturalPartition

    rng = np.random.default_rng(0)
    x = rng.normal(size=(ROWS, FEATURES)).astype(np.float32)
    y = rng.integers(0, CLASSES, ROWS)
    user = rng.integers(0, USERS, ROWS)
    data = LabeledData(x, y, user, tuple(str(c) for c in range(CLASSES)))
    rows = []

    def measure(name: str, make, get) -> None:
        with PeakRSS() as memory:
            started = time.perf_counter()
            partitioner = make()
            get(partitioner, 0)  # Flower's partitioners compute the split on first use
            split_s = time.perf_counter() - started
            started = time.perf_counter()
            for device in range(1, 101):
                get(partitioner, device)
            per_device_ms = (time.perf_counter() - started) * 10
        rows.append({"split": name, "seconds": round(split_s, 2),
                     "peak_mib": round(memory.mib, 1), "device_ms": round(per_device_ms, 3)})

    def as_hf() -> Dataset:
        return Dataset.from_dict({"x": list(x), "label": y, "user": user})

    def flower_natural():
        partitioner = NaturalIdPartitioner(partition_by="user")
        partitioner.dataset = as_hf()
        return partitioner

    def flower_dirichlet():
        partitioner = DirichletPartitioner(num_partitions=DEVICES, partition_by="label",
                                           alpha=0.5, min_partition_size=0, seed=0)
        partitioner.dataset = as_hf()
        return partitioner

    measure("flwr-datasets NaturalIdPartitioner", flower_natural,
            lambda p, k: p.load_partition(k))
    measure("devicetune NaturalPartition", lambda: NaturalPartition(data, list(range(USERS))),
            lambda p, k: p.device(k))
    measure("flwr-datasets DirichletPartitioner", flower_dirichlet,
            lambda p, k: p.load_partition(k))
    measure("devicetune DirichletPartition", lambda: DirichletPartition(data, DEVICES, 0.5, 0),
            lambda p, k: p.device(k))
    print(f"{'split':38} {'seconds':>8} {'peak MiB':>9} {'ms/device':>10}")
    for row in rows:
        print(f"{row['split']:38} {row['seconds']:8.2f} {row['peak_mib']:9.1f} "
              f"{row['device_ms']:10.3f}")
    print(json.dumps({"benchmark": "partitioners", "rows": ROWS, "devices": DEVICES,
                      "results": rows}))


if __name__ == "__main__":
    main()
