"""Free Spoken Digit Dataset: 3,000 recordings of digits 0-9, split by speaker (6).

The raw clips are kept as recorded; `SpokenDigits.spectrograms` turns them into the
fixed-size log-mel images a `conv2d_small` backbone takes, in recording order.

The file lists each speaker's clips by digit (all 50 zeros, then all ones...). A device's
local data is split in time, the first part training and the rest testing, so that
order would train on digits 0-4 and test on 5-9. The closest thing FSDD has to a time
is the repetition index in each file name, so the examples come per speaker by
repetition: every digit's repetition 0, then every digit's repetition 1, and so on.

References:
    Z. Jackson et al., Free Spoken Digit Dataset, github.com/Jakobovski/free-spoken-digit-dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from devicetune.data.labeled import LabeledData
from devicetune.data.npz import read_npz
from devicetune.errors import DataError

FSDD_FILE = "fsdd.npz"
DIGITS = tuple(str(d) for d in range(10))


@dataclass(frozen=True)
class SpokenDigits:
    """All clips back to back: clip ``i`` is ``audio[offsets[i]:offsets[i + 1]]``."""

    audio: np.ndarray
    offsets: np.ndarray
    digit: np.ndarray
    user: np.ndarray
    user_names: tuple[str, ...]
    split: np.ndarray
    sample_rate: int
    recording_index: np.ndarray  # the repetition, 0-49: the ``_NN`` of the file name

    def __len__(self) -> int:
        return len(self.digit)

    def clip(self, i: int) -> np.ndarray:
        """Waveform ``i`` as float32 in [-1, 1)."""
        return self.audio[self.offsets[i] : self.offsets[i + 1]].astype(np.float32) / 32768.0

    def recording_order(self) -> np.ndarray:
        """Clip indices by speaker, then repetition, then digit (see the module doc)."""
        return np.lexsort((self.digit, self.recording_index, self.user))

    def spectrograms(self, frames: int = 32, bands: int = 32) -> LabeledData:
        """Every clip as a ``(frames, bands, 1)`` log-mel image over its first second,
        rows in `recording_order`."""
        order = self.recording_order()
        x = np.stack([log_mel(self.clip(i), self.sample_rate, frames, bands) for i in order])
        return LabeledData(
            x=x[..., None], y=self.digit[order].astype(np.int64),
            user=self.user[order].astype(np.int64), class_names=DIGITS,
            split=self.split[order].astype(np.int64),
            meta={"user_names": self.user_names, "frames": frames, "bands": bands},
        )


def load_fsdd(data_dir: Path) -> SpokenDigits:
    """Load ``fsdd.npz``: 3,000 clips at 8 kHz, 6 speakers, 10 digits.

    Raises:
        DataError: the file is missing, unreadable, or its arrays do not line up.
    """
    path = Path(data_dir) / FSDD_FILE
    a = read_npz(path, {"audio", "offsets", "digit", "user", "user_names", "split",
                        "sample_rate", "recording_index"}, dataset="fsdd")
    n = len(a["digit"])
    if len(a["offsets"]) != n + 1 or a["offsets"][-1] != len(a["audio"]):
        raise DataError(f"{path}: 'offsets' must have {n + 1} entries ending at the audio "
                        f"length {len(a['audio'])}")
    if any(len(a[name]) != n for name in ("user", "split", "recording_index")):
        raise DataError(f"{path}: 'digit', 'user', 'split' and 'recording_index' must have "
                        "the same length")
    return SpokenDigits(
        audio=a["audio"], offsets=a["offsets"].astype(np.int64), digit=a["digit"],
        user=a["user"], user_names=tuple(str(u) for u in a["user_names"]),
        split=a["split"], sample_rate=int(a["sample_rate"]),
        recording_index=a["recording_index"],
    )


def log_mel(clip: np.ndarray, sample_rate: int, frames: int, bands: int) -> np.ndarray:
    """A ``(frames, bands)`` log-mel spectrogram of the first second, zero-padded."""
    window = 256
    hop = sample_rate // frames
    padded = np.zeros(hop * (frames - 1) + window, dtype=np.float32)
    n = min(len(clip), len(padded))
    padded[:n] = clip[:n]
    idx = np.arange(window)[None, :] + hop * np.arange(frames)[:, None]
    spectrum = np.abs(np.fft.rfft(padded[idx] * np.hanning(window), axis=1)) ** 2
    return np.log(spectrum @ _mel_filters(sample_rate, window, bands) + 1e-6).astype(np.float32)


@cache
def _mel_filters(sample_rate: int, window: int, bands: int) -> np.ndarray:
    """Triangular mel filters, shape ``(window // 2 + 1, bands)``."""
    def to_mel(hz: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    def to_hz(mel: np.ndarray) -> np.ndarray:
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)

    freqs = np.linspace(0.0, sample_rate / 2, window // 2 + 1)
    edges = to_hz(np.linspace(to_mel(np.array(0.0)), to_mel(np.array(sample_rate / 2)),
                              bands + 2))
    lower, center, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None, :] - lower) / (center - lower)
    falling = (upper - freqs[None, :]) / (upper - center)
    return np.maximum(0.0, np.minimum(rising, falling)).T.astype(np.float32)
