"""The iOS artifact: an updatable Core ML neural network classifier.

The frozen backbone is converted by coremltools (a constant concrete function to the
``neuralnetwork`` format; ``mlprogram`` models cannot be updatable, DESIGN.md). The
trainable dense layers are then appended with `NeuralNetworkBuilder` as ``innerProduct``
layers, because the converter turns a Keras Dense into ``batchedMatmul``, which Core ML
cannot update. The model's interface::

    x             input, (1, *input_shape) float32: one example, as the app passes it
    probabilities output, class label -> probability
    label         output, the most probable class label (also the training target)

Inside, the backbone's output is expanded to ``(1, F, 1, 1)`` (blob ``features``) so that
the inner products and the ``softmax`` (which normalises axis -3) see the layout the
format documents; that expand sits above every updatable layer, since Core ML refuses a
non-backpropagable layer between an updatable layer and the loss.

Between the last updatable inner product and the softmax sits ``class_offset``, a frozen
(not updatable) inner product with an identity kernel and a zero bias: the logits pass
unchanged. It is where the restricted softmax (FedRS, model/step) lives on iOS: a device
that trains only the classes it holds writes ``ABSENT_CLASS_LOGIT`` into the bias of the
classes it lacks before its update and zeros after. A mask input added to the logits
would be simpler, but Core ML's validator refuses it: only convolution, inner product,
flatten, pooling, batchnorm and ReLU/sigmoid/tanh activations may sit between an
updatable layer and the loss (coremltools' mlmodel/src/Validation/NeuralNetwork:
``isLayerSupportedForBackprop``), and an ``add`` layer is none of those.

The optional kNN variant (``ModelKNN.mlmodel``) lives in `coreml_knn`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devicetune.artifacts.manifest import CoreMLEntry, KNNEntry, RangeEntry, sha256_file
from devicetune.device.coreml_files import CLASS_OFFSET, import_coremltools, quiet, write_spec
from devicetune.device.coreml_training import Allowed
from devicetune.errors import ExportError
from devicetune.export.coreml_rules import updatable_problems

if TYPE_CHECKING:
    from coremltools.proto import Model_pb2

    from devicetune.config import ExportConfig
    from devicetune.model.trainable import TrainableModel

COREML_FILE = "Model.mlmodel"
INPUT = "x"
FEATURES = "features"
EMBEDDING = "embedding"
PROBABILITIES = "probabilities"
LABEL = "label"
LOSS = "loss"
KNN_DEFAULT_LABEL = "unknown"
LOSS_NAME = "categorical_cross_entropy"
# Ranges the app may tune within (MLModelConfiguration.parameters); the defaults come
# from the HeadSpec and always lie inside.
MAX_BATCH_SIZE = 1024
MAX_EPOCHS = 1000


def convert_backbone(feature_model: Any) -> Model_pb2.Model:
    """A frozen Keras feature extractor as a Core ML ``neuralNetwork`` spec that takes
    one example, ``x`` of shape ``(1, *input_shape)``.

    Raises:
        ExportError: coremltools cannot convert an op; the message names the Keras layer.
    """
    from devicetune.model.backbone import freeze

    import_coremltools()
    import coremltools as ct

    frozen = freeze(feature_model)
    shape = (1, *(int(d) for d in feature_model.inputs[0].shape[1:]))
    try:
        with quiet():
            mlmodel = ct.convert([frozen], source="tensorflow", convert_to="neuralnetwork",
                                 inputs=[ct.TensorType(name=INPUT, shape=shape)])
    except Exception as exc:  # coremltools raises NotImplementedError, ValueError, ...
        raise ExportError(_conversion_message(exc, feature_model)) from None
    return mlmodel.get_spec()


def build_classifier_spec(backbone: Model_pb2.Model, model: TrainableModel
                          ) -> Model_pb2.Model:
    """The updatable classifier: the converted backbone's layers, then an inner product
    per trainable dense layer of ``model`` (its weights; Core ML stores the kernel
    ``(out, in)``), ReLU between them, softmax, loss, the HeadSpec's optimizer."""
    import numpy as np

    import_coremltools()
    from coremltools.models.neural_network import AdamParams, NeuralNetworkBuilder, SgdParams

    spec = _classifier_shell(backbone)
    builder = NeuralNetworkBuilder(spec=spec)
    previous = _expand_to_rank4(builder, _output_name(backbone), FEATURES)
    names = []
    for i, layer in enumerate(model.layers):
        name = f"dense{i}"
        last = i == len(model.layers) - 1
        output = "logits" if last else f"{name}_out"
        builder.add_inner_product(
            name, W=np.ascontiguousarray(layer.kernel.T, np.float32),
            b=np.asarray(layer.bias, np.float32), input_channels=layer.kernel.shape[0],
            output_channels=layer.units, has_bias=True, input_name=previous,
            output_name=output)
        names.append(name)
        previous = output
        if not last and layer.activation == "relu":
            previous = _relu(builder, f"{name}_relu", previous)
    classes = len(model.classes)
    builder.add_inner_product(
        CLASS_OFFSET, W=np.eye(classes, dtype=np.float32), b=np.zeros(classes, np.float32),
        input_channels=classes, output_channels=classes, has_bias=True,
        input_name=previous, output_name="restricted_logits")
    builder.add_softmax("softmax", input_name="restricted_logits", output_name=PROBABILITIES)
    builder.set_class_labels(model.classes, predicted_feature_name=LABEL,
                             prediction_blob=PROBABILITIES)
    builder.make_updatable(names)
    with quiet():
        builder.set_categorical_cross_entropy_loss(name=LOSS, input=PROBABILITIES)
    head = model.spec
    optimizer = head.optimizer
    learning_rate = float(optimizer.learning_rate)
    if optimizer.name == "adam":
        params = AdamParams(lr=learning_rate, batch=head.batch_size,
                            beta1=optimizer.beta_1, beta2=optimizer.beta_2,
                            eps=optimizer.epsilon)
        params.set_lr(learning_rate, 0.0, max(1.0, learning_rate))
        builder.set_adam_optimizer(params)
        tuned = builder.nn_spec.updateParams.optimizer.adamOptimizer
    else:
        params = SgdParams(lr=learning_rate, batch=head.batch_size,
                           momentum=optimizer.momentum)
        params.set_lr(learning_rate, 0.0, max(1.0, learning_rate))
        builder.set_sgd_optimizer(params)
        tuned = builder.nn_spec.updateParams.optimizer.sgdOptimizer
    # Ranges rather than the builder's one-value sets, so an app can pick any batch size
    # or epoch count (Core ML validates both forms).
    _int_range(tuned.miniBatchSize, head.batch_size, 1, max(MAX_BATCH_SIZE, head.batch_size))
    _int_range(builder.nn_spec.updateParams.epochs, head.epochs, 1, MAX_EPOCHS)
    builder.set_shuffle()
    _describe(spec, model)
    return spec


