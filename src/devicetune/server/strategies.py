"""Flower strategies, configured from `ServerConfig` (configured, never rewritten).

References:
    McMahan et al., "Communication-Efficient Learning of Deep Networks from
    Decentralized Data" (FedAvg), AISTATS 2017.
    Reddi et al., "Adaptive Federated Optimization" (FedAdam), ICLR 2021.
    Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal Statistical
    Rates" (coordinate-wise median, trimmed mean), ICML 2018.
    Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant Gradient
    Descent" (Krum), NeurIPS 2017.
    Li et al., "Federated Optimization in Heterogeneous Networks" (FedProx), MLSys 2020.
    Hsu et al., "Measuring the Effects of Non-Identical Data Distribution for Federated
    Visual Classification" (FedAvgM, server momentum), arXiv:1909.06335, 2019.
"""

from __future__ import annotations

from typing import Any

from devicetune.config import ServerConfig

# Flower samples max(int(connected * fraction_train), min_train_nodes) nodes; a tiny
# positive fraction (0 disables training) makes min_train_nodes the sample size.
_FRACTION_FOR_FIXED_SAMPLE = 1e-9


def make_strategy(server: ServerConfig) -> Any:
    """The `flwr.serverapp.strategy` object a `ServerConfig` names.

    Sampling is set to ``devices_per_round`` devices per round; federated evaluation is
    off (devicetune evaluates the global model itself, on held-out device data).
    """
    from flwr.serverapp import strategy as flwr_strategy

    common: dict[str, Any] = dict(
        fraction_train=_FRACTION_FOR_FIXED_SAMPLE, fraction_evaluate=0.0,
        min_train_nodes=server.devices_per_round, min_evaluate_nodes=0,
        min_available_nodes=server.devices_per_round,
    )
    if server.strategy == "fedavg":
        if server.proximal_mu > 0:
            return flwr_strategy.FedProx(**common, proximal_mu=server.proximal_mu)
        return flwr_strategy.FedAvg(**common)
    if server.strategy == "fedavgm":
        return flwr_strategy.FedAvgM(**common, server_learning_rate=server.server_learning_rate,
                                     server_momentum=server.server_momentum)
    if server.strategy == "fedadam":
        return flwr_strategy.FedAdam(**common, eta=server.server_learning_rate)
    if server.strategy == "fedmedian":
        return flwr_strategy.FedMedian(**common)
    if server.strategy == "fedtrimmedavg":
        return flwr_strategy.FedTrimmedAvg(**common, beta=server.trimmed_fraction)
    if server.strategy == "krum":
        return flwr_strategy.Krum(**common, num_malicious_nodes=server.krum_byzantine)
    raise AssertionError(f"unreachable: strategy {server.strategy!r}")


def set_sample_size(strategy: Any, size: int) -> None:
    """Sample ``size`` devices in the next round (fewer may be online than asked for;
    Flower would otherwise wait for them to connect)."""
    inner = getattr(strategy, "inner", strategy)  # through a DP wrapper
    inner.min_train_nodes = size
    inner.min_available_nodes = size
