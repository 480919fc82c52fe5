"""Emitting model versions: the global weights of a round become a signed version in the
registry, if they pass the gates.

A version folder holds what an app downloads: ``model.tflite`` and ``Model.mlmodel``
rebuilt with the new weights, ``update.npz`` (the weights alone, for apps that apply
them with ``set_weights`` or a Core ML update), ``manifest.json`` and ``model.sig``.
The first emission also publishes the build itself as version 1, so every version has
its parent in the registry.

Gates, in order: the privacy budget (the caller's `PrivacyGuard`), and quality: global
accuracy may not fall below the parent version's by more than ``emit.max_regression``.
Every decision is a line of ``versions.jsonl`` in the run folder, emitted or not.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from devicetune.artifacts.manifest import (
    MANIFEST_FILE,
    Manifest,
    PrivacyEntry,
    read_manifest,
    sha256_file,
)
from devicetune.config import DevicetuneConfig, to_toml
from devicetune.errors import ConfigError
from devicetune.run_files import VERSIONS_FILE

UPDATE_FILE = "update.npz"


@dataclass(frozen=True)
class EmitOutcome:
    """What happened to one candidate version."""

    version: int
    emitted: bool
    reason: str | None = None


class VersionEmitter:
    """Publishes the global model as new versions of ``config.name``.

    Args:
        config: the run's config; its ``emit`` section says where and how.
        build_dir: the `devicetune build` folder the devices run (version 1).
        run_dir: where ``versions.jsonl`` is written.
        initial_metrics: the build's metrics (global accuracy before any round), the
            baseline the first emitted version is gated against.
    """

    def __init__(self, config: DevicetuneConfig, build_dir: Path, run_dir: Path,
                 initial_metrics: dict[str, Any]) -> None:
        from devicetune.registry import Registry

        emit = config.emit
        if emit.registry is None:
            raise ConfigError("emit.registry: set the registry folder to emit versions")
        if emit.private_key is None:
            raise ConfigError("emit.private_key: versions are signed; create a key pair "
                              "with `devicetune keys generate --out DIR`")
        self.config = config
        self.build_dir = Path(build_dir)
        self.run_dir = Path(run_dir)
        self.registry = Registry(emit.registry, public_key=self._release_public_key())
        self.base = read_manifest(self.build_dir)
        if self.base.quantize == "int8_full":
            # A rebuild would calibrate again, on rows the emitter does not have, and
            # ship another backbone; a version must change the head only.
            raise ConfigError("emit: versions of an export.quantize = \"int8_full\" build "
                              "cannot be rebuilt yet; build with quantize = \"int8\" "
                              "(int8 kernels, float activations) to emit versions")
        self.config_digest = hashlib.sha256(to_toml(config).encode()).hexdigest()
        versions = [r.version for r in self.registry.versions(config.name)] \
            if config.name in self.registry.models() else []
        if not versions:
            self._publish_build(initial_metrics)
            versions = [1]
        self.parent = max(versions)
        self.parent_metrics = self._recorded_metrics(self.parent) or initial_metrics
        self._model: Any = None

    def emit(self, server_round: int, weights: list[np.ndarray], metrics: dict[str, Any],
             privacy: PrivacyEntry | None = None, refused: str | None = None) -> EmitOutcome:
        """Gate, build, sign and publish the next version; record the decision.

        Args:
            refused: a reason decided by the caller (the privacy gate) not to emit.
        """
        version = self.parent + 1
        max_drop = self.config.emit.max_regression
        parent_accuracy = self.parent_metrics.get("accuracy")
        if refused is None and parent_accuracy is not None and \
                metrics["accuracy"] < parent_accuracy - max_drop:
            refused = (f"quality gate: global accuracy {metrics['accuracy']:.4f} is more "
                       f"than emit.max_regression = {max_drop:g} below version "
                       f"{self.parent}'s {parent_accuracy:.4f}")
        if refused is None:
            with tempfile.TemporaryDirectory(prefix="devicetune-version-") as tmp:
                folder = self._assemble(Path(tmp), version, weights, metrics, privacy)
                self.registry.publish(folder)
        self._record(server_round, version, refused is None, refused, metrics)
        if refused is not None:
            return EmitOutcome(version, False, refused)
        self.parent, self.parent_metrics = version, metrics
        return EmitOutcome(version, True)

    # ------------------------------------------------------------------ building

    def _assemble(self, folder: Path, version: int, weights: list[np.ndarray],
                  metrics: dict[str, Any], privacy: PrivacyEntry | None) -> Path:
        """A version folder: rebuilt artifacts, the weights, the manifest, signed."""
        out = folder / "plain"
        out.mkdir()
        assert self.base.tflite is not None
        names = self.base.tflite.weight_names
        np.savez(out / UPDATE_FILE, **dict(zip(names, weights, strict=True)))
        tflite = self._rebuild_tflite(weights)
        (out / self.base.tflite.file).write_bytes(tflite)
        coreml = None
        if self.base.coreml is not None:
            from devicetune.device.coreml_reference import CoreMLReference

            reference = CoreMLReference(self.build_dir / self.base.coreml.file)
            reference.set_weights(dict(zip(names, weights, strict=True)))
            reference.save(out / self.base.coreml.file)
            coreml = self.base.coreml.model_copy(
                update={"sha256": sha256_file(out / self.base.coreml.file)})
        files = {p.name: sha256_file(p) for p in sorted(out.iterdir())}
        manifest = Manifest(
            name=self.config.name, version=version, parent_version=self.parent,
            created_at=datetime.now(UTC).isoformat(), classes=self.base.classes,
            input_shape=self.base.input_shape, files=files,
            tflite=self.base.tflite.model_copy(update={"sha256": files[self.base.tflite.file]}),
            coreml=coreml, metrics={k: float(v) for k, v in _flat(metrics).items()},
            privacy=privacy, training_config_sha256=self.config_digest,
            quantize=self.base.quantize,
        )
        manifest.write(out)
        return self._sign_and_encrypt(out, folder)

    def _rebuild_tflite(self, weights: list[np.ndarray]) -> bytes:
        """The Android artifact with ``weights`` baked in, checked bit for bit."""
        from devicetune.device.litert import LiteRTModel
        from devicetune.export.quantize import quantize_tflite, quantized_model
        from devicetune.export.tflite import convert_program

        if self._model is None:
            self._model = _trainable_from_build(self.config, self.build_dir, self.base)
        # The backbone is quantized as the build quantized it (the same codes, from the
        # same float32 backbone.keras); only the float32 head changes between versions.
        mode = self.base.quantize
        program = quantized_model(self._model.with_weights(weights), mode).program(
            self.config.export)
        flatbuffer = quantize_tflite(convert_program(program), mode)
        assert self.base.tflite is not None
        stored = LiteRTModel(flatbuffer).get_weights()
        for name, expected in zip(self.base.tflite.weight_names, weights, strict=True):
            if not np.array_equal(stored[name], np.asarray(expected, np.float32)):
                raise RuntimeError(f"the rebuilt TFLite model holds other {name} weights")
        return flatbuffer

    def _sign_and_encrypt(self, plain: Path, folder: Path) -> Path:
        from devicetune.artifacts.encryption import encrypt_folder
        from devicetune.artifacts.keys import load_public_key
        from devicetune.artifacts.signing import sign_folder

        emit = self.config.emit
        assert emit.private_key is not None
        if emit.encrypt_for is None:
            sign_folder(plain, emit.private_key)
            return plain
        sealed = folder / "sealed"
        encrypt_folder(plain, sealed, [load_public_key(emit.encrypt_for)])
        sign_folder(sealed, emit.private_key)
        return sealed

    def _release_public_key(self) -> Path:
        """The signing key's public half, written into the run folder, so the registry
        verifies each version as it is published and records it as signed."""
        from devicetune.artifacts.keys import load_private_key, public_pem
        from devicetune.atomic import atomic_write_bytes

        assert self.config.emit.private_key is not None
        key = load_private_key(self.config.emit.private_key)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        return atomic_write_bytes(self.run_dir / "release_public_key.pem",
                                  public_pem(key.public_key()))

    def _publish_build(self, metrics: dict[str, Any]) -> None:
        """Version 1: the build the fleet starts from, signed."""
        from devicetune.artifacts.signing import SIGNATURE_FILE

        with tempfile.TemporaryDirectory(prefix="devicetune-version-") as tmp:
            plain = Path(tmp) / "build"
            plain.mkdir()
            for name in [MANIFEST_FILE, *self.base.files]:
                shutil.copyfile(self.build_dir / name, plain / name)
            (plain / SIGNATURE_FILE).unlink(missing_ok=True)
            self.registry.publish(self._sign_and_encrypt(plain, Path(tmp)))
        self._record(0, 1, True, None, metrics, parent=None)

    # ------------------------------------------------------------------ records

    def _record(self, server_round: int, version: int, emitted: bool, reason: str | None,
                metrics: dict[str, Any], parent: int | None | str = "current") -> None:
        row = {"version": version, "parent_version": self.parent if parent == "current"
               else parent, "round": server_round, "emitted": emitted, "reason": reason,
               "metrics": metrics,
               "parent_metrics": self.parent_metrics if parent == "current" else None}
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with (self.run_dir / VERSIONS_FILE).open("a") as handle:
            handle.write(json.dumps(row) + "\n")

    def _recorded_metrics(self, version: int) -> dict[str, Any] | None:
        path = self.run_dir / VERSIONS_FILE
        if not path.exists():
            return None
        for line in reversed(path.read_text().splitlines()):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("version") == version and row.get("emitted"):
                return row.get("metrics")
        return None


def _trainable_from_build(config: DevicetuneConfig, build_dir: Path, base: Manifest) -> Any:
    """The TrainableModel of a build, from its saved backbone (no pretraining again)."""
    import keras

    from devicetune.device.litert import LiteRTModel
    from devicetune.model.backbone import DenseParams, split_trainable
    from devicetune.model.trainable import TrainableModel

    assert config.model is not None and base.tflite is not None
    backbone = keras.saving.load_model(build_dir / "backbone.keras", compile=False)
    feature_model, _ = split_trainable(backbone, config.model.backbone.trainable_dense_layers)
    # The build's own weights give the layers' shapes; `with_weights` replaces them.
    start = LiteRTModel(build_dir / base.tflite.file).get_weights()
    names = base.tflite.weight_names
    layers = [DenseParams(start[k], start[b], activation)
              for k, b, activation in zip(names[0::2], names[1::2],
                                          base.tflite.head_activations, strict=True)]
    return TrainableModel(spec=config.model, backbone=backbone, feature_model=feature_model,
                          layers=layers, sample=None)


def _flat(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """``{"by_platform": {"ios": 0.9}}`` -> ``{"by_platform.ios": 0.9}`` (numbers only)."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and value is not None:
            flat[f"{prefix}{key}"] = float(value)
    return flat
