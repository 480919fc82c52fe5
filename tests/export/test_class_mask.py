"""The restricted-softmax step (FedRS) on both platforms: LiteRT's ``train_masked`` and
the Core ML model's frozen ``class_offset`` layer, against TensorFlow; an absent class's
weights do not move, a present class's do; what Core ML would refuse instead."""

from __future__ import annotations

import numpy as np
import pytest
from coremltools.proto import Model_pb2

from devicetune.device.batching import padded_batches
from devicetune.device.coreml_reference import CoreMLReference
from devicetune.device.litert import LiteRTModel
from devicetune.errors import ArtifactError
from devicetune.export.coreml import CLASS_OFFSET
from devicetune.export.coreml_rules import updatable_problems
from devicetune.model.class_mask import present_classes
from tests.export.conftest import examples
from tests.export.coreml_cases import converted

PRESENT = np.array([1, 0, 1, 0, 0, 1], np.float32)  # the device holds classes 0, 2, 5


def _device_data(v, n: int = 37):
    x, y = examples(v.model.input_shape, n=n, seed=3)
    y = np.flatnonzero(PRESENT)[y % 3].astype(np.int32)  # only classes the device holds
    assert np.array_equal(present_classes(y, 6), PRESENT)
    return x, y


def _columns(weights: list[np.ndarray], classes: np.ndarray) -> np.ndarray:
    """The last layer's kernel columns and bias entries of ``classes``."""
    kernel, bias = weights[-2], weights[-1]
    return np.concatenate([kernel[:, classes].ravel(), bias[classes]])


def test_masked_step_equals_tensorflow_on_litert_and_core_ml(variant) -> None:
    v = variant(head="mlp", optimizer="sgd")
    x, y = _device_data(v)
    absent, present = np.flatnonzero(PRESENT == 0), np.flatnonzero(PRESENT)
    start = v.model.weights()

    program, lite = v.program(), LiteRTModel(v.flatbuffer)
    features = lite.embed(x)
    order = np.random.default_rng(5).permutation(len(y))
    for batch in padded_batches(features, y, lite.batch_size, order=order):
        lite.train(*batch, class_mask=PRESENT)
        program.train_masked(*batch, PRESENT)
    ours = [lite.get_weights()[n] for n in program.names]
    for name, a, b in zip(program.names, ours, program.weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, err_msg=name)

    reference = CoreMLReference(converted(v)[1])
    reference.update(features, y, epochs=1, shuffle_seed=5, class_mask=PRESENT)
    apple = [reference.get_weights()[n] for n in program.names]
    for name, a, b in zip(program.names, apple, program.weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4, err_msg=name)

    for trained in (ours, apple, program.weights()):
        # Absent classes: bit for bit where they were; present ones and the hidden layer
        # moved.
        assert np.array_equal(_columns(trained, absent), _columns(start, absent))
        assert not np.allclose(_columns(trained, present), _columns(start, present))
        assert not np.allclose(trained[0], start[0])
    # The frozen layer is back to zeros: the updated model predicts every class again.
    np.testing.assert_allclose(
        reference.predict(features), program.infer(x)["probabilities"], atol=1e-4
    )


def test_unmasked_step_moves_the_absent_classes(variant) -> None:
    """What the mask prevents: a plain step pushes the absent classes' logits down."""
    v = variant(head="mlp", optimizer="sgd")
    x, y = _device_data(v)
    lite = LiteRTModel(v.flatbuffer)
    features = lite.embed(x)
    for batch in padded_batches(features, y, lite.batch_size):
        lite.train(*batch)
    after = [lite.get_weights()[n] for n in v.program().names]
    absent = np.flatnonzero(PRESENT == 0)
    assert not np.allclose(after[-1][absent], v.model.weights()[-1][absent])


def test_core_ml_refuses_a_mask_input_and_accepts_the_frozen_offset(variant) -> None:
    """Core ML backpropagates through inner products but not through ``add``: a mask
    input added to the logits is refused, the frozen ``class_offset`` layer is not."""
    v = variant(head="linear", optimizer="adam")
    spec = converted(v)[1]
    assert updatable_problems(spec) == []
    layers = {layer.name: layer for layer in spec.neuralNetworkClassifier.layers}
    offset = layers[CLASS_OFFSET]
    assert not offset.isUpdatable and offset.input == ["logits"]
    assert layers["softmax"].input == list(offset.output)
    assert np.array_equal(np.reshape(offset.innerProduct.weights.floatValue, (6, 6)), np.eye(6))

    added = Model_pb2.Model()
    added.CopyFrom(spec)
    nn = added.neuralNetworkClassifier
    for layer in nn.layers:
        if layer.name == CLASS_OFFSET:
            layer.ClearField("innerProduct")
            layer.add.SetInParent()
            layer.input.append("class_mask_input")
    assert updatable_problems(added) == [
        f"layer {CLASS_OFFSET!r} cannot backpropagate to updatable layer 'dense0'"
    ]