def class_offset_bias_offset(spec: Model_pb2.Model) -> int | None:
    """Where, in the ``.mlmodel`` file `write_coreml` writes, the ``class_offset`` bias
    starts: one little-endian float32 per class. An app restricts an update to its
    classes by writing ``ABSENT_CLASS_LOGIT`` there for the classes it lacks in a copy of
    the file, then compiling it; no protobuf parser needed. None without the layer."""
    import struct

    from coremltools.proto import Model_pb2

    marked = Model_pb2.Model()
    marked.CopyFrom(spec)
    layer = next((layer for layer in marked.neuralNetworkClassifier.layers
                  if layer.name == CLASS_OFFSET), None)
    if layer is None:
        return None
    count = len(layer.innerProduct.bias.floatValue)
    # Distinct values of the same width: the packed floats sit where the zeros sit.
    sentinel = [1.0e30 + 1.0e24 * i for i in range(count)]
    layer.innerProduct.bias.ClearField("floatValue")
    layer.innerProduct.bias.floatValue.extend(sentinel)
    data = marked.SerializeToString()
    at = data.find(struct.pack(f"<{count}f", *sentinel))
    if at < 0 or data.find(struct.pack(f"<{count}f", *sentinel), at + 1) >= 0 or \
            len(data) != spec.ByteSize():
        raise ExportError("cannot locate the class_offset bias in the serialized model")
    return at


