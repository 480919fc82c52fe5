"""Fleet data: the built-in synthetic generator and loaders for real user-split sets."""

from devicetune.data.fsdd import SpokenDigits, load_fsdd
from devicetune.data.har import load_har, load_har_uci
from devicetune.data.labeled import LabeledData
from devicetune.data.sources import (
    DeviceDataSource,
    DirichletPartition,
    NaturalPartition,
    load_dataset,
    open_fleet_data,
)
from devicetune.data.summary import FleetSummary, summarize, summarize_synthetic
from devicetune.data.synthetic import SyntheticFleet

__all__ = [
    "DeviceDataSource",
    "DirichletPartition",
    "FleetSummary",
    "LabeledData",
    "NaturalPartition",
    "SpokenDigits",
    "SyntheticFleet",
    "load_dataset",
    "load_fsdd",
    "load_har",
    "load_har_uci",
    "open_fleet_data",
    "summarize",
    "summarize_synthetic",
]
