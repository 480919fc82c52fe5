"""Small model folders for the artifact and registry tests: real bytes, a real manifest."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from devicetune.artifacts.manifest import Manifest


def write_model_folder(folder: Path, *, name: str = "har", version: int = 1,
                       size: int = 4096, seed: int = 0) -> Manifest:
    """Write a folder with two payload files of random bytes and their manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = hashlib.sha256(f"{name}:{version}:{seed}".encode()).digest()
    payloads = {
        "model.tflite": rng + os.urandom(size),
        "Model.mlmodel": rng[::-1] + os.urandom(size // 2),
        "update.npz": os.urandom(128),
    }
    for file, data in payloads.items():
        (folder / file).write_bytes(data)
    manifest = Manifest(
        name=name, version=version, parent_version=version - 1 or None,
        created_at="2025-01-01T00:00:00Z", classes=["walk", "run"], input_shape=[128, 9],
        files={f: hashlib.sha256(d).hexdigest() for f, d in payloads.items()},
        metrics={"accuracy": 0.9},
    )
    manifest.write(folder)
    return manifest
