"""The Core ML reference interpreter: an updatable ``.mlmodel`` run in numpy, from its spec.

There is no Core ML runtime on Linux. This interpreter reads the protobuf itself (not
devicetune's head objects), runs every layer with the kernels of `coreml_layers`, and
updates the updatable layers as `MLUpdateTask` does (`coreml_training`). CI checks the
iOS artifact with it, and the fleet simulation runs simulated iPhones on it.

Interface (``data`` is either inputs ``x`` of shape ``(N, *input_shape)`` or features of
shape ``(N, feature_dim)``; an array shaped like the model's input is taken as ``x``)::

    ref = CoreMLReference("Model.mlmodel")     # or a Model_pb2.Model spec
    ref.classes, ref.input_shape, ref.feature_dim, ref.weight_names, ref.batch_size
    ref.features(x) -> (N, F)                  # output of the frozen prefix: compute once
    ref.predict(data) -> (N, C) probabilities  # the app's `probabilities` output
    ref.predict_labels(data) -> (N,) str       # the app's `label` output
    ref.evaluate(data, labels) -> (mean loss, accuracy)
    ref.update(data, labels, epochs=None, batch_size=None, learning_rate=None,
               shuffle_seed=None) -> per-epoch mean losses   # one MLUpdateTask
    ref.get_weights() -> {"dense0_kernel": (in, out), "dense0_bias": (out,), ...}
    ref.set_weights(weights)                   # same names and layout (TFLite's)
    ref.save(path)                             # the updated model, as the app writes it

``labels`` are class indices or class label strings. ``None`` parameters take the model's
defaults; values outside the ranges the model allows raise `ConfigError`. Epoch ``e``
visits the examples in the order of the ``e``-th ``rng.permutation(N)`` of
``np.random.default_rng(shuffle_seed)`` (``shuffle_seed`` may also be a Generator; None
means the spec's seed). For the kNN pipeline see `devicetune.export.coreml_knn`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from devicetune.device.coreml_files import load_spec, write_spec
from devicetune.device.coreml_layers import InnerProduct, compile_layer, run_layers
from devicetune.device.coreml_training import DenseHead, Optimizer, UpdateParameters, train
from devicetune.errors import ArtifactError, ExportError
from devicetune.model.class_mask import class_logit_offset

if TYPE_CHECKING:
    from coremltools.proto import Model_pb2

CHUNK = 256  # examples per pass through the backbone: bounds im2col memory


class CoreMLReference:
    """An updatable Core ML neural network classifier, run and trained in numpy.

    Args:
        model: path of an ``.mlmodel`` or its spec (copied; the original is not changed).

    Raises:
        ArtifactError: not an updatable neural network classifier.
        ExportError: the spec has a layer type without a reference kernel (named).
    """

    def __init__(self, model: str | Path | Model_pb2.Model) -> None:
        loaded = load_spec(model)
        spec = type(loaded)()
        spec.CopyFrom(loaded)
        if spec.WhichOneof("Type") != "neuralNetworkClassifier" or not spec.isUpdatable:
            raise ArtifactError(f"the Core ML model is a {spec.WhichOneof('Type')} (updatable: "
                                f"{spec.isUpdatable}); CoreMLReference runs updatable neural "
                                "network classifiers")
        self._spec = spec
        nn = spec.neuralNetworkClassifier
        self.classes = [str(c) for c in (nn.stringClassLabels.vector
                                         or nn.int64ClassLabels.vector)]
        self._index = {c: i for i, c in enumerate(self.classes)}
        source = spec.description.input[0]
        self.input_name = source.name
        self.input_shape = tuple(int(d) for d in source.type.multiArrayType.shape)
        self._steps = [(list(layer.input), list(layer.output), compile_layer(layer))
                       for layer in nn.layers]
        first = next((i for i, layer in enumerate(nn.layers) if layer.isUpdatable), None)
        if first is None:
            raise ArtifactError("the Core ML model marks no layer updatable")
        self._prefix = self._steps[:first]
        self._features_blob = nn.layers[first].input[0]
        losses = nn.updateParams.lossLayers
        if len(losses) != 1 or not losses[0].HasField("categoricalCrossEntropyLossLayer"):
            raise ExportError("the Core ML reference trains with one categorical "
                              "cross-entropy loss; the model has another")
        self._probabilities_blob = losses[0].categoricalCrossEntropyLossLayer.input
        self._head = DenseHead.from_layers(nn.layers[first:], self._features_blob,
                                           self._probabilities_blob)
        self._kernels = {layer.name: kernel for layer, (_, _, kernel)
                         in zip(nn.layers, self._steps, strict=True)
                         if isinstance(kernel, InnerProduct)}
        self.update_parameters = UpdateParameters.from_spec(nn.updateParams)
        self._trainable = [layer for layer in self._head.layers if layer.trainable]
        self.weight_names = [f"dense{i}_{part}" for i in range(len(self._trainable))
                             for part in ("kernel", "bias")]

    # ------------------------------------------------------------------ properties

    @property
    def feature_dim(self) -> int:
        return int(self._head.layers[0].kernel.shape[0])

    @property
    def batch_size(self) -> int:
        return int(self.update_parameters.batch_size.default)

    @property
    def updatable_layers(self) -> list[str]:
        return [layer.name for layer in self._trainable]

    # --------------------------------------------------------------------- running

    def features(self, x: np.ndarray) -> np.ndarray:
        """The frozen prefix's output (the first updatable layer's input), ``(N, F)``."""
        examples = self._examples(x)
        out = [self._run(examples[i:i + CHUNK], self._prefix, self._features_blob)
               for i in range(0, len(examples), CHUNK)]
        return np.concatenate(out).reshape(len(examples), -1) if out else np.zeros(
            (0, self.feature_dim), np.float32)

    def predict(self, data: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, C)``: the whole network for ``x``, the trainable
        chain for features."""
        data = np.asarray(data, np.float32)
        if self._is_features(data):
            return self._head.forward(data)[2].astype(np.float32)
        examples = self._examples(data)
        out = [self._run(examples[i:i + CHUNK], self._steps, self._probabilities_blob)
               for i in range(0, len(examples), CHUNK)]
        return np.concatenate(out).reshape(len(examples), -1)

    def predict_labels(self, data: np.ndarray) -> np.ndarray:
        """The class label Core ML reports (the most probable one)."""
        return np.asarray(self.classes)[np.argmax(self.predict(data), axis=1)]

    def evaluate(self, data: np.ndarray, labels: Sequence[Any] | np.ndarray
                 ) -> tuple[float, float]:
        """Mean cross-entropy and accuracy on labelled examples."""
        probabilities = self.predict(data).astype(np.float64)
        y = self._label_indices(labels, len(probabilities))
        picked = probabilities[np.arange(len(y)), y]
        return (float(-np.log(picked + 1e-12).mean()),
                float((probabilities.argmax(axis=1) == y).mean()))

    # --------------------------------------------------------------------- updating

    def update(self, data: np.ndarray, labels: Sequence[Any] | np.ndarray,
               epochs: int | None = None, batch_size: int | None = None,
               learning_rate: float | None = None,
               shuffle_seed: int | np.random.Generator | None = None,
               on_epoch: Callable[[int], None] | None = None,
               class_mask: np.ndarray | None = None) -> list[float]:
        """One `MLUpdateTask`: train the updatable layers; per-epoch mean losses.
        ``on_epoch(epoch)`` runs at each epoch's end with the weights of that moment
        (the task's progress handler); it may call `evaluate`.

        ``class_mask`` (1 per class the device holds) restricts the softmax (FedRS) as an
        app does on iOS: the frozen ``class_offset`` layer's bias holds the absent
        classes' shift during this update, and zeros again after it.

        Raises:
            ConfigError: a parameter outside the model's allowed range, or an unknown label.
            ArtifactError: ``class_mask`` for a model without the ``class_offset`` layer.
        """
        params = self.update_parameters
        epochs = int(params.epochs.pick("epochs", epochs))
        batch = int(params.batch_size.pick("batch_size", batch_size))
        rate = float(params.learning_rate.pick("learning_rate", learning_rate))
        features = self._as_features(np.asarray(data, np.float32))
        y = self._label_indices(labels, len(features))
        rng = (shuffle_seed if isinstance(shuffle_seed, np.random.Generator)
               else np.random.default_rng(params.seed if shuffle_seed is None
                                          else shuffle_seed))
        optimizer = Optimizer(params, rate, [p.shape for p in self._head.params()])
        def epoch_end(epoch: int) -> None:
            self._sync_kernels()
            if on_epoch is not None:
                on_epoch(epoch)

        offset = self._class_offset() if class_mask is not None else None
        if offset is not None:
            offset.bias[...] = class_logit_offset(np.asarray(class_mask, np.float64))
        try:
            losses = train(self._head, features.astype(np.float64), y, optimizer, epochs,
                           batch, params.shuffle, rng, on_epoch=epoch_end)
        finally:
            if offset is not None:
                offset.bias[...] = 0.0
            self._sync_kernels()
        return losses

    def get_weights(self) -> dict[str, np.ndarray]:
        """The updatable layers' weights: ``dense{i}_kernel`` ``(in, out)`` and
        ``dense{i}_bias``, the TFLite artifact's names and layout."""
        return {name: tensor.astype(np.float32)
                for name, tensor in zip(self.weight_names, self._trainable_params(),
                                        strict=True)}

    def set_weights(self, weights: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> None:
        """Load weights by name (or as a list in `weight_names` order).

        Raises:
            ValueError: a tensor is missing or has the wrong shape.
        """
        tensors = ([weights[name] for name in self.weight_names]
                   if isinstance(weights, Mapping) else list(weights))
        targets = self._trainable_params()
        if len(tensors) != len(targets):
            raise ValueError(f"expected {len(targets)} tensors ({self.weight_names}), "
                             f"got {len(tensors)}")
        for name, target, tensor in zip(self.weight_names, targets, tensors, strict=True):
            tensor = np.asarray(tensor, np.float64)
            if tensor.shape != target.shape:
                raise ValueError(f"{name}: shape {tensor.shape}, expected {target.shape}")
            target[...] = tensor
        self._sync_kernels()

    # ---------------------------------------------------------------------- saving

    @property
    def spec(self) -> Model_pb2.Model:
        """The model with the current weights, as a fresh spec."""
        from coremltools.proto import Model_pb2

        spec = Model_pb2.Model()
        spec.CopyFrom(self._spec)
        layers = {layer.name: layer for layer in spec.neuralNetworkClassifier.layers}
        for dense in self._head.layers:
            params = layers[dense.name].innerProduct
            params.weights.ClearField("floatValue")
            params.weights.ClearField("float16Value")
            params.weights.floatValue.extend(dense.kernel.T.astype(np.float32).ravel())
            if params.hasBias:
                params.bias.ClearField("floatValue")
                params.bias.ClearField("float16Value")
                params.bias.floatValue.extend(dense.bias.astype(np.float32))
        return spec

    def save(self, path: str | Path) -> Path:
        """Write the updated model (what an app saves after `MLUpdateTask`)."""
        return write_spec(self.spec, path)

    # --------------------------------------------------------------------- helpers

    def _class_offset(self) -> Any:
        from devicetune.export.coreml import CLASS_OFFSET

        for layer in self._head.layers:
            if layer.name == CLASS_OFFSET and not layer.trainable:
                return layer
        raise ArtifactError(f"the Core ML model has no frozen {CLASS_OFFSET!r} layer before "
                            "its softmax, so it cannot restrict the softmax "
                            "(server.class_mask); rebuild it with this devicetune")

    def _trainable_params(self) -> list[np.ndarray]:
        return [t for layer in self._trainable for t in (layer.kernel, layer.bias)]

    def _sync_kernels(self) -> None:
        """The forward kernels run in float32 on the weights Core ML would store."""
        for dense in self._head.layers:
            kernel = self._kernels[dense.name]
            kernel.kernel = dense.kernel.astype(np.float32)
            kernel.bias = dense.bias.astype(np.float32)

    def _run(self, examples: np.ndarray, steps: list[Any], target: str) -> np.ndarray:
        blobs = run_layers(steps, {self.input_name: examples}, stop_at=target)
        return blobs[target]

    def _examples(self, x: np.ndarray) -> np.ndarray:
        """``(N, *input_shape)`` with the model's own leading 1 (``x`` may omit it)."""
        x = np.asarray(x, np.float32)
        if x.shape[1:] == self.input_shape:
            return x
        if self.input_shape[:1] == (1,) and x.shape[1:] == self.input_shape[1:]:
            return x.reshape(len(x), *self.input_shape)
        raise ValueError(f"x has shape {x.shape}; the model takes (N, "
                         f"{', '.join(map(str, self.input_shape[1:]))})")

    def _is_features(self, data: np.ndarray) -> bool:
        shape = data.shape[1:]
        is_input = shape in (self.input_shape, self.input_shape[1:])
        return not is_input and shape == (self.feature_dim,)

    def _as_features(self, data: np.ndarray) -> np.ndarray:
        return data if self._is_features(data) else self.features(data)

    def _label_indices(self, labels: Sequence[Any] | np.ndarray, n: int) -> np.ndarray:
        from devicetune.errors import ConfigError

        labels = np.asarray(labels)
        if len(labels) != n:
            raise ValueError(f"{len(labels)} labels for {n} examples")
        if labels.dtype.kind in "iu":
            if labels.size and (labels.min() < 0 or labels.max() >= len(self.classes)):
                raise ConfigError(f"label index out of range 0..{len(self.classes) - 1}")
            return labels.astype(np.int64)
        unknown = sorted({str(v) for v in labels} - set(self._index))
        if unknown:
            raise ConfigError(f"labels {unknown} are not classes of the Core ML model "
                              f"({self.classes})")
        return np.array([self._index[str(v)] for v in labels], np.int64)
