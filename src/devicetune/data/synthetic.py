"""The built-in synthetic fleet: sensor-like windows for any number of users.

Every user shares one task (6 activity-like classes, each a mix of oscillations plus a
gravity direction, over 9 channels x 128 steps like a phone's accelerometer and
gyroscope) but has a personal style: how the phone sits (an axis rotation), sensor gain
and offset, tempo, noise, and a personal label mix that arrives in bouts over time, so
the first days of a user's data are skewed. Each user is generated from its own seed on
demand: 10,000 users stream in the memory of one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from devicetune.data.labeled import LabeledData

CLASSES = ("walk", "upstairs", "downstairs", "sit", "stand", "lie")
STEPS = 128
CHANNELS = 9
SAMPLE_RATE_HZ = 50.0
_COMPONENTS = 3


@dataclass(frozen=True)
class DeviceStyle:
    """How one user's data differs from the shared task."""

    rotation: np.ndarray  # (3, 3), applied to each xyz triplet
    rotation_deg: float
    gain: np.ndarray  # (9,)
    offset: np.ndarray  # (9,)
    tempo: float
    noise_std: float
    label_mix: np.ndarray  # (classes,), sums to 1
    windows: int


@dataclass(frozen=True)
class _World:
    """The task every user shares: per-class oscillations and gravity direction."""

    freq_hz: np.ndarray  # (classes, components)
    amplitude: np.ndarray  # (classes, components, 6): body acc xyz, gyro xyz
    gravity: np.ndarray  # (classes, 3), unit vectors


