"""Quantized backbones: each setting builds, stays built-in and updatable, equals its
quantized reference, still trains, and is smaller."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from devicetune.artifacts.manifest import read_manifest
from devicetune.config import parse_config
from devicetune.device.coreml_files import load_spec
from devicetune.device.coreml_reference import CoreMLReference
from devicetune.errors import ConfigError
from devicetune.export import quantize, verify
from devicetune.export.build import build
from devicetune.export.quantize import int8_codes, quantized_model, round_kernel
from devicetune.export.tflite import convert_program

MODES = ("float16", "int8", "int8_full")


def config(quantize: str):
    return parse_config({"name": "q", "seed": 0, "model": {
        "classes": 3, "input_shape": [32, 3], "batch_size": 8,
        "backbone": {"architecture": "conv1d_small", "embedding_dim": 16},
        "head": {"type": "mlp", "hidden_units": 8},
        "optimizer": {"name": "adam", "learning_rate": 0.01},
    }, "export": {"parity_steps": 5, "quantize": quantize, "calibration": "random"}})


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory, data_dir: Path):
    """One build per quantized setting (the same seed, so the same float backbone)."""
    return {mode: build(config(mode), tmp_path_factory.mktemp(mode), data_dir)
            for mode in MODES}


@pytest.fixture(scope="module")
def float_tflite_size(data_dir: Path) -> int:
    """The float32 TFLite model of the same model, for the size comparison."""
    from devicetune.model.trainable import build_trainable_model

    cfg = config("none")
    model = build_trainable_model(cfg.model, cfg.seed, data_dir)
    return len(convert_program(model.program(cfg.export)))


def test_int8_codes_round_trip_and_are_stable() -> None:
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(5, 4, 6)).astype(np.float32) * np.arange(1, 7)
    q, scale = int8_codes(kernel, axis=2)
    assert q.dtype == np.int8 and scale.shape == (6,)
    assert np.abs(q).max() == 127 and np.all(np.abs(q) <= 127)
    rounded = round_kernel(kernel, "int8")
    assert np.all(np.abs(rounded - kernel) <= scale / 2 + 1e-7)
    # Rounding the rounded values again changes nothing: what lets each artifact store
    # the reference's values exactly.
    np.testing.assert_array_equal(round_kernel(rounded, "int8"), rounded)
    again, _ = int8_codes(rounded, axis=2)
    np.testing.assert_array_equal(again, q)
    half = round_kernel(kernel, "float16")
    assert 0 < np.abs(half - kernel).max() <= np.abs(kernel).max() * 2**-11


@pytest.mark.parametrize("mode", MODES)
def test_each_setting_builds_and_passes_parity_against_its_quantized_reference(
        builds, mode: str) -> None:
    result = builds[mode]
    assert result.parity.passed, [c.name for c in result.parity.failed()]
    checks = {c.name: c for c in result.parity.checks}
    assert checks["coreml.updatable"].passed and checks["tflite.builtin_ops_only"].passed
    assert checks["tflite.embed"].max_abs_diff <= checks["tflite.embed"].tolerance
    manifest = read_manifest(result.out_dir)
    assert manifest.quantize == mode
    assert "DEQUANTIZE" in manifest.tflite.builtin_ops
    assert not [op for op in manifest.tflite.builtin_ops if op.startswith("CUSTOM")]
    # The float model's drift is reported beside the checks, not as one: quantizing
    # really moved the embedding, so "passed" above was against the quantized reference.
    report = json.loads((result.out_dir / "parity.json").read_text())
    drift = report["quantization_drift"]
    assert drift["quantize"] == mode
    assert drift["embedding_relative_error"] > 10 * verify.INFER_TOLERANCE
    assert 0.0 <= drift["quantized_accuracy"] <= 1.0


@pytest.mark.parametrize("mode", MODES)
def test_only_the_backbone_is_quantized(builds, mode: str) -> None:
    from ai_edge_litert import schema_py_generated as schema

    out = builds[mode].out_dir
    flatbuffer = (out / "model.tflite").read_bytes()
    model = schema.Model.GetRootAsModel(flatbuffer, 0)
    small = {"float16": schema.TensorType.FLOAT16, "int8": schema.TensorType.INT8,
             "int8_full": schema.TensorType.INT8}[mode]
    by_signature = {}
    for i in range(model.SignatureDefsLength()):
        signature = model.SignatureDefs(i)
        graph = model.Subgraphs(signature.SubgraphIndex())
        by_signature[signature.SignatureKey().decode()] = {
            graph.Tensors(t).Type() for t in range(graph.TensorsLength())
            if model.Buffers(graph.Tensors(t).Buffer()).DataLength() > 0}
    assert small in by_signature["embed"] and small in by_signature["infer"]
    for name in ("train", "train_dp", "evaluate", "set_weights"):
        assert small not in by_signature[name], name
    # Core ML: the backbone's convolutions are quantized, the updatable head is float32.
    spec = load_spec(out / "Model.mlmodel")
    layers = spec.neuralNetworkClassifier.layers
    convolutions = [layer.convolution.weights for layer in layers
                    if layer.WhichOneof("layer") == "convolution"]
    assert convolutions and all(not len(w.floatValue) for w in convolutions)
    assert all(len(w.float16Value if mode == "float16" else w.rawValue)
               for w in convolutions)
    head = [layer for layer in layers if layer.isUpdatable]
    assert head and all(len(layer.innerProduct.weights.floatValue) for layer in head)


def test_int8_is_smallest_and_float16_in_between(builds, float_tflite_size: int) -> None:
    tflite_float = float_tflite_size
    tflite = {m: (builds[m].out_dir / "model.tflite").stat().st_size for m in MODES}
    coreml = {m: (builds[m].out_dir / "Model.mlmodel").stat().st_size for m in MODES}
    assert tflite["int8"] < tflite["float16"] < tflite_float
    assert tflite["int8_full"] < tflite["float16"]
    assert coreml["int8"] < 0.7 * coreml["float16"]
    assert coreml["int8_full"] == coreml["int8"]  # Core ML has no int8 activations


@pytest.mark.parametrize("mode", MODES)
def test_training_a_quantized_build_lowers_the_loss_in_both_runtimes(builds, mode: str
                                                                      ) -> None:
    from devicetune.device.litert import LiteRTModel

    out = builds[mode].out_dir
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 32, 3)).astype(np.float32)
    y = rng.integers(0, 3, 8).astype(np.int32)
    lite = LiteRTModel(out / "model.tflite")
    features = lite.embed(x)
    mask = np.ones(8, np.float32)
    lite.configure(0.1, 0.0)
    losses = [lite.train(features, y, mask) for _ in range(100)]
    assert losses[-1] < 0.7 * losses[0]
    reference = CoreMLReference(out / "Model.mlmodel")
    before, _ = reference.evaluate(x, y)
    reference.update(x, y, epochs=100, learning_rate=0.1, shuffle_seed=0)
    after, _ = reference.evaluate(x, y)
    assert after < 0.7 * before


def test_the_reference_is_the_backbone_with_rounded_kernels(data_dir: Path) -> None:
    from devicetune.model.trainable import build_trainable_model

    cfg = config("none")
    model = build_trainable_model(cfg.model, cfg.seed, data_dir)
    shipped = quantized_model(model, "int8")
    kernels = {layer.name: layer.get_weights() for layer in shipped.feature_model.layers
               if layer.get_weights()}
    for layer in model.feature_model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        if type(layer).__name__ in ("Conv1D", "Dense"):
            np.testing.assert_array_equal(kernels[layer.name][0],
                                          round_kernel(weights[0], "int8"))
            assert not np.array_equal(kernels[layer.name][0], weights[0])
        for ours, original in zip(kernels[layer.name][1:], weights[1:], strict=True):
            np.testing.assert_array_equal(ours, original)  # biases, BatchNorm, stats
    assert shipped.layers is model.layers and shipped.backbone is model.backbone


def test_unknown_setting_and_knn_are_refused() -> None:
    with pytest.raises(ConfigError, match="quantize"):
        config("int4")
    with pytest.raises(ConfigError, match="coreml_knn"):
        parse_config({"export": {"quantize": "int8", "coreml_knn": True}})



@pytest.mark.parametrize(("mode", "bound"), [("float16", 1e-2), ("int8", 1e-1)])
def test_the_reference_keeps_an_adapted_normalization(data_dir: Path, mode: str,
                                                      bound: float) -> None:
    from devicetune.model.trainable import build_trainable_model

    cfg = config("none")
    model = build_trainable_model(cfg.model, cfg.seed, data_dir)
    rng = np.random.default_rng(2)
    x = (rng.normal(size=(64, 32, 3)) * 5.0 + 3.0).astype(np.float32)
    model.feature_model.get_layer("normalize").adapt(x)
    ours = np.asarray(quantized_model(model, mode).feature_model(x))
    theirs = np.asarray(model.feature_model(x))
    assert np.abs(ours - theirs).max() <= bound * np.abs(theirs).max()


def test_int8_full_runs_int8_activations_and_keeps_training_exact(builds) -> None:
    from ai_edge_litert import schema_py_generated as schema

    result = builds["int8_full"]
    checks = {c.name: c for c in result.parity.checks}
    embed = checks["tflite.embed"]
    # Really int8 inside: further from the float reference than rounding, within the
    # documented tolerance; the head's training is as exact as a float32 build's.
    largest = embed.tolerance / quantize.INT8_ACTIVATION_TOLERANCE  # of the reference
    assert 100 * verify.INFER_TOLERANCE * largest < embed.max_abs_diff
    assert embed.max_abs_diff <= embed.tolerance and "int8_full" in embed.note
    assert checks["tflite.train.5_steps"].max_abs_diff < 1e-5
    assert "QUANTIZE" in result.manifest.tflite.builtin_ops
    flatbuffer = (result.out_dir / "model.tflite").read_bytes()
    model = schema.Model.GetRootAsModel(flatbuffer, 0)
    activations = 0
    for i in range(model.SignatureDefsLength()):
        signature = model.SignatureDefs(i)
        if signature.SignatureKey() != b"embed":
            continue
        graph = model.Subgraphs(signature.SubgraphIndex())
        activations = sum(1 for t in range(graph.TensorsLength())
                          if graph.Tensors(t).Type() == schema.TensorType.INT8
                          and not model.Buffers(graph.Tensors(t).Buffer()).DataLength())
    assert activations > 0


def test_versions_of_an_int8_full_build_are_refused(builds, tmp_path: Path) -> None:
    from devicetune.artifacts.emit import VersionEmitter

    cfg, _ = _with_emit("int8_full", tmp_path)
    with pytest.raises(ConfigError, match="int8_full"):
        VersionEmitter(cfg, builds["int8_full"].out_dir, tmp_path / "run", {})


def _int8_buffers(flatbuffer: bytes) -> list[bytes]:
    """The constant int8 tensors' bytes of a TFLite model (the quantized backbone)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(flatbuffer, 0)
    found = set()
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for t in range(graph.TensorsLength()):
            tensor = graph.Tensors(t)
            buffer = model.Buffers(tensor.Buffer())
            if tensor.Type() == schema.TensorType.INT8 and buffer.DataLength():
                found.add(buffer.DataAsNumpy().tobytes())
    return sorted(found)


