"""The backbone: a Keras feature extractor that ships frozen inside every artifact.

A backbone is a built-in architecture or a user's `.keras` model whose output is the
embedding. Its last Dense layers may be declared trainable; they are then cut off and
join the head as plain weights, and the frozen part ends where they began.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from devicetune.errors import ConfigError, ExportError

if TYPE_CHECKING:
    import keras

# Layer types every devicetune export path (LiteRT and the Core ML reference) handles.
SUPPORTED_LAYERS = frozenset({
    "InputLayer", "Conv1D", "Conv2D", "DepthwiseConv2D", "Dense", "BatchNormalization",
    "MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalMaxPooling1D",
    "GlobalMaxPooling2D", "Flatten", "Dropout", "Activation", "ReLU", "Normalization",
    "Rescaling", "Add", "ZeroPadding1D", "ZeroPadding2D", "Reshape",
})
SUPPORTED_ACTIVATIONS = frozenset({"relu", "linear", "sigmoid", "tanh", "relu6", "softmax"})
# Activations a trainable Dense layer may have: the closed-form gradient covers these.
TRAINABLE_ACTIVATIONS = frozenset({"relu", "linear"})


@dataclass(frozen=True)
class DenseParams:
    """One trainable dense layer: ``activation(x @ kernel + bias)``."""

    kernel: np.ndarray  # (in, out) float32
    bias: np.ndarray  # (out,) float32
    activation: str  # "relu" or "linear"
    source: str = ""  # the Keras layer it came from, when it came from the backbone

    @property
    def units(self) -> int:
        return int(self.kernel.shape[1])


def builtin_backbone(architecture: str, input_shape: Sequence[int], embedding_dim: int,
                     seed: int) -> keras.Model:
    """A small, export-friendly backbone: ``conv1d_small`` for sensor windows
    ``(steps, channels)``, ``conv2d_small`` for spectrograms or images ``(h, w, c)``,
    ``dense_small`` (an MLP) for feature vectors ``(features,)``."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    shape = tuple(int(d) for d in input_shape)
    if architecture == "dense_small":
        if len(shape) != 1:
            raise ConfigError(f"model.input_shape = {list(shape)}: dense_small takes a "
                              "feature vector (features,), e.g. [43]")
        stack = [
            layers.Normalization(axis=-1, name="normalize"),
            layers.Dense(128, activation="relu", name="dense1"),
        ]
    elif architecture == "conv1d_small":
        if len(shape) != 2:
            raise ConfigError(f"model.input_shape = {list(shape)}: conv1d_small takes "
                              "(steps, channels), e.g. [128, 9]")
        stack = [
            layers.Normalization(axis=-1, name="normalize"),
            layers.Conv1D(32, 5, activation="relu", name="conv1"),
            layers.BatchNormalization(name="bn1"),
            layers.MaxPooling1D(2, name="pool1"),
            layers.Conv1D(64, 5, activation="relu", name="conv2"),
            layers.BatchNormalization(name="bn2"),
            layers.MaxPooling1D(2, name="pool2"),
            layers.Conv1D(64, 3, activation="relu", name="conv3"),
            layers.GlobalAveragePooling1D(name="gap"),
        ]
    elif architecture == "conv2d_small":
        if len(shape) != 3:
            raise ConfigError(f"model.input_shape = {list(shape)}: conv2d_small takes "
                              "(height, width, channels), e.g. [32, 32, 1]")
        stack = [
            layers.Normalization(axis=-1, name="normalize"),
            layers.Conv2D(16, 3, activation="relu", padding="same", name="conv1"),
            layers.BatchNormalization(name="bn1"),
            layers.MaxPooling2D(2, name="pool1"),
            layers.Conv2D(32, 3, activation="relu", padding="same", name="conv2"),
            layers.BatchNormalization(name="bn2"),
            layers.MaxPooling2D(2, name="pool2"),
            layers.Conv2D(64, 3, activation="relu", padding="same", name="conv3"),
            layers.GlobalAveragePooling2D(name="gap"),
        ]
    else:
        raise ConfigError(f"model.backbone.architecture = {architecture!r}: allowed "
                          "'conv1d_small', 'conv2d_small', 'dense_small'")
    inputs = keras.Input(shape, name="x")
    hidden = inputs
    for layer in stack:
        hidden = layer(hidden)
    embedding = layers.Dense(embedding_dim, activation="relu", name="embedding")(hidden)
    return keras.Model(inputs, embedding, name=architecture)