class SyntheticFleet:
    """A deterministic population of synthetic users, generated one at a time.

    Args:
        devices: number of users.
        seed: the same seed gives the same fleet, user by user.
        windows_per_device: median windows per user (each user draws around it).
        label_alpha: Dirichlet concentration of personal label mixes (lower = more skew).
        max_rotation_deg: largest phone-orientation rotation a user can have.
        cohort: which population of users the ids index. Cohorts share the task (the
            same seed gives the same classes) but not their users: cohort 0 is the
            fleet, cohort 1 the central pretraining population a team collects.
    """

    def __init__(
        self,
        devices: int,
        seed: int = 0,
        windows_per_device: int = 60,
        label_alpha: float = 0.7,
        max_rotation_deg: float = 50.0,
        cohort: int = 0,
    ) -> None:
        if devices < 1:
            raise ValueError(f"devices must be >= 1, got {devices}")
        self.devices = devices
        self.seed = seed
        self.windows_per_device = windows_per_device
        self.label_alpha = label_alpha
        self.max_rotation_deg = max_rotation_deg
        self.cohort = cohort

    @property
    def class_names(self) -> tuple[str, ...]:
        return CLASSES

    @property
    def example_shape(self) -> tuple[int, int]:
        return (STEPS, CHANNELS)

    @cached_property
    def _world(self) -> _World:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0]))
        k = len(CLASSES)
        freq = rng.uniform(0.6, 3.0, size=(k, _COMPONENTS))
        amplitude = rng.normal(0.0, 0.25, size=(k, _COMPONENTS, 6))
        # The last three classes are postures: little motion, told apart by gravity.
        amplitude[3:] *= 0.15
        gravity = rng.normal(size=(k, 3))
        gravity[:3] = gravity[0]  # moving classes share the upright posture
        gravity /= np.linalg.norm(gravity, axis=1, keepdims=True)
        return _World(freq_hz=freq, amplitude=amplitude, gravity=gravity)

    def _rng(self, device_id: int) -> np.random.Generator:
        if not 0 <= device_id < self.devices:
            raise IndexError(f"device {device_id} is outside 0..{self.devices - 1}")
        seed = np.random.SeedSequence([self.seed, 1 + self.cohort, device_id])
        return np.random.default_rng(seed)

    def style(self, device_id: int) -> DeviceStyle:
        """The personal style of one user (cheap: no windows are generated)."""
        return self._style(self._rng(device_id))

    def _style(self, rng: np.random.Generator) -> DeviceStyle:
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        angle_deg = rng.uniform(0.0, self.max_rotation_deg)
        windows = int(np.clip(round(self.windows_per_device * rng.lognormal(0.0, 0.4)),
                              8, 10 * self.windows_per_device))
        return DeviceStyle(
            rotation=_rotation_matrix(axis, np.deg2rad(angle_deg)),
            rotation_deg=float(angle_deg),
            gain=rng.lognormal(0.0, 0.2, size=CHANNELS),
            offset=rng.normal(0.0, 0.1, size=CHANNELS),
            tempo=float(rng.uniform(0.8, 1.25)),
            noise_std=float(rng.uniform(0.05, 0.2)),
            label_mix=rng.dirichlet(np.full(len(CLASSES), self.label_alpha)),
            windows=windows,
        )

    def device(self, device_id: int) -> LabeledData:
        """All windows of one user, in time order."""
        rng = self._rng(device_id)
        style = self._style(rng)
        labels = _bouts(rng, style.label_mix, style.windows)
        x = self._render(rng, labels, style)
        return LabeledData(
            x=x, y=labels, user=np.full(len(labels), device_id, dtype=np.int64),
            class_names=CLASSES, meta={"source": "synthetic", "seed": self.seed},
        )

    def iter_devices(self, device_ids: Iterable[int] | None = None
                     ) -> Iterator[tuple[int, LabeledData]]:
        """Yield ``(device_id, data)`` one user at a time; nothing is kept."""
        for device_id in range(self.devices) if device_ids is None else device_ids:
            yield int(device_id), self.device(int(device_id))

    def pooled(self, device_ids: Iterable[int]) -> LabeledData:
        """The windows of several users together (for central pretraining)."""
        parts = [data for _, data in self.iter_devices(device_ids)]
        return LabeledData(
            x=np.concatenate([p.x for p in parts]), y=np.concatenate([p.y for p in parts]),
            user=np.concatenate([p.user for p in parts]), class_names=CLASSES,
            meta={"source": "synthetic", "seed": self.seed},
        )

    def _render(self, rng: np.random.Generator, labels: np.ndarray,
                style: DeviceStyle) -> np.ndarray:
        world = self._world
        n = len(labels)
        t = np.arange(STEPS) / SAMPLE_RATE_HZ
        phase = rng.uniform(0, 2 * np.pi, size=(n, _COMPONENTS, 1))
        jitter = 1.0 + 0.1 * rng.normal(size=(n, _COMPONENTS, 1))
        freq = world.freq_hz[labels][:, :, None] * style.tempo * jitter  # (n, comp, 1)
        waves = np.sin(2 * np.pi * freq * t[None, None, :] + phase)  # (n, comp, steps)
        motion = np.einsum("nct,ncm->ntm", waves, world.amplitude[labels])  # (n, steps, 6)
        body_acc, gyro = motion[..., :3], motion[..., 3:]
        total_acc = body_acc + world.gravity[labels][:, None, :]
        x = np.concatenate([body_acc, gyro, total_acc], axis=-1).reshape(n, STEPS, 3, 3)
        x = (x @ style.rotation.T).reshape(n, STEPS, CHANNELS)
        x = x * style.gain + style.offset
        x += rng.normal(0.0, style.noise_std, size=x.shape)
        return x.astype(np.float32)


def _bouts(rng: np.random.Generator, label_mix: np.ndarray, windows: int) -> np.ndarray:
    """Labels in time order: activities come in bouts of a few consecutive windows."""
    labels: list[int] = []
    while len(labels) < windows:
        activity = int(rng.choice(len(label_mix), p=label_mix))
        labels.extend([activity] * (1 + int(rng.poisson(4))))
    return np.asarray(labels[:windows], dtype=np.int64)


def _rotation_matrix(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues' formula: rotation by ``angle`` radians about a unit ``axis``."""
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)
