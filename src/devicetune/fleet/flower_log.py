"""Flower's logging, turned down for devicetune's runs (a simulation, a ServerApp)."""

from __future__ import annotations

import logging


def quiet_flower() -> None:
    """Flower logs every sampling and aggregation at INFO, and warns that federated
    evaluation is off (devicetune evaluates itself); a simulation of thousands of rounds
    needs its progress bar, not that. Flower sets its level on import, so this must come
    after importing it."""
    import flwr.common.logger  # noqa: F401

    logging.getLogger("flwr").setLevel(logging.ERROR)