def write_coreml(spec: Model_pb2.Model, path: Path) -> Path:
    """Save a spec as an ``.mlmodel`` file (the protobuf, as Xcode reads it)."""
    return write_spec(spec, path)


def coreml_entry(spec: Model_pb2.Model, path: Path, knn: KNNEntry | None = None
                 ) -> CoreMLEntry:
    """The manifest entry describing the updatable model and what the app may tune."""
    nn = spec.neuralNetworkClassifier
    params = nn.updateParams
    kind = params.optimizer.WhichOneof("OptimizerType")
    optimizer = getattr(params.optimizer, kind)
    names = {"learningRate": "learning_rate", "momentum": "momentum", "beta1": "beta_1",
             "beta2": "beta_2", "eps": "epsilon", "miniBatchSize": "batch_size"}
    parameters = {}
    for field, name in names.items():
        if field in {f.name for f in optimizer.DESCRIPTOR.fields}:
            parameters[name] = _range_entry(getattr(optimizer, field))
    parameters["epochs"] = _range_entry(params.epochs)
    return CoreMLEntry(
        file=Path(path).name, sha256=sha256_file(path),
        updatable_layers=[layer.name for layer in nn.layers if layer.isUpdatable],
        loss=LOSS_NAME, optimizer="adam" if kind == "adamOptimizer" else "sgd",
        parameters=parameters,
        training_inputs=[t.name for t in spec.description.trainingInput],
        shuffle=bool(params.shuffle.defaultValue), knn=knn,
        class_offset_layer=CLASS_OFFSET if CLASS_OFFSET in {
            layer.name for layer in nn.layers} else None,
        class_offset_bias_offset=class_offset_bias_offset(spec),
    )


@dataclass(frozen=True)
class CoreMLArtifacts:
    """What `build_coreml` wrote, and its manifest entry."""

    path: Path
    knn_path: Path | None
    entry: CoreMLEntry

    @property
    def files(self) -> dict[str, str]:
        """File name -> sha256, for ``manifest.files``."""
        files = {self.path.name: self.entry.sha256}
        if self.entry.knn is not None:
            files[self.entry.knn.file] = self.entry.knn.sha256
        return files


def build_coreml(model: TrainableModel, export: ExportConfig, out_dir: Path
                 ) -> CoreMLArtifacts:
    """Convert the backbone once, then write ``Model.mlmodel`` (and ``ModelKNN.mlmodel``
    when ``export.coreml_knn``).

    Raises:
        ExportError: the backbone cannot be converted.
    """
    from devicetune.export.quantize import quantize_coreml_spec

    backbone = convert_backbone(model.feature_model)
    # Before the head is appended: only the frozen layers are quantized (export/quantize).
    quantize_coreml_spec(backbone, export.quantize)
    spec = build_classifier_spec(backbone, model)
    problems = updatable_problems(spec)
    if problems:  # a devicetune bug rather than a user error: say what broke
        raise ExportError(f"the Core ML model is not a valid updatable model: "
                          f"{'; '.join(problems)}")
    path = write_coreml(spec, Path(out_dir) / COREML_FILE)
    knn_path, knn = None, None
    if export.coreml_knn:
        from devicetune.export.coreml_knn import COREML_KNN_FILE, build_knn_spec, knn_entry

        tail = model.layers[:model.spec.backbone.trainable_dense_layers]
        knn_spec = build_knn_spec(backbone, tail, model.feature_dim, export.knn_neighbors)
        knn_path = write_coreml(knn_spec, Path(out_dir) / COREML_KNN_FILE)
        knn = knn_entry(knn_spec, knn_path)
    return CoreMLArtifacts(path, knn_path, coreml_entry(spec, path, knn))


