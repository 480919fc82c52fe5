"""The class mask of a restricted softmax (FedRS): which classes a device may push.

A device's past often holds only some of the classes. Trained with a plain softmax, it
pushes every absent class's logit down, and a federation of such devices forgets the
classes each lacks. FedRS restricts each device's softmax to the classes it holds: the
absent logits are shifted by `ABSENT_CLASS_LOGIT` (their probabilities become exactly
0), so their weights get no gradient. Light on purpose (numpy only): the TensorFlow
step, the batched numpy step and the Core ML reference all use it.

References:
    Li & Zhan, "FedRS: Federated Learning with Restricted Softmax for Label Distribution
    Non-IID Data", KDD 2021.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# exp(-1e4 + anything a head computes) is 0 in float32 and float64 alike: an absent
# class's probability is exactly 0 in TensorFlow, LiteRT and the Core ML reference.
ABSENT_CLASS_LOGIT = -1.0e4


def class_logit_offset(class_mask: Any) -> Any:
    """``0`` for a class the device holds, `ABSENT_CLASS_LOGIT` for one it lacks (on
    TensorFlow tensors and numpy arrays alike)."""
    return (1.0 - class_mask) * ABSENT_CLASS_LOGIT


def present_classes(labels: np.ndarray, classes: int) -> np.ndarray:
    """The mask a device computes from its own labels: 1.0 for each class it holds."""
    mask = np.zeros(classes, np.float32)
    mask[np.asarray(labels, np.int64)] = 1.0
    return mask
