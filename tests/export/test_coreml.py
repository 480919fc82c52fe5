"""The iOS artifact: an updatable Core ML model from the same definition, checked on Linux.

coremltools builds and saves the models for real; there is no Core ML runtime here, so
behaviour is checked with the reference interpreter (tests/export/test_coreml_reference.py
tests the interpreter itself).
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
from coremltools.proto import Model_pb2

from devicetune.artifacts.manifest import Manifest, read_manifest, sha256_file
from devicetune.config import parse_config
from devicetune.device.coreml_reference import CoreMLReference
from devicetune.device.litert import LiteRTModel
from devicetune.errors import ConfigError, ExportError
from devicetune.export.build import build
from devicetune.export.coreml import (
    LABEL,
    PROBABILITIES,
    convert_backbone,
    coreml_entry,
    write_coreml,
)
from devicetune.export.coreml_knn import KNNReference, build_knn_spec
from devicetune.export.coreml_rules import updatable_problems
from tests.export.conftest import examples
from tests.export.coreml_cases import IDS, VARIANTS, converted

COREML_ROWS = {"coreml.updatable", "coreml.predict", "coreml.features",
               "coreml.weights_equal_tflite", "coreml.update.1_epoch", "coreml.save_reload",
               "coreml.update_masked.1_epoch"}


@pytest.mark.parametrize("kwargs", VARIANTS, ids=IDS)
def test_spec_is_an_updatable_classifier(variant, kwargs) -> None:
    v = variant(**kwargs)
    _, spec = converted(v)
    assert updatable_problems(spec) == []
    assert spec.isUpdatable and spec.specificationVersion >= 4
    nn = spec.neuralNetworkClassifier
    updatable = [layer for layer in nn.layers if layer.isUpdatable]
    assert [layer.WhichOneof("layer") for layer in updatable] == (
        ["innerProduct"] * len(v.model.layers))
    assert all(layer.innerProduct.weights.isUpdatable and layer.innerProduct.bias.isUpdatable
               for layer in updatable)
    # The backbone's converted Dense layers stay frozen batchedMatmuls.
    assert not any(layer.isUpdatable for layer in nn.layers
                   if layer.WhichOneof("layer") != "innerProduct")
    (loss,) = nn.updateParams.lossLayers
    producer = {o: layer for layer in nn.layers for o in layer.output}
    assert producer[loss.categoricalCrossEntropyLossLayer.input].WhichOneof("layer") == "softmax"
    assert [t.name for t in spec.description.trainingInput] == ["x", LABEL]
    assert spec.description.trainingInput[1].type.WhichOneof("Type") == "stringType"
    assert list(nn.stringClassLabels.vector) == v.model.classes
    assert spec.description.predictedFeatureName == LABEL
    assert spec.description.predictedProbabilitiesName == PROBABILITIES
    assert list(spec.description.input[0].type.multiArrayType.shape) == [
        1, *v.model.input_shape]

    head = v.model.spec
    params = nn.updateParams
    optimizer = params.optimizer.adamOptimizer if head.optimizer.name == "adam" else (
        params.optimizer.sgdOptimizer)
    assert params.optimizer.WhichOneof("OptimizerType") == f"{head.optimizer.name}Optimizer"
    assert optimizer.learningRate.defaultValue == pytest.approx(head.optimizer.learning_rate)
    assert optimizer.miniBatchSize.defaultValue == head.batch_size
    assert params.epochs.defaultValue == head.epochs
    assert params.shuffle.defaultValue is True
    for tunable in (optimizer.learningRate, optimizer.miniBatchSize, params.epochs):
        assert tunable.range.minValue <= tunable.defaultValue <= tunable.range.maxValue
        assert tunable.range.minValue < tunable.range.maxValue
    if head.optimizer.name == "sgd":
        assert optimizer.momentum.defaultValue == pytest.approx(head.optimizer.momentum)


def test_updatable_check_catches_what_core_ml_refuses(variant) -> None:
    v = variant(head="mlp", optimizer="sgd")
    spec = Model_pb2.Model()
    spec.CopyFrom(converted(v)[1])
    layers = {layer.name: layer for layer in spec.neuralNetworkClassifier.layers}
    layers["softmax"].isUpdatable = True
    convolution = next(layer for layer in layers.values()
                       if layer.WhichOneof("layer") == "convolution")
    convolution.isUpdatable = True
    convolution.convolution.weights.isUpdatable = True
    convolution.convolution.bias.isUpdatable = convolution.convolution.hasBias
    problems = updatable_problems(spec)
    assert "layer 'softmax' (softmax) cannot be updatable" in problems
    # The backbone's convolutions sit above transposes and squeezes, which Core ML
    # cannot backpropagate through.
    assert any(f"to updatable layer {convolution.name!r}" in p for p in problems)


@pytest.mark.parametrize("kwargs", VARIANTS[-2:], ids=IDS[-2:])
def test_head_weights_equal_the_tflite_artifacts(variant, kwargs) -> None:
    v = variant(**kwargs)
    _, spec = converted(v)
    lite = LiteRTModel(v.flatbuffer).get_weights()
    ours = CoreMLReference(spec).get_weights()
    assert list(ours) == v.program().names
    for name, tensor in ours.items():
        assert tensor.shape == lite[name].shape
        assert np.array_equal(tensor, lite[name]), name


def test_saves_and_loads_with_coremltools(variant, tmp_path: Path) -> None:
    import coremltools as ct

    v = variant(head="mlp", optimizer="adam")
    _, spec = converted(v)
    path = write_coreml(spec, tmp_path / "Model.mlmodel")
    loaded = ct.models.MLModel(str(path))
    assert loaded.get_spec().SerializeToString() == spec.SerializeToString()
    assert loaded.get_spec().isUpdatable
    loaded.save(str(tmp_path / "Again.mlmodel"))
    x, _ = examples(v.model.input_shape, n=8)
    np.testing.assert_array_equal(CoreMLReference(tmp_path / "Again.mlmodel").predict(x),
                                  CoreMLReference(spec).predict(x))


def test_manifest_entry_says_what_the_app_may_tune(variant, tmp_path: Path) -> None:
    v = variant(head="mlp", optimizer="sgd")
    _, spec = converted(v)
    path = write_coreml(spec, tmp_path / "Model.mlmodel")
    entry = coreml_entry(spec, path)
    assert entry.file == "Model.mlmodel" and entry.sha256 == sha256_file(path)
    assert entry.updatable_layers == ["dense0", "dense1"]
    assert entry.loss == "categorical_cross_entropy" and entry.optimizer == "sgd"
    assert entry.training_inputs == ["x", "label"] and entry.shuffle
    assert set(entry.parameters) == {"learning_rate", "batch_size", "epochs", "momentum"}
    assert entry.parameters["learning_rate"].default == pytest.approx(0.01)
    assert entry.parameters["batch_size"].default == 8
    assert entry.parameters["epochs"].default == 5
    assert entry.parameters["momentum"].default == pytest.approx(0.9)
    manifest = Manifest(name="m", version=1, created_at="now", classes=v.model.classes,
                        input_shape=list(v.model.input_shape), files={}, coreml=entry)
    manifest.write(tmp_path)
    assert read_manifest(tmp_path).coreml == entry


def test_knn_variant_learns_new_classes_from_a_few_examples(variant, tmp_path: Path) -> None:
    import coremltools as ct

    v = variant(head="linear", optimizer="adam", tail=1)
    backbone, _ = converted(v)
    tail = v.model.layers[:1]
    spec = build_knn_spec(backbone, tail, v.model.feature_dim, neighbors=3)
    assert spec.isUpdatable and spec.WhichOneof("Type") == "pipelineClassifier"
    embedder, knn = spec.pipelineClassifier.pipeline.models
    assert knn.isUpdatable and not embedder.isUpdatable
    assert [t.name for t in spec.description.trainingInput] == ["x", LABEL]

    reference = KNNReference(spec)
    x, _ = examples(v.model.input_shape, n=12, seed=3)
    # The embedding is the whole backbone's output, the trainable tail included.
    expected = np.asarray(v.model.backbone(x, training=False))
    np.testing.assert_allclose(reference.features(x), expected, atol=1e-4)
    assert set(reference.predict_labels(x)) == {"unknown"}

    labels = ["wave", "wave", "clap", "clap", "WALKING", "WALKING"]  # new classes welcome
    reference.update(x[:6], labels)
    assert reference.examples == 6
    assert list(reference.predict_labels(x[:6])) == labels
    rng = np.random.default_rng(0)
    nearby = x[:6] + 1e-3 * rng.normal(size=x[:6].shape).astype(np.float32)
    assert list(reference.predict_labels(nearby)) == labels

    path = reference.save(tmp_path / "ModelKNN.mlmodel")
    assert ct.models.MLModel(str(path)).get_spec().isUpdatable
    again = KNNReference(path)
    assert again.examples == 6
    assert list(again.predict_labels(nearby)) == labels


def test_unconvertible_layer_raises_export_error_naming_it() -> None:
    inputs = keras.Input((16, 3), name="x")
    hidden = keras.layers.Lambda(lambda t: keras.ops.erfinv(t), name="inverse_erf")(inputs)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling1D()(hidden))
    with pytest.raises(ExportError, match=r"^layer 'inverse_erf' \(Lambda\): Core ML "
                                          r"conversion failed .*export.coreml = false"):
        convert_backbone(model)


def test_har_build_ships_an_updatable_model_with_parity_rows(har_build) -> None:
    out, result = har_build
    assert result.returncode == 0, result.stderr
    parity = json.loads((out / "parity.json").read_text())
    rows = {c["name"]: c for c in parity["checks"] if c["name"].startswith("coreml")}
    assert set(rows) == COREML_ROWS
    assert all(row["passed"] for row in rows.values()), rows
    assert rows["coreml.predict"]["max_abs_diff"] <= 1e-4
    assert rows["coreml.update.1_epoch"]["max_abs_diff"] <= 1e-4
    assert rows["coreml.weights_equal_tflite"]["max_abs_diff"] == 0.0

    manifest = read_manifest(out)
    entry = manifest.coreml
    assert entry is not None and entry.file == "Model.mlmodel"
    assert manifest.files["Model.mlmodel"] == entry.sha256 == sha256_file(out / entry.file)
    assert entry.optimizer == "adam" and entry.updatable_layers == ["dense0"]
    assert entry.parameters["learning_rate"].default == pytest.approx(0.001)
    assert entry.parameters["epochs"].default == 5
    assert {"beta_1", "beta_2", "epsilon"} <= set(entry.parameters)
    assert entry.knn is None and entry.class_offset_layer == "class_offset"
    assert entry.class_offset_bias_offset > 0
    assert "coreml.update.1_epoch" in result.stdout

    reference = CoreMLReference(out / "Model.mlmodel")
    assert reference.classes == manifest.classes
    assert reference.weight_names == manifest.tflite.weight_names


def test_build_with_knn_writes_and_checks_both_models(tmp_path: Path, data_dir: Path) -> None:
    config = parse_config({"model": {
        "classes": 4, "input_shape": [32, 3],
        "backbone": {"architecture": "conv1d_small", "embedding_dim": 8},
    }, "export": {"parity_steps": 5, "coreml_knn": True, "knn_neighbors": 1}})
    result = build(config, tmp_path, data_dir)
    names = {c.name for c in result.parity.checks}
    assert COREML_ROWS | {"coreml_knn.embedding", "coreml_knn.adds_and_classifies"} <= names
    assert result.parity.passed
    knn = result.manifest.coreml.knn
    assert knn is not None and knn.file == "ModelKNN.mlmodel"
    assert knn.neighbors == 1 and knn.embedding_dim == 8 and knn.default_label == "unknown"
    assert result.manifest.files["ModelKNN.mlmodel"] == sha256_file(tmp_path / knn.file)


def test_knn_without_the_classifier_is_a_config_error(tmp_path: Path, data_dir: Path) -> None:
    config = parse_config({"model": {
        "classes": 3, "input_shape": [32, 3], "backbone": {"architecture": "conv1d_small"},
    }, "export": {"coreml": False, "coreml_knn": True}})
    with pytest.raises(ConfigError, match="export.coreml_knn = true needs export.coreml"):
        build(config, tmp_path, data_dir)
