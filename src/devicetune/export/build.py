"""`devicetune build`: from a HeadSpec to the folder an app team ships.

Writes ``model.tflite``, ``Model.mlmodel`` (and ``ModelKNN.mlmodel`` if asked),
``manifest.json``, ``parity.json`` and ``backbone.keras`` (the pretrained backbone, kept
so later versions can be rebuilt with new head weights without pretraining again). The
build fails, after writing ``parity.json``, when a parity check fails.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from devicetune.artifacts.manifest import Manifest, TFLiteEntry, sha256_file
from devicetune.config import DevicetuneConfig
from devicetune.data.labeled import LabeledData
from devicetune.errors import ConfigError, ParityError
from devicetune.export.verify import PARITY_FILE, Check, ParityReport

if TYPE_CHECKING:
    from devicetune.export.coreml import CoreMLArtifacts
    from devicetune.model.trainable import TrainableModel

BACKBONE_FILE = "backbone.keras"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BuildResult:
    out_dir: Path
    manifest: Manifest
    parity: ParityReport
    seconds: dict[str, float]


def build(config: DevicetuneConfig, out_dir: Path, data_dir: Path,
          progress: Progress | None = None) -> BuildResult:
    """Build, verify and describe the artifacts for ``config``.

    Raises:
        ConfigError: the model section is missing or does not fit the data.
        ExportError: a layer or op cannot be exported.
        ParityError: an artifact disagrees with TensorFlow (parity.json says where).
    """
    from devicetune.device.litert import LiteRTModel
    from devicetune.export.quantize import quantize_tflite, quantized_model
    from devicetune.export.tflite import (
        convert_program,
        operator_names,
        signature_table,
        write_tflite,
    )
    from devicetune.export.verify import tflite_parity
    from devicetune.model.trainable import build_trainable_model

    config.require("model", command="devicetune build")
    assert config.model is not None
    if config.export.coreml_knn and not config.export.coreml:
        raise ConfigError("export.coreml_knn = true needs export.coreml = true (the kNN "
                          "model ships beside the Core ML classifier)")
    say = progress or (lambda _: None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = round(now - clock, 3)
        clock = now

    pretrain = config.model.backbone.pretrain
    say("building the backbone" + (f" and pretraining it on {pretrain.dataset}"
                                   if pretrain else ""))
    model = build_trainable_model(config.model, config.seed, data_dir)
    model.backbone.save(out_dir / BACKBONE_FILE)
    lap("backbone")

    say("converting to TFLite (built-in ops only)")
    # A quantized build ships (and is checked against) the backbone with its kernels
    # rounded; backbone.keras above stays the float32 original (see export/quantize.py).
    float_model, model = model, quantized_model(model, config.export.quantize)
    program = model.program(config.export)
    flatbuffer = quantize_tflite(convert_program(program, _calibration(model, config)),
                                 config.export.quantize)
    tflite_path = write_tflite(flatbuffer, out_dir)
    lap("tflite")

    say("checking parity: LiteRT against TensorFlow")
    x, y = _parity_examples(model.sample, model.input_shape, len(model.classes), config.seed)
    ops = operator_names(flatbuffer)
    checks = [Check("tflite.builtin_ops_only", 0.0, 0.0, True, f"{len(ops)} built-in ops")]
    lite = LiteRTModel(flatbuffer)
    shipped_weights = lite.get_weights()  # before tflite_parity trains the artifact
    checks += tflite_parity(program, lite, x, y,
                            steps=config.export.parity_steps, seed=config.seed,
                            **_backbone_tolerance(config))
    lap("parity")

    coreml = None
    if config.export.coreml:
        say("converting to Core ML (updatable neural network) and checking its reference "
            "interpreter against TensorFlow")
        coreml, coreml_checks = _build_coreml(model, config, shipped_weights, x, y, out_dir)
        checks += coreml_checks
        lap("coreml")
    report = ParityReport(checks, _drift(float_model, model, config, x, y))

    tflite_entry = TFLiteEntry(
        file=tflite_path.name, sha256=sha256_file(tflite_path),
        signatures=signature_table(flatbuffer), builtin_ops=ops,
        batch_size=config.model.batch_size, weight_names=list(program.names),
        dp_clip_norm=config.export.dp_clip_norm,
        dp_noise_multiplier=config.export.dp_noise_multiplier,
        head_activations=[layer.activation for layer in model.layers],
    )
    report.write(out_dir)
    # Every file of the folder is listed, so the whole release can be signed: the
    # artifacts apps run, the parity evidence, and the backbone later versions build on.
    files = {path.name: sha256_file(path) for path in (
        tflite_path, out_dir / PARITY_FILE, out_dir / BACKBONE_FILE)}
    if coreml is not None:
        files.update(coreml.files)
    manifest = Manifest(
        name=config.name, version=1, created_at=datetime.now(UTC).isoformat(),
        classes=model.classes, input_shape=list(model.input_shape),
        files=files, tflite=tflite_entry, coreml=coreml.entry if coreml else None,
        quantize=config.export.quantize,
    )
    manifest.write(out_dir)
    if not report.passed:
        failed = ", ".join(f"{c.name} (diff {c.max_abs_diff:.3g} > {c.tolerance:.3g})"
                           for c in report.failed())
        raise ParityError(f"parity failed: {failed}; see {out_dir / 'parity.json'}")
    return BuildResult(out_dir, manifest, report, seconds)


def _build_coreml(model: TrainableModel, config: DevicetuneConfig,
                  shipped_weights: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray,
                  out_dir: Path) -> tuple[CoreMLArtifacts, list[Check]]:
    """Write the Core ML model(s) and check them with the reference interpreter against a
    fresh TensorFlow program (the one the TFLite checks used has trained)."""
    from devicetune.export.coreml import build_coreml
    from devicetune.export.coreml_reference import CoreMLReference
    from devicetune.export.verify import coreml_parity, knn_parity

    artifacts = build_coreml(model, config.export, out_dir)
    with tempfile.TemporaryDirectory(prefix="devicetune-coreml-") as scratch:
        checks = coreml_parity(CoreMLReference(artifacts.path), model.program(config.export),
                               shipped_weights, x, y, config.seed, Path(scratch))
    if artifacts.knn_path is not None:
        from devicetune.export.coreml_knn import KNNReference

        rows = np.arange(min(len(x), 64))
        embedding = np.asarray(model.backbone(x[rows], training=False))
        labels = [model.classes[int(i)] for i in y[rows]]
        checks += knn_parity(KNNReference(artifacts.knn_path), embedding, x[rows], labels)
    return artifacts, checks


def _calibration(model: TrainableModel, config: DevicetuneConfig) -> np.ndarray | None:
    """int8_full calibrates the backbone on the rows the parity checks use."""
    if config.export.quantize != "int8_full":
        return None
    return _parity_examples(model.sample, model.input_shape, len(model.classes),
                            config.seed)[0]


def _backbone_tolerance(config: DevicetuneConfig) -> dict[str, object]:
    from devicetune.export.quantize import INT8_ACTIVATION_TOLERANCE

    if config.export.quantize != "int8_full":
        return {}
    return {"backbone_tolerance": INT8_ACTIVATION_TOLERANCE,
            "backbone_note": "int8_full: LiteRT's backbone activations are int8, "
                             "against the int8-kernel float reference"}


def _drift(float_model: TrainableModel, shipped: TrainableModel, config: DevicetuneConfig,
           x: np.ndarray, y: np.ndarray) -> dict[str, float | str] | None:
    """A quantized build's cost against the float32 model, on the parity rows."""
    from devicetune.export.quantize import float_drift

    if config.export.quantize == "none":
        return None
    return float_drift(float_model, shipped, config.export.quantize, x, y,
                       real_rows=float_model.sample is not None)


def _parity_examples(sample: LabeledData | None, input_shape: tuple[int, ...],
                     num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Real examples when the build pretrained on data, else standard normal inputs."""
    if sample is not None:
        return sample.x[:256], sample.y[:256]
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(256, *input_shape)).astype(np.float32)
    return x, rng.integers(0, num_classes, 256)
