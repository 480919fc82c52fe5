"""User-level differential privacy at the server: a strategy wrapper and a guard.

`PrivateAggregation` wraps a Flower strategy the way Flower's own DP wrappers do
(sampling and messages stay the strategy's), but aggregates with DP-FedAvg (McMahan et
al. 2018): each device's update clipped, the clipped updates summed, Gaussian noise
added, the sum divided by the *expected* number of devices. Flower's
``DifferentialPrivacyServerSideFixedClipping`` divides by the devices that replied and
weighs them by example counts, whose sensitivity is not ``C / m``; its adaptive variant
counts clipped instead of unclipped updates (Flower 1.42), so the clip norm runs away.
Both gaps are measured in tests/privacy/test_dp_fedavg.py.

`PrivacyGuard` keeps the accountant and the ledger of a run: before a round it asks the
budget gate, after it records the round. Rounds are accounted as Poisson-sampled
Gaussian mechanisms with ``q = devices_per_round / devices``, so while DP is on the
grid samples devices by independent coin flips with that probability.

References:
    McMahan, Ramage, Talwar, Zhang. Learning Differentially Private Recurrent Language
    Models. ICLR 2018.
    Andrew, Thakkar, McMahan, Ramaswamy. Differentially Private Learning with Adaptive
    Clipping. NeurIPS 2021.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from devicetune.config import PrivacyConfig
from devicetune.fleet.messages import ARRAYS, record_to_weights, weights_to_record
from devicetune.privacy.dp_fedavg import AdaptiveClipping, dp_fedavg
from devicetune.privacy.gate import check_round
from devicetune.privacy.ledger import PrivacyLedger


class PrivateAggregation:
    """A Flower strategy whose aggregation is DP-FedAvg (fixed or adaptive clipping).

    Args:
        inner: the configured strategy; it samples and builds messages.
        privacy: the privacy section (mode, noise multiplier, clip norm, quantile).
        expected_devices: devices per round the sampling expects (q * population).
        rng: the noise source (seeded in simulations; the OS's entropy on a server).
    """

    def __init__(self, inner: Any, privacy: PrivacyConfig, expected_devices: float,
                 rng: np.random.Generator) -> None:
        self.inner = inner
        self.privacy = privacy
        self.expected_devices = expected_devices
        self.rng = rng
        self.adaptive = AdaptiveClipping(
            clip_norm=privacy.clip_norm, noise_multiplier=privacy.noise_multiplier,
            expected_devices=expected_devices, target_quantile=privacy.target_quantile,
            learning_rate=privacy.clip_learning_rate,
        ) if privacy.mode == "adaptive" else None
        self._current: list[np.ndarray] | None = None
        self.last: dict[str, float] = {}

    @property
    def clip_norm(self) -> float:
        """The clip norm the next round will use."""
        return self.adaptive.clip_norm if self.adaptive else self.privacy.clip_norm

    def state(self) -> dict[str, float]:
        """What a resumed server needs to continue (the adaptive clip norm)."""
        return {"clip_norm": self.clip_norm}

    def restore(self, state: dict[str, float]) -> None:
        if self.adaptive is not None and "clip_norm" in state:
            self.adaptive.clip_norm = float(state["clip_norm"])

    def configure_train(self, server_round: int, arrays: Any, config: Any,
                        grid: Any) -> Iterable[Any]:
        self._current = [w.astype(np.float64) for w in record_to_weights(arrays)[1]]
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Any]
                        ) -> tuple[Any, Any]:
        from flwr.app import MetricRecord

        replies = list(replies)
        if not replies or self._current is None:
            return None, None
        names = record_to_weights(replies[0].content[ARRAYS])[0]
        updates = [[w - c for w, c in zip(record_to_weights(r.content[ARRAYS])[1],
                                          self._current, strict=True)] for r in replies]
        clip_norm = self.clip_norm
        if self.adaptive is not None:
            result = self.adaptive.aggregate(updates, self.rng)
        else:
            result = dp_fedavg(updates, clip_norm=clip_norm,
                               noise_multiplier=self.privacy.noise_multiplier,
                               expected_devices=self.expected_devices, rng=self.rng)
        new = [(c + u).astype(np.float32) for c, u in zip(self._current, result.update,
                                                          strict=True)]
        self.last = {"clip_norm": clip_norm, "noise_std": result.noise_std,
                     "unclipped_fraction": result.unclipped / len(updates)}
        return weights_to_record(names, new), MetricRecord(dict(self.last))

    def __getattr__(self, name: str) -> Any:
        # Everything else (evaluation, summaries, sampling sizes) is the inner strategy's.
        return getattr(self.inner, name)


class PrivacyGuard:
    """The accountant, the ledger and the budget gate of one run.

    Args:
        privacy: the privacy section.
        sampling_rate: q, the probability that a given device takes part in a round.
        ledger: a ledger to continue (from a resumed server's state), else a new one.
    """

    def __init__(self, privacy: PrivacyConfig, sampling_rate: float,
                 ledger: PrivacyLedger | None = None) -> None:
        self.privacy = privacy
        self.sampling_rate = sampling_rate
        self.ledger = ledger or PrivacyLedger(privacy.delta)
        self.accountant = self.ledger.replay()

    def before_round(self) -> None:
        """Raise `PrivacyBudgetExceeded` if the next round would overspend."""
        check_round(self.privacy, self.accountant, self.sampling_rate)

    def after_round(self, server_round: int, clip_norm: float) -> dict[str, float]:
        """Record a round that released an aggregate; its epsilons for metrics.jsonl."""
        entry = self.ledger.record(
            self.accountant, server_round=server_round,
            noise_multiplier=self.privacy.noise_multiplier, clip_norm=clip_norm,
            sampling_rate=self.sampling_rate, gate_accountant=self.privacy.accountant)
        return {"epsilon_rdp": entry.epsilon_rdp, "epsilon_pld": entry.epsilon_pld,
                "delta": self.privacy.delta}


def private_setup(config: Any, strategy: Any, devices: int, seed: int | None,
                  ledger: PrivacyLedger | None = None) -> tuple[Any, PrivacyGuard | None]:
    """Wrap ``strategy`` for user-level DP when ``config.privacy.mode`` asks for it.

    Args:
        config: the whole config (privacy, server and strategy choice).
        devices: the population size; q = devices_per_round / devices.
        seed: seeds the noise in a simulation; None (a real server) draws it from the
            operating system's entropy.
        ledger: the committed ledger of a resumed run.

    Returns:
        The strategy to use and the guard for the loop (None when DP is off).
    """
    from devicetune.errors import ConfigError

    privacy = config.privacy
    if privacy.mode == "off":
        return strategy, None
    if config.server.strategy != "fedavg":
        raise ConfigError(f"privacy.mode = {privacy.mode!r} aggregates with DP-FedAvg; set "
                          f"server.strategy = 'fedavg' (not {config.server.strategy!r})")
    sampling_rate = min(1.0, config.server.devices_per_round / devices)
    rng = np.random.default_rng(None if seed is None else np.random.SeedSequence([seed, 13]))
    wrapped = PrivateAggregation(strategy, privacy, expected_devices=sampling_rate * devices,
                                 rng=rng)
    return wrapped, PrivacyGuard(privacy, sampling_rate, ledger)
