"""Several devices' local data at once, generated together when the source can.

`SyntheticFleet.devices_data` renders many users' windows in one pass (each user from
its own seed, so the data is the same as one at a time); other sources are read device
by device. The split into past (train) and future (test) stays `Population`'s.
"""

from __future__ import annotations

from devicetune.fleet.population import LocalData, Population


def local_data_of(population: Population, device_ids: list[int]) -> list[LocalData]:
    """`Population.local_data` of each of ``device_ids``, in order."""
    many = getattr(population.source, "devices_data", None)
    if many is None:
        return [population.local_data(d) for d in device_ids]
    return [population.local_data(d, data)
            for d, data in zip(device_ids, many(device_ids), strict=True)]
