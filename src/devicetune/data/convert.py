"""The public originals, turned into the compact ``har.npz`` / ``fsdd.npz`` the loaders read.

The arrays, their names, dtypes and order are those of the team's shared copies (see
``shared/datasets/README.md``), so a downloaded file and a shared one are
interchangeable. Files are written atomically: a reader sees no file or a whole one.
"""

from __future__ import annotations

import io
import re
import wave
from pathlib import Path

import numpy as np

from devicetune.atomic import atomic_write_bytes
from devicetune.data.har import CHANNELS, load_har_uci
from devicetune.errors import DataError

FSDD_SAMPLE_RATE = 8000
FSDD_TEST_REPETITIONS = 5  # the FSDD README: repetitions 0-4 are the official test set
_WAV_NAME = re.compile(r"(\d)_([a-z]+)_(\d+)\.wav")


def har_arrays_from_uci(root: Path) -> dict[str, np.ndarray]:
    """The ``har.npz`` arrays from the original UCI HAR folder: train rows, then test
    rows, in the files' order, so every row is verified to be in its original place."""
    uci = load_har_uci(root)
    if uci.user.size and uci.user.min() < 1:
        raise DataError(f"{root}: subject ids must start at 1, found {uci.user.min()}")
    return {
        "inertial": np.ascontiguousarray(uci.x, dtype=np.float32),
        "label": uci.y.astype(np.int8),
        "subject": uci.user.astype(np.int16),
        "split": uci.split.astype(np.int8),
        "activity_names": np.array(uci.class_names, dtype=str),
        "channel_names": np.array(CHANNELS, dtype=str),
        "row_order_verified": np.ones(len(uci.y), dtype=bool),
    }


def fsdd_arrays_from_recordings(folder: Path) -> dict[str, np.ndarray]:
    """The ``fsdd.npz`` arrays from FSDD's ``recordings/`` folder of WAV files, ordered by
    (speaker name, digit, repetition); the PCM samples are kept unchanged.

    Raises:
        DataError: no recordings, a file named otherwise, or a WAV that is not 8 kHz
            16-bit mono PCM.
    """
    entries = []
    for path in Path(folder).glob("*.wav"):
        match = _WAV_NAME.fullmatch(path.name)
        if match is None:
            raise DataError(f"{path}: not an FSDD recording name "
                            "(expected DIGIT_SPEAKER_INDEX.wav, e.g. 7_jackson_32.wav)")
        digit, speaker, index = int(match[1]), match[2], int(match[3])
        entries.append((speaker, digit, index, path))
    if not entries:
        raise DataError(f"{folder}: no FSDD recordings (*.wav) found")
    entries.sort(key=lambda e: e[:3])
    speakers = sorted({e[0] for e in entries})
    clips = [_read_pcm16_mono(e[3]) for e in entries]
    offsets = np.zeros(len(clips) + 1, dtype=np.int64)
    np.cumsum([len(c) for c in clips], out=offsets[1:])
    index = np.array([e[2] for e in entries])
    if index.max() > np.iinfo(np.int8).max:
        raise DataError(f"{folder}: repetition index {index.max()} does not fit the layout")
    return {
        "audio": np.concatenate(clips).astype(np.int16, copy=False),
        "offsets": offsets,
        "digit": np.array([e[1] for e in entries], dtype=np.int8),
        "user": np.array([speakers.index(e[0]) for e in entries], dtype=np.int8),
        "recording_index": index.astype(np.int8),
        "split": (index < FSDD_TEST_REPETITIONS).astype(np.int8),
        "user_names": np.array(speakers, dtype=str),
        "sample_rate": np.array(FSDD_SAMPLE_RATE, dtype=np.int32),
        "file_names": np.array([e[3].name for e in entries], dtype=str),
    }


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """``np.savez_compressed`` into ``path``, atomically (never a half-written file)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return atomic_write_bytes(path, buffer.getvalue())


def _read_pcm16_mono(path: Path) -> np.ndarray:
    try:
        with wave.open(str(path), "rb") as wav:
            shape = (wav.getnchannels(), wav.getsampwidth(), wav.getframerate(),
                     wav.getcomptype())
            frames = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError) as exc:
        raise DataError(f"{path}: not a readable WAV file ({exc})") from None
    if shape != (1, 2, FSDD_SAMPLE_RATE, "NONE"):
        raise DataError(f"{path}: {shape[0]} channel(s), {8 * shape[1]}-bit, {shape[2]} Hz, "
                        f"{shape[3]}; FSDD recordings are mono 16-bit PCM at 8000 Hz")
    return np.frombuffer(frames, dtype="<i2")
