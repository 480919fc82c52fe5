"""Optimizers compiled into the on-device training step; their state lives in variables.

The update rules are the ones Core ML documents for its updatable models, so one step
means the same thing on Android and iOS:

- SGD with momentum: ``v = momentum * v - lr * g; w = w + v``.
- Adam with bias correction (Kingma & Ba 2015, Algorithm 1):
  ``m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
  w = w - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)``.

References:
    Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tensorflow as tf

from devicetune.config import OptimizerSpec


class InGraphOptimizer(tf.Module):
    """Base: holds the learning rate as a variable so the app can tune it on device."""

    def __init__(self, spec: OptimizerSpec, params: Sequence[tf.Variable]) -> None:
        super().__init__()
        self.learning_rate = tf.Variable(spec.learning_rate, dtype=tf.float32,
                                         name="learning_rate")
        self._shapes = [p.shape for p in params]

    def apply(self, params: Sequence[tf.Variable], grads: Sequence[tf.Tensor]) -> list[Any]:
        raise NotImplementedError

    def reset(self) -> list[Any]:
        """Zero the state (on new global weights a phone starts a fresh optimizer)."""
        raise NotImplementedError


class SGDMomentum(InGraphOptimizer):
    def __init__(self, spec: OptimizerSpec, params: Sequence[tf.Variable]) -> None:
        super().__init__(spec, params)
        self.momentum = float(spec.momentum)
        self.velocity = [tf.Variable(tf.zeros(s), name=f"velocity_{i}")
                         for i, s in enumerate(self._shapes)]

    def apply(self, params: Sequence[tf.Variable], grads: Sequence[tf.Tensor]) -> list[Any]:
        ops = []
        for param, grad, velocity in zip(params, grads, self.velocity, strict=True):
            if self.momentum == 0.0:
                ops.append(param.assign_sub(self.learning_rate * grad))
                continue
            new_velocity = self.momentum * velocity - self.learning_rate * grad
            ops.append(velocity.assign(new_velocity))
            ops.append(param.assign_add(new_velocity))
        return ops

    def reset(self) -> list[Any]:
        return [v.assign(tf.zeros_like(v)) for v in self.velocity]


class Adam(InGraphOptimizer):
    def __init__(self, spec: OptimizerSpec, params: Sequence[tf.Variable]) -> None:
        super().__init__(spec, params)
        self.beta_1, self.beta_2, self.epsilon = spec.beta_1, spec.beta_2, spec.epsilon
        self.step = tf.Variable(0.0, name="adam_step")
        self.m = [tf.Variable(tf.zeros(s), name=f"adam_m_{i}") for i, s in enumerate(self._shapes)]
        self.v = [tf.Variable(tf.zeros(s), name=f"adam_v_{i}") for i, s in enumerate(self._shapes)]

    def apply(self, params: Sequence[tf.Variable], grads: Sequence[tf.Tensor]) -> list[Any]:
        step = self.step + 1.0
        ops: list[Any] = [self.step.assign(step)]
        m_scale = 1.0 / (1.0 - tf.pow(self.beta_1, step))
        v_scale = 1.0 / (1.0 - tf.pow(self.beta_2, step))
        for param, grad, m, v in zip(params, grads, self.m, self.v, strict=True):
            new_m = self.beta_1 * m + (1.0 - self.beta_1) * grad
            new_v = self.beta_2 * v + (1.0 - self.beta_2) * tf.square(grad)
            ops.append(m.assign(new_m))
            ops.append(v.assign(new_v))
            update = (new_m * m_scale) / (tf.sqrt(new_v * v_scale) + self.epsilon)
            ops.append(param.assign_sub(self.learning_rate * update))
        return ops

    def reset(self) -> list[Any]:
        ops: list[Any] = [self.step.assign(0.0)]
        ops += [m.assign(tf.zeros_like(m)) for m in self.m]
        ops += [v.assign(tf.zeros_like(v)) for v in self.v]
        return ops


def make_optimizer(spec: OptimizerSpec, params: Sequence[tf.Variable]) -> InGraphOptimizer:
    """The optimizer a `HeadSpec` names."""
    return Adam(spec, params) if spec.name == "adam" else SGDMomentum(spec, params)
