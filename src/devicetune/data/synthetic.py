"""The built-in synthetic fleet: sensor-like windows for any number of users.

Every user shares one task (6 activity-like classes, each a mix of oscillations plus a
gravity direction, over 9 channels x 128 steps like a phone's accelerometer and
gyroscope) but has a personal style: how the phone sits (an axis rotation), sensor gain
and offset, tempo, noise, and a personal label mix that arrives in bouts over time, so
the first days of a user's data are skewed. With ``label_shift`` the skew is total: a
user's past holds only some classes and the future brings the others. Each user is
generated from its own seed on demand: 10,000 users stream in the memory of one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from devicetune.data.labeled import LabeledData

CLASSES = ("walk", "upstairs", "downstairs", "sit", "stand", "lie")
STEPS = 128
CHANNELS = 9
SAMPLE_RATE_HZ = 50.0
_COMPONENTS = 3
_RENDER_WINDOWS = 256  # windows rendered per pass (a few MiB of float64)
_COARSE, _FINE = 16, 8  # STEPS = _COARSE * _FINE: the angle-addition split

FirstWindows = Callable[[int, int], int]  # (device_id, windows) -> windows to generate


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
        label_shift: ``(past_classes, future_overlap)``: each user's past (the windows
            before ``past_fraction`` of them) draws only from ``past_classes`` classes,
            chosen per user; each future window is one of those classes with probability
            ``future_overlap``, else one of the other classes. None: no shift.
        past_fraction: where the past ends, as a share of each user's windows (the
            fleet's ``1 - test_fraction``).
    """

    def __init__(
        self,
        devices: int,
        seed: int = 0,
        windows_per_device: int = 60,
        label_alpha: float = 0.7,
        max_rotation_deg: float = 50.0,
        cohort: int = 0,
        label_shift: tuple[int, float] | None = None,
        past_fraction: float = 0.5,
    ) -> None:
        if devices < 1:
            raise ValueError(f"devices must be >= 1, got {devices}")
        if label_shift is not None and not 1 <= label_shift[0] < len(CLASSES):
            from devicetune.errors import ConfigError

            raise ConfigError(f"fleet.data.label_shift.past_classes = {label_shift[0]}: "
                              f"the synthetic task has {len(CLASSES)} classes; use "
                              f"1..{len(CLASSES) - 1} so the future has classes to add")
        self.label_shift = label_shift
        self.past_fraction = past_fraction
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
    def _label_alphas(self) -> np.ndarray:
        return np.full(len(CLASSES), self.label_alpha)

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
        # Called once per user of a round: plain Python where numpy's per-call cost on
        # scalars would dominate (the same draws, in the same order).
        axis = rng.normal(size=3)
        axis /= math.sqrt(axis.dot(axis))
        angle_deg = rng.uniform(0.0, self.max_rotation_deg)
        windows = min(max(round(self.windows_per_device * rng.lognormal(0.0, 0.4)), 8),
                      10 * self.windows_per_device)
        return DeviceStyle(
            rotation=_rotation_matrix(axis, math.radians(angle_deg)),
            rotation_deg=float(angle_deg),
            gain=rng.lognormal(0.0, 0.2, size=CHANNELS),
            offset=rng.normal(0.0, 0.1, size=CHANNELS),
            tempo=float(rng.uniform(0.8, 1.25)),
            noise_std=float(rng.uniform(0.05, 0.2)),
            label_mix=rng.dirichlet(self._label_alphas),
            windows=windows,
        )

    def device(self, device_id: int) -> LabeledData:
        """All windows of one user, in time order."""
        return self.devices_data([device_id])[0]

    def devices_data(self, device_ids: Iterable[int], first: FirstWindows | None = None
                     ) -> list[LabeledData]:
        """All windows of several users (or the ``first`` of each), each in time order,
        generated together."""
        return [data for _, data in self.iter_devices(device_ids, first)]

    def iter_devices(self, device_ids: Iterable[int] | None = None,
                     first: FirstWindows | None = None
                     ) -> Iterator[tuple[int, LabeledData]]:
        """Yield ``(device_id, data)`` in order; only a few hundred windows are held.

        Each user's random draws come from its own generator, in the order a user
        alone would draw them, so a user's data is the same however it is asked for;
        the arithmetic runs once over the windows of several users.

        Args:
            first: ``first(device_id, windows)``: how many of a user's first windows
                (of its ``windows``) to generate, e.g. the past a device trains on.
                They are exactly those windows of the whole user: its noise is its
                generator's last draw and fills window after window, so the rest is
                simply never drawn. None: every window.
        """
        pending: list[_Draws] = []
        windows = 0
        for device_id in range(self.devices) if device_ids is None else device_ids:
            pending.append(self._draw(int(device_id), first))
            windows += len(pending[-1].labels)
            if windows >= _RENDER_WINDOWS:
                yield from self._emit(pending)
                pending, windows = [], 0
        yield from self._emit(pending)

    def _emit(self, draws: list[_Draws]) -> Iterator[tuple[int, LabeledData]]:
        if not draws:
            return
        for draw, x in zip(draws, self._render(draws), strict=True):
            yield draw.device_id, LabeledData(
                x=x, y=draw.labels,
                user=np.full(len(draw.labels), draw.device_id, dtype=np.int64),
                class_names=CLASSES, meta={"source": "synthetic", "seed": self.seed})

    def pooled(self, device_ids: Iterable[int]) -> LabeledData:
        """The windows of several users together (for central pretraining)."""
        parts = [data for _, data in self.iter_devices(device_ids)]
        return LabeledData(
            x=np.concatenate([p.x for p in parts]), y=np.concatenate([p.y for p in parts]),
            user=np.concatenate([p.user for p in parts]), class_names=CLASSES,
            meta={"source": "synthetic", "seed": self.seed},
        )

    def _draw(self, device_id: int, first: FirstWindows | None = None) -> _Draws:
        rng = self._rng(device_id)
        style = self._style(rng)
        if self.label_shift is None:
            labels = _bouts(rng, style.label_mix, style.windows)
        else:
            labels = _shifted_bouts(rng, style.label_mix, style.windows, *self.label_shift,
                                    past_fraction=self.past_fraction)
        n = len(labels)
        # Every window's phase and jitter are drawn (cheap, and the noise comes after
        # them in the generator's stream); only the kept windows are rendered.
        phase = rng.uniform(0, 2 * np.pi, size=(n, _COMPONENTS))
        jitter = rng.normal(size=(n, _COMPONENTS))
        keep = n if first is None else first(device_id, n)
        if not 0 <= keep <= n:
            raise ValueError(f"first({device_id}, {n}) = {keep}: not in 0..{n}")
        return _Draws(device_id, style, labels[:keep], phase[:keep],
                      1.0 + 0.1 * jitter[:keep], rng)

    def _render(self, draws: list[_Draws]) -> list[np.ndarray]:
        """The windows of several users: per-class oscillations mixed into body
        acceleration and gyroscope, gravity added to a total acceleration, each xyz
        triplet rotated by the user's phone orientation, then gain, offset, noise.

        Rotation and gain are linear, so they are folded into each window's mixing
        matrix ``(components, channels)`` and its constant term. The oscillations are
        not evaluated step by step: with step ``t = 8 c + f``, angle addition gives
        ``sin(a_c + b_f) = sin a_c cos b_f + cos a_c sin b_f``, so 16 + 8 sines and
        cosines per component (not 128), and one small matmul per window,
        ``(16, 7) @ (7, 8 * channels)``, gives the mixed waves plus the constant term
        (within ~1e-15 of the direct sines: about one float32 value in 10 million
        rounds the other way).
        """
        world = self._world
        sizes = [len(d.labels) for d in draws]
        n = sum(sizes)
        labels = np.concatenate([d.labels for d in draws])
        user = np.repeat(np.arange(len(draws)), sizes)
        styles = [d.style for d in draws]
        # The noise first, straight into a buffer: it is each user's last draw, and
        # ``normal(0, s)`` is ``s * standard_normal()`` (the same draws, no copies).
        noise = np.empty((n, STEPS, CHANNELS))
        start = 0
        for draw, size in zip(draws, sizes, strict=True):
            part = noise[start:start + size]
            draw.rng.standard_normal(out=part)
            part *= draw.style.noise_std  # while it is still in cache
            start += size
        rotation = np.stack([s.rotation for s in styles])[user]  # (n, 3, 3)
        gain = np.stack([s.gain for s in styles])[user]  # (n, 9)
        offset = np.stack([s.offset for s in styles])[user]
        tempo = np.array([s.tempo for s in styles])[user]
        amplitude = world.amplitude[labels]  # (n, comp, 6): body acc xyz, gyro xyz
        # Rotate each triplet of the mixing matrix: (n, comp, 3) @ R^T per window.
        body = np.matmul(amplitude[..., :3], rotation.transpose(0, 2, 1))
        gyro = np.matmul(amplitude[..., 3:], rotation.transpose(0, 2, 1))
        gravity = np.einsum("nj,nij->ni", world.gravity[labels], rotation)
        # Rows: the mixing matrix for the cosine terms, again for the sine terms, and
        # the constant term (offset, and gravity in the total acceleration).
        mixing = np.empty((n, 2 * _COMPONENTS + 1, CHANNELS))
        mixing[:, :_COMPONENTS] = np.concatenate([body, gyro, body], axis=-1)
        mixing[:, :_COMPONENTS] *= gain[:, None, :]
        mixing[:, _COMPONENTS:-1] = mixing[:, :_COMPONENTS]
        mixing[:, -1, :6] = offset[:, :6]
        mixing[:, -1, 6:] = offset[:, 6:] + gravity * gain[:, 6:]
        phase = np.concatenate([d.phase for d in draws])  # (n, comp)
        jitter = np.concatenate([d.jitter for d in draws])
        step = world.freq_hz[labels] * tempo[:, None] * jitter * (2 * np.pi / SAMPLE_RATE_HZ)
        coarse = phase[:, None, :] + (_FINE * np.arange(_COARSE))[:, None] * step[:, None, :]
        fine = step[:, :, None] * np.arange(_FINE)  # (n, comp, fine)
        left = np.empty((n, _COARSE, 2 * _COMPONENTS + 1))  # (sin a, cos a, 1)
        np.sin(coarse, out=left[..., :_COMPONENTS])
        np.cos(coarse, out=left[..., _COMPONENTS:-1])
        left[..., -1] = 1.0
        trig = np.empty((n, 2 * _COMPONENTS + 1, _FINE))  # (cos b, sin b, 1)
        np.cos(fine, out=trig[:, :_COMPONENTS])
        np.sin(fine, out=trig[:, _COMPONENTS:-1])
        trig[:, -1] = 1.0
        # (n, 7, fine, channels): each row of the mixing matrix times its trig row.
        right = (trig.reshape(-1, _FINE, 1) * mixing.reshape(-1, 1, CHANNELS)).reshape(
            n, 2 * _COMPONENTS + 1, _FINE * CHANNELS)
        x = np.matmul(left, right).reshape(n, STEPS, CHANNELS)
        out = np.empty((n, STEPS, CHANNELS), np.float32)
        np.add(x, noise, out=out)
        return np.split(out, np.cumsum(sizes)[:-1])