# ----------------------------------------------------------------------------- helpers


def _classifier_shell(backbone: Model_pb2.Model) -> Model_pb2.Model:
    from coremltools.proto import Model_pb2, NeuralNetwork_pb2

    if backbone.WhichOneof("Type") != "neuralNetwork":
        raise ExportError(f"coremltools produced a {backbone.WhichOneof('Type')} model, "
                          "not a neural network; only neural networks can be updatable")
    spec = Model_pb2.Model()
    spec.specificationVersion = max(backbone.specificationVersion, 4)
    spec.description.input.extend(backbone.description.input)
    output = spec.description.output.add()
    output.name = PROBABILITIES
    output.type.multiArrayType.dataType = Model_pb2.ArrayFeatureType.FLOAT32
    nn = spec.neuralNetworkClassifier
    nn.arrayInputShapeMapping = NeuralNetwork_pb2.EXACT_ARRAY_MAPPING
    nn.layers.extend(backbone.neuralNetwork.layers)
    return spec


def _expand_to_rank4(builder: Any, source: str, name: str) -> str:
    """``(1, F)`` -> ``(1, F, 1, 1)``: innerProduct flattens axes 1-3 and softmax
    normalises axis -3, so the head sees plain vectors."""
    builder.add_expand_dims(f"{name}_expand", input_name=source, output_name=name,
                            axes=[2, 3])
    return name


def _relu(builder: Any, name: str, source: str) -> str:
    builder.add_activation(name, non_linearity="RELU", input_name=source,
                           output_name=f"{name}_out")
    return f"{name}_out"


def _output_name(backbone: Model_pb2.Model) -> str:
    return backbone.description.output[0].name


def _int_range(param: Any, default: int, low: int, high: int) -> None:
    param.defaultValue = int(default)
    param.ClearField("set")
    param.range.minValue = int(low)
    param.range.maxValue = int(high)


def _range_entry(param: Any) -> RangeEntry:
    allowed = Allowed.from_param(param)
    return RangeEntry(default=allowed.default, min=allowed.low, max=allowed.high)


def _describe(spec: Model_pb2.Model, model: TrainableModel) -> None:
    """Descriptions Xcode shows to the app developer."""
    description = spec.description
    description.metadata.shortDescription = (
        f"devicetune: {model.spec.head.type} head on a frozen backbone, updatable with "
        "MLUpdateTask")
    description.input[0].shortDescription = (
        f"one example, shape (1, {', '.join(str(d) for d in model.input_shape)})")
    for feature in description.output:
        if feature.name == PROBABILITIES:
            feature.shortDescription = "probability of every class label"
        elif feature.name == LABEL:
            feature.shortDescription = "the most probable class label"
    for feature in description.trainingInput:
        if feature.name == LABEL:
            feature.shortDescription = "the true class label of the example"


def _conversion_message(exc: Exception, feature_model: Any) -> str:
    text = " ".join(str(exc).split())[:300] or type(exc).__name__
    culprit = ""
    for layer in getattr(feature_model, "layers", []):
        # TensorFlow op names look like "model_1/conv1_1/Relu": the layer name, maybe
        # with a Keras call suffix, between slashes.
        if re.search(rf"(^|[/ '\"]){re.escape(layer.name)}(_\d+)?/", text):
            culprit = f"layer {layer.name!r} ({type(layer).__name__}): "
            break
    return (f"{culprit}Core ML conversion failed ({text}); replace that layer with one "
            "coremltools converts to a neural network (Conv, Dense, pooling, "
            "BatchNormalization, ReLU), or set export.coreml = false")
