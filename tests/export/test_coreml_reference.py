"""The Core ML reference interpreter against TensorFlow: forward pass, MLUpdateTask's
training step, weights, saving, and the layer types the converter emits."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import keras
import numpy as np
import pytest
from coremltools.proto import Model_pb2

from devicetune.device.batching import padded_batches
from devicetune.device.coreml_layers import compile_layer, run_layers
from devicetune.device.coreml_reference import CoreMLReference
from devicetune.errors import ConfigError, ExportError
from devicetune.export.coreml import convert_backbone
from tests.export.conftest import examples
from tests.export.coreml_cases import IDS, VARIANTS, converted

# What the HAR backbone converts to (DESIGN.md) plus what non-trivial Normalization and
# BatchNormalization statistics add.
CONV1D_LAYERS = {"transpose", "expandDims", "convolution", "squeeze", "activation",
                 "loadConstantND", "multiplyBroadcastable", "pooling", "reduceMean",
                 "batchedMatmul", "subtractBroadcastable", "addBroadcastable"}


@pytest.mark.parametrize("kwargs", VARIANTS, ids=IDS)
def test_forward_pass_equals_tensorflow(variant, kwargs) -> None:
    v = variant(**kwargs)
    reference = CoreMLReference(converted(v)[1])
    program = v.program()
    x, _ = examples(v.model.input_shape, n=40)
    probabilities = reference.predict(x)
    np.testing.assert_allclose(probabilities, program.infer(x)["probabilities"], atol=1e-4)
    features = reference.features(x)
    np.testing.assert_allclose(features, program.embed(x)["features"], rtol=1e-4, atol=1e-5)
    # From features, the trainable chain alone gives the same probabilities.
    np.testing.assert_allclose(reference.predict(features), probabilities, atol=1e-6)
    assert list(reference.predict_labels(x)) == [
        v.model.classes[i] for i in probabilities.argmax(axis=1)]


@pytest.mark.parametrize("kwargs", VARIANTS, ids=IDS)
def test_one_epoch_equals_the_tensorflow_step(variant, kwargs) -> None:
    v = variant(**kwargs)
    reference = CoreMLReference(converted(v)[1])
    program = v.program()
    x, y = examples(v.model.input_shape, n=61, seed=2)  # 61 = 7 batches of 8, then 5
    features = program.embed(x)["features"].numpy()
    losses = reference.update(features, y, epochs=1, shuffle_seed=7)
    tf_losses = []
    order = np.random.default_rng(7).permutation(len(y))
    for batch in padded_batches(features, y.astype(np.int32), 8, order=order):
        tf_losses.append(float(program.train(*batch)["loss"]) * batch[2].sum())
    ours = reference.get_weights()
    for name, theirs in zip(program.names, program.weights(), strict=True):
        np.testing.assert_allclose(ours[name], theirs, atol=1e-4, err_msg=name)
    assert losses == pytest.approx([sum(tf_losses) / len(y)], abs=1e-5)
    assert any(not np.array_equal(ours[n], w) for n, w in zip(
        program.names, v.model.weights(), strict=True))


def test_epochs_batch_size_and_learning_rate_follow_mlupdatetask(variant) -> None:
    v = variant(head="mlp", optimizer="adam")
    reference = CoreMLReference(converted(v)[1])
    program = v.program()
    x, y = examples(v.model.input_shape, n=23, seed=4)
    features = program.embed(x)["features"].numpy()
    reference.update(features, y, epochs=3, batch_size=5, learning_rate=0.05, shuffle_seed=9)
    # The same in TensorFlow: batches of 5 padded into the static batch of 8, a fresh
    # shuffle per epoch, Adam's step counting on across epochs.
    program.configure(np.float32(0.05), np.float32(0.0))
    rng = np.random.default_rng(9)
    for _ in range(3):
        order = rng.permutation(len(y))
        for start in range(0, len(y), 5):
            rows = order[start:start + 5]
            batch = next(padded_batches(features[rows], y[rows].astype(np.int32), 8))
            program.train(*batch)
    ours = reference.get_weights()
    for name, theirs in zip(program.names, program.weights(), strict=True):
        np.testing.assert_allclose(ours[name], theirs, atol=1e-4, err_msg=name)


def test_update_is_deterministic_given_a_seed_and_restarts_its_optimizer(variant) -> None:
    v = variant(head="linear", optimizer="adam")
    _, spec = converted(v)
    x, y = examples(v.model.input_shape, n=20)

    def trained(seed: int, epochs: tuple[int, ...]) -> np.ndarray:
        reference = CoreMLReference(spec)
        for n in epochs:
            reference.update(x, y, epochs=n, shuffle_seed=seed)
        return reference.get_weights()["dense0_kernel"]

    np.testing.assert_array_equal(trained(1, (2,)), trained(1, (2,)))
    assert not np.array_equal(trained(1, (2,)), trained(2, (2,)))
    # Two tasks of one epoch are not one task of two: each task starts a fresh Adam.
    assert not np.allclose(trained(1, (1, 1)), trained(1, (2,)), atol=1e-6)


def test_updating_from_inputs_equals_updating_from_features(variant) -> None:
    v = variant(head="mlp", optimizer="sgd")
    _, spec = converted(v)
    x, y = examples(v.model.input_shape, n=16)
    from_x, from_features = CoreMLReference(spec), CoreMLReference(spec)
    from_x.update(x, y, shuffle_seed=0)
    from_features.update(from_features.features(x), y, shuffle_seed=0)
    for name, tensor in from_x.get_weights().items():
        np.testing.assert_array_equal(tensor, from_features.get_weights()[name])


def test_labels_may_be_class_names_and_parameters_must_fit_the_model(variant) -> None:
    v = variant(head="linear", optimizer="adam")
    reference = CoreMLReference(converted(v)[1])
    x, y = examples(v.model.input_shape, n=10)
    by_index = CoreMLReference(converted(v)[1])
    reference.update(x, [v.model.classes[i] for i in y], shuffle_seed=0)
    by_index.update(x, y, shuffle_seed=0)
    np.testing.assert_array_equal(reference.get_weights()["dense0_kernel"],
                                  by_index.get_weights()["dense0_kernel"])
    with pytest.raises(ConfigError, match=r"labels \['jumping'\] are not classes"):
        reference.update(x[:1], ["jumping"])
    with pytest.raises(ConfigError, match=r"learning_rate = 5.0 is outside"):
        reference.update(x, y, learning_rate=5.0)
    with pytest.raises(ConfigError, match=r"epochs = 0 is outside"):
        reference.update(x, y, epochs=0)
    loss, accuracy = reference.evaluate(x, y)
    assert loss > 0 and 0.0 <= accuracy <= 1.0


def test_weights_round_trip_and_saved_model_carries_them(variant, tmp_path: Path) -> None:
    import coremltools as ct

    v = variant(head="mlp", optimizer="sgd", architecture="conv2d_small")
    _, spec = converted(v)
    reference = CoreMLReference(spec)
    rng = np.random.default_rng(0)
    probe = {name: rng.normal(size=w.shape).astype(np.float32)
             for name, w in reference.get_weights().items()}
    reference.set_weights(probe)
    assert all(np.array_equal(reference.get_weights()[k], probe[k]) for k in probe)
    program = v.program()
    program.set_weights(*[probe[name] for name in program.names])
    x, _ = examples(v.model.input_shape, n=6)
    np.testing.assert_allclose(reference.predict(x), program.infer(x)["probabilities"],
                               atol=1e-4)
    path = reference.save(tmp_path / "Updated.mlmodel")
    assert ct.models.MLModel(str(path)).get_spec().isUpdatable
    reloaded = CoreMLReference(path)
    assert all(np.array_equal(reloaded.get_weights()[k], probe[k]) for k in probe)
    with pytest.raises(ValueError, match="dense0_kernel: shape"):
        reference.set_weights({**probe, "dense0_kernel": probe["dense0_kernel"].T})


def test_unknown_layer_type_raises_naming_it(variant) -> None:
    v = variant(head="linear", optimizer="adam")
    spec = Model_pb2.Model()
    spec.CopyFrom(converted(v)[1])
    layers = spec.neuralNetworkClassifier.layers
    odd = layers[1]
    odd.name = "odd_one"
    odd.ClearField(odd.WhichOneof("layer"))
    odd.erf.MergeFromString(b"")
    with pytest.raises(ExportError, match=r"layer 'odd_one' has type 'erf', which the Core "
                                          r"ML reference interpreter does not implement"):
        CoreMLReference(spec)
    odd.ClearField("erf")
    odd.activation.PReLU.MergeFromString(b"")
    with pytest.raises(ExportError, match=r"layer 'odd_one': activation 'PReLU' is not "
                                          "implemented"):
        CoreMLReference(spec)


def test_covers_the_layer_types_of_both_builtin_backbones(variant) -> None:
    seen: Counter[str] = Counter()
    for kwargs in ({"head": "linear", "optimizer": "adam"},
                   {"head": "mlp", "optimizer": "sgd", "architecture": "conv2d_small"}):
        model = variant(**kwargs).model
        backbone = keras.models.clone_model(model.feature_model)
        backbone.set_weights(model.feature_model.get_weights())
        _perturb_statistics(backbone, model.input_shape)
        seen.update(_assert_runs_like_keras(backbone, model.input_shape))
    assert set(seen) >= CONV1D_LAYERS
    assert {"batchnorm", "add", "multiply"} <= set(seen)  # the conv2d path


@pytest.mark.parametrize("make", ["image", "sequence"])
def test_every_supported_keras_layer_runs_like_keras(make: str) -> None:
    """Layers devicetune accepts in a backbone (model.backbone.SUPPORTED_LAYERS), run
    through coremltools and the reference, against Keras."""
    model, shape = _kitchen_image() if make == "image" else _kitchen_sequence()
    _perturb_statistics(model, shape)
    seen = _assert_runs_like_keras(model, shape)
    assert {"convolution", "pooling", "padding", "batchedMatmul"} <= set(seen)


# ----------------------------------------------------------------------------- helpers


def _assert_runs_like_keras(model: keras.Model, shape: tuple[int, ...]) -> Counter[str]:
    spec = convert_backbone(model)
    layers = spec.neuralNetwork.layers
    steps = [(list(layer.input), list(layer.output), compile_layer(layer)) for layer in layers]
    x, _ = examples(shape, n=12, seed=5)
    out = spec.description.output[0].name
    ours = run_layers(steps, {"x": x[:, None]})[out].reshape(len(x), -1)
    np.testing.assert_allclose(ours, np.asarray(model(x, training=False)), atol=1e-4,
                               rtol=1e-4)
    return Counter(layer.WhichOneof("layer") for layer in layers)


def _perturb_statistics(model: keras.Model, shape: tuple[int, ...]) -> None:
    """Untrained statistics (mean 0, variance 1) constant-fold away; real ones do not."""
    rng = np.random.default_rng(0)
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "Normalization":
            layer.adapt(rng.normal(1.0, 2.0, (32, *shape)).astype(np.float32))
        elif kind == "BatchNormalization":
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(np.float32)
                               for w in layer.get_weights()])


def _kitchen_image() -> tuple[keras.Model, tuple[int, ...]]:
    layers = keras.layers
    x = keras.Input((12, 12, 3), name="x")
    h = layers.Normalization(axis=-1)(x)
    h = layers.Rescaling(0.5, offset=-0.5)(h)
    h = layers.ZeroPadding2D(1)(h)
    h = layers.Conv2D(8, 3, strides=2, activation="relu6")(h)
    h = layers.DepthwiseConv2D(3, padding="same", activation="tanh")(h)
    gate = layers.Conv2D(8, 1, activation="sigmoid", padding="same")(h)
    h = layers.Add()([h, gate])
    h = layers.BatchNormalization()(h)
    h = layers.MaxPooling2D(2, padding="same")(h)
    h = layers.AveragePooling2D(2, strides=1, padding="same")(h)
    peak = layers.GlobalMaxPooling2D()(h)
    mean = layers.GlobalAveragePooling2D()(h)
    h = layers.Flatten()(h)
    h = layers.Dense(10, activation="softmax")(h)
    h = layers.Reshape((2, 5))(h)
    h = layers.Flatten()(h)
    h = layers.Dropout(0.1)(h)
    h = layers.Add()([layers.Dense(8)(h), peak, mean])
    h = layers.Activation("linear")(h)
    return keras.Model(x, layers.Dense(6, activation="relu")(h)), (12, 12, 3)


def _kitchen_sequence() -> tuple[keras.Model, tuple[int, ...]]:
    layers = keras.layers
    x = keras.Input((20, 4), name="x")
    h = layers.Normalization(axis=-1)(x)
    h = layers.ZeroPadding1D(2)(h)
    h = layers.Conv1D(8, 3, strides=2, padding="same", activation="tanh")(h)
    h = layers.Conv1D(8, 3, dilation_rate=2, activation="sigmoid")(h)
    h = layers.BatchNormalization()(h)
    h = layers.AveragePooling1D(2)(h)
    h = layers.MaxPooling1D(2, padding="same")(h)
    h = layers.ReLU()(layers.Activation("relu")(h))
    h = layers.Add()([layers.GlobalMaxPooling1D()(h), layers.GlobalAveragePooling1D()(h)])
    return keras.Model(x, layers.Dense(6)(h)), (20, 4)