def load_backbone(path: Path) -> keras.Model:
    """Load a user's `.keras` backbone (its output is the embedding).

    Raises:
        ConfigError: the file is missing or is not a loadable Keras model.
    """
    import keras

    if not Path(path).exists():
        raise ConfigError(f"model.backbone.path = {str(path)!r}: no such file")
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as exc:  # Keras raises many types for a bad archive
        raise ConfigError(f"model.backbone.path = {str(path)!r}: not a loadable .keras "
                          f"model ({type(exc).__name__}: {exc})") from None
    if not isinstance(model, keras.Model) or len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ConfigError(f"model.backbone.path = {str(path)!r}: the backbone must have one "
                          "input and one output (the embedding)")
    return model


def check_exportable(model: keras.Model) -> None:
    """Refuse, naming the layer, anything the export paths cannot carry.

    Raises:
        ExportError: a layer type or activation is not supported.
    """
    for layer in _all_layers(model):
        kind = type(layer).__name__
        if kind not in SUPPORTED_LAYERS:
            raise ExportError(
                f"layer {layer.name!r} ({kind}) cannot be exported: devicetune backbones "
                f"use {', '.join(sorted(SUPPORTED_LAYERS - {'InputLayer'}))}; replace it "
                "with one of those (e.g. Conv1D instead of a recurrent layer) and save "
                "the backbone again"
            )
        activation = _activation_name(layer)
        if activation is not None and activation not in SUPPORTED_ACTIVATIONS:
            raise ExportError(
                f"layer {layer.name!r} ({kind}) uses activation {activation!r}: use one of "
                f"{', '.join(sorted(SUPPORTED_ACTIVATIONS))}"
            )


def split_trainable(model: keras.Model, trainable_dense_layers: int
                    ) -> tuple[keras.Model, list[DenseParams]]:
    """Cut the last ``trainable_dense_layers`` Dense layers off the backbone.

    Returns:
        The frozen feature extractor (ending where the first cut layer began) and the cut
        layers' weights, in order.

    Raises:
        ExportError: the model's tail is not a chain of Dense layers that can train.
    """
    import keras

    if trainable_dense_layers == 0:
        return model, []
    tail: list[Any] = []
    tensor = model.outputs[0]
    while len(tail) < trainable_dense_layers:
        layer = _producer(model, tensor)
        kind = type(layer).__name__
        if kind == "Dropout":
            tensor = layer.input
            continue
        if kind != "Dense":
            raise ExportError(
                f"model.backbone.trainable_dense_layers = {trainable_dense_layers}: layer "
                f"{layer.name!r} ({kind}) sits where a Dense layer was expected; the last "
                "layers of the backbone must be Dense (Dropout between them is allowed)"
            )
        activation = _activation_name(layer) or "linear"
        if activation not in TRAINABLE_ACTIVATIONS:
            raise ExportError(
                f"layer {layer.name!r} uses activation {activation!r}; a trainable Dense "
                "layer must use 'relu' or 'linear'"
            )
        kernel, bias = (w.astype(np.float32) for w in _dense_weights(layer))
        tail.append(DenseParams(kernel, bias, activation, source=layer.name))
        tensor = layer.input
    tail.reverse()
    frozen = keras.Model(model.inputs, tensor, name=f"{model.name}_frozen")
    return frozen, tail


