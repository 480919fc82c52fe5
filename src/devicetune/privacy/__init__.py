"""Differential privacy: DP-FedAvg, accounting, the ledger and the budget gate.

The server and the fleet engines use it in this order each round::

    check_round(config, accountant, q)                   # gate.py: refuse to overspend
    result = dp_fedavg(updates, clip_norm=..., ...)      # dp_fedavg.py: clip, sum, noise
    ledger.record(accountant, server_round=r, ...)       # ledger.py: append, then commit
                                                         # ledger.to_dict() with the state
On resume: ``ledger = PrivacyLedger.from_dict(saved); accountant = ledger.replay()``.
"""

from devicetune.privacy.accounting import (
    DEFAULT_PLD_INTERVAL,
    Epsilons,
    RoundAccountant,
    device_epsilon,
    epsilon,
    round_event,
)
from devicetune.privacy.dp_fedavg import (
    AdaptiveClipping,
    DpAggregate,
    adaptive_noise,
    clip_update,
    dp_fedavg,
    next_clip_norm,
    update_norm,
)
from devicetune.privacy.gate import check_emit, check_round
from devicetune.privacy.ledger import LedgerEntry, PrivacyLedger
from devicetune.privacy.planning import noise_for_budget, rounds_for_budget

__all__ = [
    "DEFAULT_PLD_INTERVAL",
    "AdaptiveClipping",
    "DpAggregate",
    "Epsilons",
    "LedgerEntry",
    "PrivacyLedger",
    "RoundAccountant",
    "adaptive_noise",
    "check_emit",
    "check_round",
    "clip_update",
    "device_epsilon",
    "dp_fedavg",
    "epsilon",
    "next_clip_norm",
    "noise_for_budget",
    "round_event",
    "rounds_for_budget",
    "update_norm",
]
