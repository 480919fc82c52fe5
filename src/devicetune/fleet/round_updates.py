"""A round's device updates as stacked arrays, not one Flower message per device.

A batched engine trains a round's devices together; `RoundUpdates` keeps what they
return with a leading device axis (weights, example counts, losses), so validation is
one vectorised pass and aggregation by a weighted-mean strategy (FedAvg, FedProx,
FedAdam) takes one message per shard: the shard's example-weighted mean carrying its
total examples as ``num-examples``. A weighted mean of weighted means, weighted by
their totals, is the weighted mean of all devices, so the strategy's result is the one
it would compute from every device's message (the parity tests hold it to 1e-4).
Strategies that need each update (median, trimmed mean, Krum, DP-FedAvg's per-device
clipping) get per-device messages, as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from devicetune.fleet.messages import NUM_EXAMPLES, train_reply

# Strategies whose aggregate_train is Flower's example-weighted mean of the replies
# (FedAvgM and FedAdam apply their server optimisers to that mean).
WEIGHTED_MEAN_STRATEGIES = ("FedAvg", "FedProx", "FedAvgM", "FedAdam")


def aggregates_by_weighted_mean(strategy: object) -> bool:
    """Whether ``strategy`` may be given one weighted-mean message per shard."""
    from flwr.serverapp import strategy as flwr_strategy

    return type(strategy) in tuple(getattr(flwr_strategy, name)
                                   for name in WEIGHTED_MEAN_STRATEGIES)


@dataclass
class RoundUpdates:
    """The devices of a round that replied, in the order they were sampled.

    Args:
        names: the artifact's weight names.
        weights: per tensor, ``(devices, *shape)`` float32.
        metrics: per metric (``num-examples``, ``train-loss``, ``device-seconds``,
            ``device-id``, ``dp-steps``...), one float64 value per device.
        requests: the train message each device answered (for per-device replies).
        shards: where each shard of devices ends (one shard in one process).
    """

    names: list[str]
    weights: list[np.ndarray]
    metrics: dict[str, np.ndarray]
    requests: list
    shards: list[int]

    @property
    def devices(self) -> int:
        return len(self.requests)

    @classmethod
    def concatenate(cls, parts: list[RoundUpdates]) -> RoundUpdates:
        """The parts one after another, each a shard."""
        parts = [p for p in parts if p.devices]
        if not parts:
            return cls([], [], {}, [], [])
        ends = np.cumsum([p.devices for p in parts]).tolist()
        return cls(parts[0].names,
                   [np.concatenate(ws) for ws in zip(*(p.weights for p in parts),
                                                     strict=True)],
                   {k: np.concatenate([p.metrics[k] for p in parts])
                    for k in parts[0].metrics},
                   [r for p in parts for r in p.requests], ends)

    def select(self, keep: np.ndarray) -> RoundUpdates:
        """The devices where ``keep`` is true, shard boundaries kept."""
        keep = np.asarray(keep, bool)
        starts = [0, *self.shards[:-1]]
        kept = [int(keep[s:e].sum()) for s, e in zip(starts, self.shards, strict=True)]
        return RoundUpdates(self.names, [w[keep] for w in self.weights],
                            {k: v[keep] for k, v in self.metrics.items()},
                            [r for r, k in zip(self.requests, keep, strict=True) if k],
                            np.cumsum([k for k in kept if k]).tolist())

    def problems(self, global_names: list[str], global_weights: list[np.ndarray],
                 max_update_norm: float) -> list[str | None]:
        """`devicetune.server.validation.update_problem` for every device at once."""
        if self.names != global_names:
            return [f"weight names {self.names} differ from the model's {global_names}"
                    ] * self.devices
        problems: list[str | None] = [None] * self.devices
        squared = np.zeros(self.devices)
        for name, new, old in zip(self.names, self.weights, global_weights, strict=True):
            if new.shape[1:] != old.shape:
                return [f"{name} has shape {tuple(new.shape[1:])}, expected "
                        f"{tuple(old.shape)}"] * self.devices
            flat = new.reshape(self.devices, -1)
            for i in np.flatnonzero(~np.isfinite(flat).all(axis=1)):
                problems[i] = problems[i] or f"{name} holds NaN or infinite values"
            squared += np.square(flat.astype(np.float64) - old.reshape(-1)).sum(axis=1)
        norms = np.sqrt(squared)
        for i in np.flatnonzero(norms > max_update_norm):
            problems[i] = problems[i] or (f"update norm {norms[i]:.4g} exceeds the bound "
                                          f"{max_update_norm:g}")
        return problems

    def shard_messages(self) -> list:
        """One reply per shard: its example-weighted mean weights, ``num-examples``
        its total (what a weighted-mean strategy combines into the round's mean)."""
        replies, start = [], 0
        examples = self.metrics[NUM_EXAMPLES]
        for end in self.shards:
            share = examples[start:end] / examples[start:end].sum()
            mean = [np.tensordot(share, w[start:end], axes=1).astype(np.float32)
                    for w in self.weights]
            replies.append(train_reply(self.requests[start], self.names, mean,
                                       {NUM_EXAMPLES: float(examples[start:end].sum())}))
            start = end
        return replies

    def device_messages(self) -> list:
        """One reply per device, as a device would send it."""
        return [train_reply(request, self.names, [w[i] for w in self.weights],
                            {k: float(v[i]) for k, v in self.metrics.items()})
                for i, request in enumerate(self.requests)]