@dataclass(frozen=True)
class _Draws:
    """One user's random draws, in the order the user's generator makes them, but for
    its noise: the generator's last draw, made by `SyntheticFleet._render` into the
    output it renders."""

    device_id: int
    style: DeviceStyle
    labels: np.ndarray  # (windows,) of the windows rendered
    phase: np.ndarray  # (windows, components)
    jitter: np.ndarray
    rng: np.random.Generator


def _bouts(rng: np.random.Generator, label_mix: np.ndarray, windows: int) -> np.ndarray:
    """Labels in time order: activities come in bouts of a few consecutive windows."""
    # `rng.choice(k, p=label_mix)` as numpy computes it (one uniform, searched in the
    # normalised cdf) without its per-call validation: the same draws, much cheaper.
    cdf = label_mix.cumsum()
    cdf /= cdf[-1]
    labels: list[int] = []
    while len(labels) < windows:
        activity = int(cdf.searchsorted(rng.random(), side="right"))
        labels.extend([activity] * (1 + int(rng.poisson(4))))
    return np.asarray(labels[:windows], dtype=np.int64)


def _shifted_bouts(rng: np.random.Generator, label_mix: np.ndarray, windows: int,
                   past_classes: int, future_overlap: float, past_fraction: float
                   ) -> np.ndarray:
    """Bouts whose past uses ``past_classes`` classes only and whose future mixes them
    (share ``future_overlap``) with the rest. The cut is the one `Population.local_data`
    makes, so the past a device trains on lacks exactly the other classes."""
    k = len(label_mix)
    past = rng.choice(k, size=past_classes, replace=False)
    in_past = np.isin(np.arange(k), past)
    n_test = min(max(int(round(windows * (1 - past_fraction))), 1), windows - 1)
    cut = windows - n_test
    # The personal mix within each side, so users still differ in what they do most.
    past_mix = np.where(in_past, label_mix + 1e-3, 0.0)
    future_mix = np.where(in_past, 0.0, label_mix + 1e-3)
    future_mix = ((1 - future_overlap) * future_mix / future_mix.sum()
                  + future_overlap * past_mix / past_mix.sum())
    head = _bouts(rng, past_mix, cut)
    tail = _bouts(rng, future_mix, windows - cut)
    return np.concatenate([head, tail])


def _rotation_matrix(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues' formula: rotation by ``angle`` radians about a unit ``axis``."""
    x, y, z = axis.tolist()
    k = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)
