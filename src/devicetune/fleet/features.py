"""A bounded cache of each device's training features.

The backbone is frozen, so a device's features never change: a phone computes them once
and keeps them, and so does the simulation, up to a memory budget (least recently used
devices are forgotten first), so memory stays flat however large the fleet.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable

import numpy as np

DEFAULT_BUDGET_BYTES = 256 * 2**20


class FeatureCache:
    """Per-device ``(features, labels)``, least recently used evicted past the budget."""

    def __init__(self, max_bytes: int = DEFAULT_BUDGET_BYTES) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[Hashable, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def get(self, key: Hashable) -> tuple[np.ndarray, np.ndarray] | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return entry

    def put(self, key: Hashable, features: np.ndarray, labels: np.ndarray) -> None:
        size = features.nbytes + labels.nbytes
        if size > self.max_bytes:
            return
        if key in self._entries:
            old = self._entries.pop(key)
            self.bytes -= old[0].nbytes + old[1].nbytes
        self._entries[key] = (features, labels)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (f, y) = self._entries.popitem(last=False)
            self.bytes -= f.nbytes + y.nbytes

    def fetch(self, key: Hashable, compute: Callable[[], tuple[np.ndarray, np.ndarray]]
              ) -> tuple[np.ndarray, np.ndarray]:
        """The cached entry, or ``compute()`` stored and returned."""
        entry = self.get(key)
        if entry is None:
            entry = compute()
            self.put(key, *entry)
        return entry