def split_classifier(model: keras.Model, hidden_units: int | None, num_classes: int
                     ) -> tuple[keras.Model, list[DenseParams]] | None:
    """The model's own trained classifier as the head, if its last layers match it.

    A match is a Dense layer of ``num_classes`` units (softmax or linear; a Softmax or
    softmax Activation layer after it is fine), preceded, for an MLP head
    (``hidden_units`` set), by a ReLU Dense layer of ``hidden_units``. Dropout between
    them is skipped.

    Returns:
        The model up to the head (its output is the head's input) and the head's layers,
        first to last; None when the last layers do not match.
    """
    import keras

    tensor = model.outputs[0]
    layer = _producer_or_none(model, tensor)
    while layer is not None and _is_softmax_or_dropout(layer):
        tensor = layer.input
        layer = _producer_or_none(model, tensor)
    wanted = [("classifier", num_classes, ("softmax", "linear"))]
    if hidden_units is not None:
        wanted.append(("hidden", hidden_units, ("relu",)))
    head: list[DenseParams] = []
    for _, units, activations in wanted:
        while layer is not None and type(layer).__name__ == "Dropout":
            tensor = layer.input
            layer = _producer_or_none(model, tensor)
        if layer is None or type(layer).__name__ != "Dense" or layer.units != units:
            return None
        activation = _activation_name(layer) or "linear"
        if activation not in activations:
            return None
        kernel, bias = (w.astype(np.float32) for w in _dense_weights(layer))
        head.append(DenseParams(kernel, bias, "relu" if activation == "relu" else "linear",
                                source=layer.name))
        tensor = layer.input
        layer = _producer_or_none(model, tensor)
    if layer is None or len(tensor.shape) != 2:
        return None  # the classifier sits on the input itself, or on a non-flat tensor
    head.reverse()
    return keras.Model(model.inputs, tensor, name=f"{model.name}_features"), head


def unadapted_normalization(model: keras.Model) -> list[str]:
    """Names of Normalization layers still at their initial mean 0 and variance 1."""
    names = []
    for layer in _all_layers(model):
        if type(layer).__name__ != "Normalization":
            continue
        mean = getattr(layer, "mean", None)
        variance = getattr(layer, "variance", None)
        if mean is None or variance is None:
            continue
        if np.all(np.asarray(mean) == 0) and np.all(np.asarray(variance) == 1):
            names.append(layer.name)
    return names


def freeze(feature_model: keras.Model) -> Any:
    """The feature extractor as a TensorFlow concrete function with constant weights.

    Keras 3 variables captured by a `tf.Module` come out uninitialised in LiteRT, so the
    frozen part becomes constants (DESIGN.md); the batch dimension stays dynamic.
    """
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    spec = tf.TensorSpec([None, *feature_model.inputs[0].shape[1:]], tf.float32, name="x")
    function = tf.function(lambda x: feature_model(x, training=False))
    return convert_variables_to_constants_v2(function.get_concrete_function(spec))


def _all_layers(model: Any) -> list[Any]:
    found = []
    for layer in model.layers:
        if hasattr(layer, "layers") and type(layer).__name__ in ("Functional", "Sequential"):
            found.extend(_all_layers(layer))
        else:
            found.append(layer)
    return found


def _activation_name(layer: Any) -> str | None:
    activation = getattr(layer, "activation", None)
    if activation is None:
        return None
    return getattr(activation, "__name__", str(activation))


def _dense_weights(layer: Any) -> tuple[np.ndarray, np.ndarray]:
    weights = layer.get_weights()
    if len(weights) == 2:
        return weights[0], weights[1]
    return weights[0], np.zeros(weights[0].shape[1], dtype=np.float32)


def _is_softmax_or_dropout(layer: Any) -> bool:
    kind = type(layer).__name__
    return kind in ("Softmax", "Dropout") or (
        kind == "Activation" and _activation_name(layer) == "softmax")


def _producer_or_none(model: Any, tensor: Any) -> Any:
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        return None
    layer = history.operation
    return None if type(layer).__name__ == "InputLayer" else layer


def _producer(model: Any, tensor: Any) -> Any:
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        raise ExportError(f"cannot trace the backbone {model.name!r} back from its output")
    return history.operation