def test_a_model_without_the_mask_step_refuses_a_class_mask(variant) -> None:
    v = variant(head="linear", optimizer="adam")
    spec = Model_pb2.Model()
    spec.CopyFrom(converted(v)[1])
    nn = spec.neuralNetworkClassifier
    logits_reader = next(layer for layer in nn.layers if layer.name == "softmax")
    logits_reader.input[0] = "logits"
    layers = [layer for layer in nn.layers if layer.name != CLASS_OFFSET]
    del nn.layers[:]
    nn.layers.extend(layers)
    reference = CoreMLReference(spec)  # an older build: runs, but has no place for a mask
    features = np.zeros((4, reference.feature_dim), np.float32)
    with pytest.raises(ArtifactError, match="class_offset"):
        reference.update(features, [0, 2, 0, 2], epochs=1, class_mask=PRESENT)
    lite = LiteRTModel(v.flatbuffer)
    batch = next(
        padded_batches(
            np.zeros((4, lite.feature_dim), np.float32),
            np.array([0, 2, 0, 2], np.int32),
            lite.batch_size,
        )
    )
    with pytest.raises(ArtifactError, match="privacy.device"):
        lite.train(*batch, private=True, class_mask=PRESENT)


def test_an_app_writes_the_mask_into_the_model_file_at_the_manifests_offset(
    variant, tmp_path
) -> None:
    """The iOS route: patch the class_offset bias of a copy of the file at the offset the
    manifest gives, compile, update with plain MLUpdateTask: the same update as the
    restricted step."""
    from devicetune.export.coreml import coreml_entry, write_coreml
    from devicetune.model.class_mask import class_logit_offset

    v = variant(head="mlp", optimizer="sgd")
    path = write_coreml(converted(v)[1], tmp_path / "Model.mlmodel")
    entry = coreml_entry(converted(v)[1], path)
    assert entry.class_offset_layer == CLASS_OFFSET
    data = bytearray(path.read_bytes())
    at = entry.class_offset_bias_offset
    assert data[at : at + 24] == bytes(24)  # six float32 zeros
    data[at : at + 24] = class_logit_offset(PRESENT).astype("<f4").tobytes()
    (tmp_path / "masked.mlmodel").write_bytes(bytes(data))

    patched = CoreMLReference(tmp_path / "masked.mlmodel")
    x, y = _device_data(v)
    features = patched.features(x)
    assert np.all(patched.predict(features)[:, PRESENT == 0] == 0.0)
    patched.update(features, y, epochs=1, shuffle_seed=4)
    original = CoreMLReference(path)
    original.update(features, y, epochs=1, shuffle_seed=4, class_mask=PRESENT)
    for name, tensor in original.get_weights().items():
        np.testing.assert_array_equal(patched.get_weights()[name], tensor, err_msg=name)


@pytest.mark.parametrize("rate_factor", [1.0, 1.5])
def test_core_ml_update_checks_allow_adams_rounding_but_not_a_wrong_rate(
        variant, tmp_path, rate_factor: float) -> None:
    """Both Core ML update checks (plain and masked) allow Adam half of one step, as the
    TFLite check does (float32 TensorFlow against the float64 reference: the quickstart's
    masked update differed by 1.5e-4); a Core ML model updating at 1.5 times the rate
    still fails them."""
    from devicetune.export.verify import coreml_parity

    v = variant(head="linear", optimizer="adam")
    reference = CoreMLReference(converted(v)[1])
    reference.update_parameters.learning_rate.default *= rate_factor
    x, y = examples(v.model.input_shape)
    lite = LiteRTModel(v.flatbuffer)
    checks = {c.name: c for c in coreml_parity(reference, v.program(), lite.get_weights(),
                                                x, y, seed=1, scratch=tmp_path)}
    for name in ("coreml.update.1_epoch", "coreml.update_masked.1_epoch"):
        assert "half of one step" in checks[name].note, checks[name]
        assert checks[name].passed == (rate_factor == 1.0), checks[name]
