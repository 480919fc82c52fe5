"""Small model folders for the artifact and registry tests: real bytes, a real manifest."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from devicetune.artifacts.manifest import CoreMLEntry, Manifest, SignatureEntry, TFLiteEntry


def write_model_folder(folder: Path, *, name: str = "har", version: int = 1,
                       size: int = 4096, seed: int = 0, platforms: bool = False) -> Manifest:
    """Write a folder with three payload files of random bytes and their manifest.

    With ``platforms`` the manifest also describes the TFLite and Core ML models.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = hashlib.sha256(f"{name}:{version}:{seed}".encode()).digest()
    payloads = {
        "model.tflite": rng + os.urandom(size),
        "Model.mlmodel": rng[::-1] + os.urandom(size // 2),
        "update.npz": os.urandom(128),
    }
    for file, data in payloads.items():
        (folder / file).write_bytes(data)
    hashes = {f: hashlib.sha256(d).hexdigest() for f, d in payloads.items()}
    tflite = coreml = None
    if platforms:
        tflite = TFLiteEntry(file="model.tflite", sha256=hashes["model.tflite"],
                             signatures={"infer": SignatureEntry(inputs=[], outputs=[])},
                             builtin_ops=[], batch_size=8, weight_names=[],
                             dp_clip_norm=1.0, dp_noise_multiplier=1.0)
        coreml = CoreMLEntry(file="Model.mlmodel", sha256=hashes["Model.mlmodel"],
                             updatable_layers=["dense"], loss="cce", optimizer="sgd",
                             parameters={})
    manifest = Manifest(
        name=name, version=version, parent_version=version - 1 or None,
        created_at="2025-01-01T00:00:00Z", classes=["walk", "run"], input_shape=[128, 9],
        files=hashes, metrics={"accuracy": 0.9}, tflite=tflite, coreml=coreml,
    )
    manifest.write(folder)
    return manifest