def _with_emit(mode: str, tmp_path: Path):
    from devicetune.artifacts.keys import generate_key_pair

    keys = generate_key_pair(tmp_path / "keys")
    cfg = config(mode)
    emit = cfg.emit.model_copy(update={"enabled": True, "registry": tmp_path / "registry",
                                       "private_key": keys.private_key})
    return cfg.model_copy(update={"emit": emit}), keys


def test_versions_of_a_quantized_build_keep_its_backbone_and_a_float32_update(
        builds, tmp_path: Path) -> None:
    from devicetune.artifacts.emit import VersionEmitter
    from devicetune.device.litert import LiteRTModel
    from devicetune.registry import Registry

    build_dir = builds["int8"].out_dir
    cfg, _ = _with_emit("int8", tmp_path)
    emit = VersionEmitter(cfg, build_dir, tmp_path / "run", {"accuracy": 0.5})
    start = LiteRTModel(build_dir / "model.tflite").get_weights()
    names = builds["int8"].manifest.tflite.weight_names
    new = [start[name] + np.float32(0.01) for name in names]
    assert emit.emit(1, new, {"accuracy": 0.6}).emitted
    registry = Registry(tmp_path / "registry")
    assert registry.manifest("q", 2).quantize == "int8"
    built = (build_dir / "model.tflite").read_bytes()
    shipped = registry.file("q", 2, "model.tflite")[0].read_bytes()
    # The same int8 backbone codes in version 2; only the float32 head moved.
    assert _int8_buffers(built) and _int8_buffers(shipped) == _int8_buffers(built)
    stored = LiteRTModel(shipped).get_weights()
    for name, expected in zip(names, new, strict=True):
        np.testing.assert_array_equal(stored[name], expected)
    with np.load(registry.file("q", 2, "update.npz")[0]) as update:
        assert all(update[name].dtype == np.float32 for name in names)
    x = np.random.default_rng(0).normal(size=(4, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(LiteRTModel(shipped).embed(x), LiteRTModel(built).embed(x),
                               atol=1e-6)
