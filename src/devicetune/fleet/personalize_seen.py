"""Personalization that cannot harm the classes a device has not seen, by structure.

A device's past often lacks classes its future holds (people do one activity for a
while, then another). Fine-tuning on such a past pushes the model away from the missing
classes, and validation on the past cannot see the damage. So the personal model is
only allowed to *re-rank among the classes the device has seen*, and only where the
global model already predicts one of them:

- where the global model's top class is one the past lacks, the global output is kept
  whole (the prediction cannot move to or from an unseen class there);
- elsewhere the probability mass the global model puts on the seen classes is
  redistributed among them by a blend of the global and personal distributions over
  those classes, ``(1 - w) * global + w * personal``; every unseen class keeps its
  global probability.

Every output of an unseen class is therefore the global model's, and a future example
of an unseen class is predicted exactly as the global model predicts it. What remains
to decide, the epochs and the blend weight ``w``, concerns seen classes only, and there
the past *can* judge: both are chosen by blocked cross-validation on the local data,
with ``w = 0`` (the global model) competing, and kept only with a margin (the gate).

An app does it with the shipped signatures: it keeps the global and the personal
weights (``get_weights``), runs ``infer`` with each (``set_weights`` between) and
combines the two probability vectors with the rule above. The simulator computes the
same head outputs from the features in numpy (`head_probabilities`, tested equal to the
artifact's ``infer``).

References:
    Li, Sahu, Talwalkar, Smith, "Federated Optimization in Heterogeneous Networks"
    (FedProx, 2020) and Li & Zhan, "FedRS: Federated Learning with Restricted Softmax
    for Label Distribution Non-IID Data" (KDD 2021): a device's update should only
    speak for the classes it has; here the same restriction is applied at inference.
    Wortsman et al., "Robust fine-tuning of zero-shot models" (CVPR 2022): ensembling
    the fine-tuned and the original model guards against forgetting.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BLENDS = (0.25, 0.5, 0.75, 1.0)  # the output weights cross-validation tries (and 0)


AUTO_SLOPE = 0.5


def blend_from_error(error: float) -> float:
    """The personal output's weight from the global model's error on the device's own
    past: one half where the global model is right on every past example, growing to 1
    as it fails (a device the global model serves badly trusts its own data more)."""
    return float(min(1.0, 0.5 + AUTO_SLOPE * error))


def head_probabilities(
    features: np.ndarray, weights: Sequence[np.ndarray], activations: Sequence[str]
) -> np.ndarray:
    """The head's softmax output for ``features`` (what ``infer`` returns for the
    examples they came from), ``(n, classes)``."""
    hidden = np.asarray(features, np.float64)
    for kernel, bias, activation in zip(weights[0::2], weights[1::2], activations, strict=True):
        hidden = hidden @ kernel + bias
        if activation == "relu":
            hidden = np.maximum(hidden, 0.0)
    hidden -= hidden.max(axis=1, keepdims=True)
    exp = np.exp(hidden)
    return exp / exp.sum(axis=1, keepdims=True)


def combine(
    p_global: np.ndarray, p_personal: np.ndarray, seen: np.ndarray, blend: float
) -> np.ndarray:
    """The personalised output: see the module doc. Rows whose global top class is
    unseen, and every unseen class's column, are the global output unchanged."""
    out = p_global.copy()
    if blend == 0.0 or not len(seen):
        return out
    active = np.isin(p_global.argmax(axis=1), seen)
    g = p_global[np.ix_(active, seen)]
    p = p_personal[np.ix_(active, seen)]
    mass = g.sum(axis=1, keepdims=True)
    mix = (1 - blend) * g / np.maximum(mass, 1e-30) + blend * p / np.maximum(
        p.sum(axis=1, keepdims=True), 1e-30
    )
    out[np.ix_(active, seen)] = mass * mix
    return out


def predict(
    p_global: np.ndarray, p_personal: np.ndarray, seen: np.ndarray, blend: float
) -> np.ndarray:
    """The class an app shows: the global top class where it is unseen, else the best
    seen class of the combined output."""
    top = p_global.argmax(axis=1)
    if blend == 0.0 or not len(seen):
        return top
    combined = combine(p_global, p_personal, seen, blend)
    best_seen = seen[combined[:, seen].argmax(axis=1)]
    return np.where(np.isin(top, seen), best_seen, top)


def knn_probabilities(
    fit_x: np.ndarray, fit_y: np.ndarray, query_x: np.ndarray, classes: int, k: int
) -> np.ndarray:
    """The class shares among each query's ``k`` nearest past examples by cosine
    similarity of the embeddings (``embed``'s output), ``(n, classes)``: the local
    memory of kNN-Per (Marfoq et al., "Personalized Federated Learning through Local
    Memorization", ICML 2022), here only ever re-ranking seen classes."""

    def unit(a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, np.float64).reshape(len(a), -1)
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    votes = np.zeros((len(query_x), classes))
    if not len(fit_x) or not len(query_x):
        return votes
    k = min(k, len(fit_x))
    similarity = unit(query_x) @ unit(fit_x).T
    nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    np.add.at(votes, (np.arange(len(query_x))[:, None], fit_y[nearest]), 1.0)
    return votes / k


class SeenRerankSearch:
    """Cross-validated accuracy of every (epochs, blend) pair, accumulated fold by fold.

    ``correct[e, b]`` counts validation examples predicted right after ``e`` epochs with
    ``blends[b]`` (``blends[0] = 0``); ``e = 0`` (or blend 0) is the global model.
    """

    def __init__(self, epochs: int, blends: Sequence[float] = BLENDS) -> None:
        self.blends = (0.0, *(b for b in blends if b > 0))
        self.correct = np.zeros((epochs + 1, len(self.blends)))
        self.total = 0

    def record(
        self,
        epoch: int,
        p_global: np.ndarray,
        p_personal: np.ndarray,
        labels: np.ndarray,
        seen: np.ndarray,
    ) -> None:
        for b, blend in enumerate(self.blends):
            hits = predict(p_global, p_personal, seen, blend) == labels
            self.correct[epoch, b] += hits.sum()
        if epoch == 0:
            self.total += len(labels)

    def best(self, gate: bool, margin: float, choose_epochs: bool = True) -> tuple[int, float]:
        """``(epochs, blend)`` with the most correct (then fewer epochs, smaller blend),
        over every epoch count or (``choose_epochs`` False) the last only; ``(0, 0.0)``
        when the gate finds no gain of ``margin`` binomial standard errors over the
        global model."""
        baseline = self.correct[0, 0]
        last = len(self.correct) - 1
        counts = range(1, last + 1) if choose_epochs else range(last, last + 1)
        ranking = [(self.correct[e, b], -e, -b) for e in counts for b in range(1, len(self.blends))]
        if not ranking:
            return 0, 0.0
        score, neg_e, neg_b = max(ranking)
        if gate:
            n = max(self.total, 1)
            p = min(max(baseline / n, 1.0 / n), 1.0 - 1.0 / n)
            if score - baseline <= margin * np.sqrt(n * p * (1 - p)):
                return 0, 0.0
        return -neg_e, self.blends[-neg_b]
