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
from devicetune.data.sources import FleetInput
from devicetune.errors import ConfigError, ParityError
from devicetune.export.verify import PARITY_FILE, Check, ParityReport

if TYPE_CHECKING:
    from devicetune.export.coreml import CoreMLArtifacts
    from devicetune.model.trainable import TrainableModel

BACKBONE_FILE = "backbone.keras"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BuildResult:
    """What a build wrote; ``head_source`` says where the head's weights came from."""

    out_dir: Path
    manifest: Manifest
    parity: ParityReport
    seconds: dict[str, float]
    head_source: str = ""


def build(config: DevicetuneConfig, out_dir: Path, data_dir: Path,
          progress: Progress | None = None, pretrain_data: LabeledData | None = None,
          fleet_data: FleetInput | None = None) -> BuildResult:
    """Build, verify and describe the artifacts for ``config``.

    Args:
        pretrain_data: a team's arrays to pretrain on (``[model.backbone.pretrain]``
            still sets epochs and rate).
        fleet_data: the fleet's data when given in Python; parity checks run on its rows
            when there is no pretraining data.

    Raises:
        ConfigError: the model section is missing or does not fit the data.
        DataError: a data file is missing or malformed.
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
    model = build_trainable_model(config.model, config.seed, data_dir,
                                  pretrain_data=pretrain_data)
    say(f"head: {model.head_source}")
    # The data is read and checked before anything is written (a bad file loses nothing).
    x, y, inputs = parity_rows(config, model, data_dir, fleet_data)
    model.backbone.save(out_dir / BACKBONE_FILE)
    lap("backbone")

    say("converting to TFLite (built-in ops only)")
    # A quantized build ships (and is checked against) the backbone with its kernels
    # rounded; backbone.keras above stays the float32 original (see export/quantize.py).
    float_model, model = model, quantized_model(model, config.export.quantize)
    program = model.program(config.export)
    flatbuffer = quantize_tflite(convert_program(program, _calibration(config, x)),
                                 config.export.quantize)
    tflite_path = write_tflite(flatbuffer, out_dir)
    lap("tflite")

    say("checking parity: LiteRT against TensorFlow")
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
    report = ParityReport(checks, inputs=inputs,
                          drift=_drift(float_model, model, config, x, y, inputs))

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
    return BuildResult(out_dir, manifest, report, seconds, head_source=model.head_source)


def _build_coreml(model: TrainableModel, config: DevicetuneConfig,
                  shipped_weights: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray,
                  out_dir: Path) -> tuple[CoreMLArtifacts, list[Check]]:
    """Write the Core ML model(s) and check them with the reference interpreter against a
    fresh TensorFlow program (the one the TFLite checks used has trained)."""
    from devicetune.device.coreml_reference import CoreMLReference
    from devicetune.export.coreml import build_coreml
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


def _calibration(config: DevicetuneConfig, x: np.ndarray) -> np.ndarray | None:
    """int8_full calibrates the backbone on the rows the parity checks use."""
    return x if config.export.quantize == "int8_full" else None


def _backbone_tolerance(config: DevicetuneConfig) -> dict[str, object]:
    from devicetune.export.quantize import INT8_ACTIVATION_TOLERANCE

    if config.export.quantize != "int8_full":
        return {}
    return {"backbone_tolerance": INT8_ACTIVATION_TOLERANCE,
            "backbone_note": "int8_full: LiteRT's backbone activations are int8, "
                             "against the int8-kernel float reference"}


def _drift(float_model: TrainableModel, shipped: TrainableModel, config: DevicetuneConfig,
           x: np.ndarray, y: np.ndarray, inputs: str) -> dict[str, float | str] | None:
    """A quantized build's cost against the float32 model, on the parity rows."""
    from devicetune.export.quantize import float_drift

    if config.export.quantize == "none":
        return None
    return float_drift(float_model, shipped, config.export.quantize, x, y, rows=inputs)


def parity_rows(config: DevicetuneConfig, model: TrainableModel, data_dir: Path,
                fleet_data: FleetInput | None = None
                ) -> tuple[np.ndarray, np.ndarray, str]:
    """The rows parity checks run on, and a sentence saying which (for parity.json).

    Real rows, so that "passed" speaks of the data the model will see: a calibration
    file if one is named, else the pretraining data, else the fleet's. Random normal
    inputs only when the config names no data, with a warning (a constant feature
    column, for one, turns random inputs into huge embeddings that real rows never give).
    """
    export = config.export
    limit = export.calibration_rows
    if export.calibration == "random":
        return (*_random_rows(model, limit, config.seed), "random normal inputs (asked for)")
    if export.calibration == "file":
        from devicetune.config import DataFileFields
        from devicetune.data.files import load_file

        data = load_file(DataFileFields(path=export.calibration_path), model.classes,
                         section="export")
        return (*_checked(data, model, limit, "export.calibration_path"),
                f"{min(limit, len(data))} rows of {export.calibration_path}")
    if model.sample is not None:
        return (*_checked(model.sample, model, limit, "model.backbone.pretrain"),
                f"{min(limit, len(model.sample))} rows of the pretraining data")
    if config.fleet is not None:
        from devicetune.data.sources import open_fleet_data

        source = open_fleet_data(config.fleet, config.seed, data_dir, data=fleet_data,
                                 class_names=model.classes)
        parts, total, device_id = [], 0, 0
        while total < limit and device_id < source.devices:
            part = source.device(device_id)
            parts.append(part)
            total += len(part)
            device_id += 1
        if total:
            pooled = LabeledData(x=np.concatenate([p.x for p in parts]),
                                 y=np.concatenate([p.y for p in parts]),
                                 user=np.concatenate([p.user for p in parts]),
                                 class_names=parts[0].class_names)
            return (*_checked(pooled, model, limit, "fleet.data"),
                    f"{min(limit, total)} rows of the fleet's data "
                    f"({config.fleet.data.source}, {device_id} devices)")
    import warnings

    from devicetune.errors import DevicetuneWarning

    warnings.warn(DevicetuneWarning(
        "parity checks ran on random normal inputs: the config names no data (set "
        "[export] calibration = \"file\" with calibration_path, or pretrain), so they say "
        "little about the rows the model will see"), stacklevel=2)
    return (*_random_rows(model, limit, config.seed), "random normal inputs (no data named)")


def _checked(data: LabeledData, model: TrainableModel, limit: int, section: str
             ) -> tuple[np.ndarray, np.ndarray]:
    if data.example_shape != model.input_shape:
        raise ConfigError(f"{section}: its examples have shape {list(data.example_shape)}, "
                          f"the model takes {list(model.input_shape)}")
    return data.x[:limit], data.y[:limit]


def _random_rows(model: TrainableModel, count: int, seed: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(count, *model.input_shape)).astype(np.float32)
    return x, rng.integers(0, len(model.classes), count)
