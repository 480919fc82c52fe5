"""Several devices' training data at once, generated together when the source can.

`SyntheticFleet.devices_data` renders many users' windows in one pass (each user from
its own seed, so the data is the same as one at a time) and can render only each
user's first windows; other sources are read device by device. The split into past
(train) and future (test) stays `Population`'s.
"""

from __future__ import annotations

from devicetune.data.labeled import LabeledData
from devicetune.fleet.population import Population


def train_data_of(population: Population, device_ids: list[int]) -> list[LabeledData]:
    """``population.local_data(d).train`` of each of ``device_ids``, in order; a source
    that can (`SyntheticFleet`) generates only those first examples, never the future
    a round does not train on (half the work at the default test_fraction)."""
    many = getattr(population.source, "devices_data", None)
    if many is None:
        return [population.local_data(d).train for d in device_ids]
    return many(device_ids, first=population.train_examples)
