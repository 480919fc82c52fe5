"""Quantized backbones: smaller weights for the frozen part, the head left alone.

``[export] quantize`` picks one of:

- ``"none"``: float32 everywhere (the default).
- ``"float16"``: every backbone kernel (Conv, DepthwiseConv, Dense) stored as float16.
- ``"int8"``: every backbone kernel stored as int8 codes with one float32 scale per
  output channel, symmetric: ``w = q * s``, ``s = max|w| / 127``, ``q`` in -127..127.
- ``"int8_full"``: the same int8 kernels, and in LiteRT the backbone's activations int8
  too (full-integer, calibrated by the converter on the rows the parity checks use,
  ``[export] calibration``). Core ML neural networks have no int8 activations, so the
  Core ML model is the ``"int8"`` one.

Only the kernels change (biases, BatchNorm and Normalization statistics are a few hundred
numbers). The quantization is weight-only: both runtimes widen the stored weights back
to float32 (LiteRT with one ``DEQUANTIZE`` op per kernel, run once since its input is
constant; Core ML from its linear-quantization parameters) and compute in float32. So
the trainable head, its optimizer state and the training signatures are the float32
graph they always were, and there is one exact reference for a quantized build: the
same Keras backbone with each kernel replaced by its dequantized values
(`quantized_model`). Both artifacts store those values losslessly: `quantize_tflite`
and `quantize_coreml_spec` re-derive the same codes from them. ``"int8_full"`` has no
such exact reference in TensorFlow (the converter picks each activation's range), so
its LiteRT ``infer``/``embed`` are held to `INT8_ACTIVATION_TOLERANCE` of that reference;
its training signatures stay float32 and exact.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from devicetune.errors import ExportError

if TYPE_CHECKING:
    from coremltools.proto import Model_pb2

    from devicetune.model.trainable import TrainableModel

MODES: tuple[str, ...] = ("none", "float16", "int8", "int8_full")
# Keras layers whose kernel (weights[0]) is quantized; the output channel is the last axis
# (for DepthwiseConv2D the last two, input channel times multiplier).
KERNEL_LAYERS = frozenset({"Conv1D", "Conv2D", "DepthwiseConv2D", "Dense"})
INT8_MAX = 127
# int8_full: LiteRT rounds every backbone activation to 1/255 of its calibrated range, so
# embed (relative to its largest value) and infer (absolute, on probabilities) are held
# to this against the int8-kernel reference; measured 1-2% on the HAR and FSDD models.
INT8_ACTIVATION_TOLERANCE = 0.05
CALIBRATION_BATCH = 8


def int8_codes(values: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel int8 codes of ``values`` along ``axis``.

    Returns:
        ``q`` (int8, the shape of ``values``) and ``scale`` (float32, one per channel),
        with ``values ~= q * scale`` (broadcast along ``axis``).
    """
    values = np.asarray(values, np.float32)
    moved = np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)
    scale = (np.max(np.abs(moved), axis=1) / np.float32(INT8_MAX)).astype(np.float32)
    safe = np.where(scale > 0, scale, np.float32(1.0))
    q = np.clip(np.rint(moved / safe[:, None]), -INT8_MAX, INT8_MAX).astype(np.int8)
    shape = np.moveaxis(values, axis, 0).shape
    return np.moveaxis(q.reshape(shape), 0, axis), scale


def dequantize_int8(q: np.ndarray, scale: np.ndarray, axis: int) -> np.ndarray:
    """``q * scale`` in float32, as LiteRT's DEQUANTIZE computes it."""
    shape = [1] * q.ndim
    shape[axis] = -1
    return (q.astype(np.float32) * scale.reshape(shape)).astype(np.float32)


def round_kernel(kernel: np.ndarray, mode: str, axis: int = -1) -> np.ndarray:
    """The float32 values a quantized artifact computes with, for one kernel."""
    kernel = np.asarray(kernel, np.float32)
    if mode == "none":
        return kernel
    if mode == "float16":
        return kernel.astype(np.float16).astype(np.float32)
    if mode in ("int8", "int8_full"):
        axis = axis % kernel.ndim
        return dequantize_int8(*int8_codes(kernel, axis), axis)
    raise ExportError(f"export.quantize = {mode!r}: allowed {', '.join(MODES)}")


def quantized_model(model: TrainableModel, mode: str) -> TrainableModel:
    """``model`` with its frozen feature extractor's kernels rounded as ``mode`` stores
    them: the reference a quantized build is checked against. The trainable layers and
    ``model.backbone`` (the float32 original, saved with the build) are unchanged."""
    if mode == "none":
        return model
    import keras

    frozen = keras.models.clone_model(model.feature_model)
    frozen.set_weights(model.feature_model.get_weights())
    for layer in _layers(frozen):
        # An adapted Normalization computes with the statistics finalize_state derives
        # from its variables; set_weights alone leaves the clone's at mean 0, variance 1.
        if hasattr(layer, "finalize_state"):
            layer.finalize_state()
        if type(layer).__name__ in KERNEL_LAYERS and layer.get_weights():
            weights = layer.get_weights()
            kernel = weights[0]
            # Channels last; DepthwiseConv2D's (kh, kw, in, multiplier) flattens its last
            # two, as LiteRT lays them out.
            flat = kernel.reshape(*kernel.shape[:2], -1) if kernel.ndim == 4 and type(
                layer).__name__ == "DepthwiseConv2D" else kernel
            weights[0] = round_kernel(flat, mode).reshape(kernel.shape)
            layer.set_weights(weights)
    return replace(model, feature_model=frozen)


def kernel_bytes(model: TrainableModel, mode: str) -> int:
    """Bytes the backbone's kernels take in a ``mode`` build (codes plus scales)."""
    total = 0
    for layer in _layers(model.feature_model):
        if type(layer).__name__ in KERNEL_LAYERS and layer.get_weights():
            kernel = layer.get_weights()[0]
            channels = int(np.prod(kernel.shape[2:])) if type(
                layer).__name__ == "DepthwiseConv2D" else kernel.shape[-1]
            total += {"none": 4 * kernel.size, "float16": 2 * kernel.size,
                      "int8": kernel.size + 4 * channels,
                      "int8_full": kernel.size + 4 * channels}[mode]
    return total


# ------------------------------------------------------------------------------ TFLite

# Operators whose input 1 is a weight, and that weight's output-channel axis in LiteRT's
# layout: CONV_2D (O, H, W, I), FULLY_CONNECTED (O, I), DEPTHWISE_CONV_2D (1, H, W, C).
_TFLITE_WEIGHT_AXIS = {"CONV_2D": 0, "FULLY_CONNECTED": 0, "DEPTHWISE_CONV_2D": 3}
# Only the signatures that run the backbone are touched; the training graphs keep every
# constant float32.
BACKBONE_SIGNATURES = ("infer", "embed")


def quantize_tflite(flatbuffer: bytes, mode: str) -> bytes:
    """Store the backbone's constant kernels as float16 or int8, each widened back by a
    ``DEQUANTIZE`` op (a TFLite built-in). ``flatbuffer`` must come from a program built
    on `quantized_model`, so the stored codes reproduce its float32 values.

    Raises:
        ExportError: the flatbuffer's backbone has no kernel to quantize.
    """
    if mode in ("none", "int8_full"):  # int8_full: the converter quantized it
        return flatbuffer
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(flatbuffer, 0)
    names = {code: name for name, code in vars(schema.BuiltinOperator).items()
             if not name.startswith("_")}
    dequantize = _opcode_index(model, schema, schema.BuiltinOperator.DEQUANTIZE)
    replaced: dict[int, int] = {}  # float32 buffer -> its quantized buffer
    count = 0
    for subgraph, signature in _backbone_subgraphs(model):
        del signature
        widened: dict[int, int] = {}  # float32 tensor -> itself, already fed by DEQUANTIZE
        new_ops = []
        for op in subgraph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            name = names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "")
            axis = _TFLITE_WEIGHT_AXIS.get(name)
            if axis is not None and len(op.inputs) > 1 and op.inputs[1] >= 0:
                index = int(op.inputs[1])
                tensor = subgraph.tensors[index]
                buffer = model.buffers[tensor.buffer]
                if (index not in widened and tensor.type == schema.TensorType.FLOAT32
                        and buffer.data is not None and len(buffer.data) > 0):
                    source = _quantized_tensor(model, schema, tensor, axis, mode, replaced)
                    subgraph.tensors.append(source)
                    tensor.buffer = 0  # now an activation: DEQUANTIZE's output
                    widen = schema.OperatorT()
                    widen.opcodeIndex = dequantize
                    widen.inputs = [len(subgraph.tensors) - 1]
                    widen.outputs = [index]
                    new_ops.append(widen)
                    widened[index] = index
                    count += 1
            new_ops.append(op)
        subgraph.operators = new_ops
    if count == 0:
        raise ExportError("export.quantize: the backbone has no Conv or Dense kernel to "
                          "quantize; set export.quantize = \"none\"")
    _drop_unused_buffers(model)
    builder = flatbuffers.Builder(len(flatbuffer))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def calibrate_backbone(converter: Any, rows: np.ndarray) -> None:
    """Ask the TFLite converter for a full-integer int8 backbone, its activation ranges
    measured on ``rows``. Only ``infer`` and ``embed`` are calibrated; the training
    signatures get no rows, and the converter leaves them float32 (their weights are
    variables, not constants)."""
    import tensorflow as tf

    rows = np.asarray(rows, np.float32)

    def batches() -> Any:
        for start in range(0, len(rows), CALIBRATION_BATCH):
            chunk = rows[start:start + CALIBRATION_BATCH]
            for signature in BACKBONE_SIGNATURES:
                yield signature, {"x": chunk}

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = batches


def _backbone_subgraphs(model: Any) -> list[tuple[Any, str]]:
    found = []
    for signature in model.signatureDefs or []:
        key = signature.signatureKey.decode() if isinstance(
            signature.signatureKey, bytes) else signature.signatureKey
        if key in BACKBONE_SIGNATURES:
            found.append((model.subgraphs[signature.subgraphIndex], key))
    return found


def _opcode_index(model: Any, schema: Any, builtin: int) -> int:
    for i, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            return i
    code = schema.OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = min(builtin, 127)
    code.version = 1
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _quantized_tensor(model: Any, schema: Any, tensor: Any, axis: int, mode: str,
                      replaced: dict[int, int]) -> Any:
    """A new constant tensor holding ``tensor``'s buffer as float16 or int8 codes; the
    quantized buffer is shared when several subgraphs shared the float32 one."""
    shape = [int(d) for d in tensor.shape]
    values = np.frombuffer(bytes(bytearray(model.buffers[tensor.buffer].data)),
                           np.float32).reshape(shape)
    source = schema.TensorT()
    source.shape = list(shape)
    source.name = (tensor.name.decode() if isinstance(tensor.name, bytes)
                   else tensor.name) + f"_{mode}"
    if mode == "float16":
        source.type = schema.TensorType.FLOAT16
        data = values.astype(np.float16).tobytes()
    else:
        q, scale = int8_codes(values, axis)
        source.type = schema.TensorType.INT8
        params = schema.QuantizationParametersT()
        params.scale = [float(s) for s in scale]
        params.zeroPoint = [0] * len(scale)
        params.quantizedDimension = axis
        source.quantization = params
        data = q.tobytes()
    if tensor.buffer not in replaced:
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(data, np.uint8)
        model.buffers.append(buffer)
        replaced[tensor.buffer] = len(model.buffers) - 1
    source.buffer = replaced[tensor.buffer]
    return source


def _drop_unused_buffers(model: Any) -> None:
    """Empty the float32 buffers no tensor reads any more (the originals)."""
    used = {int(t.buffer) for g in model.subgraphs for t in g.tensors}
    for i, buffer in enumerate(model.buffers):
        if i not in used and buffer.data is not None:
            buffer.data = None


# ----------------------------------------------------------------------------- Core ML

_COREML_WEIGHT_LAYERS = ("convolution", "innerProduct", "batchedMatmul")


def quantize_coreml_spec(spec: Model_pb2.Model, mode: str) -> int:
    """Store the converted backbone's kernels (``convolution``, ``innerProduct``,
    ``batchedMatmul``; output channel first) as float16 or 8-bit linear quantization.
    Call it before the updatable head is appended: Core ML updates float32 layers only,
    and coremltools' own `quantize_weights` refuses updatable models. The spec must come
    from `quantized_model`, so the codes reproduce its float32 values.

    Returns:
        How many layers were quantized.
    """
    if mode == "none":
        return 0
    nn = getattr(spec, spec.WhichOneof("Type"))
    count = 0
    for layer in nn.layers:
        kind = layer.WhichOneof("layer")
        if kind not in _COREML_WEIGHT_LAYERS or layer.isUpdatable:
            continue
        params = getattr(layer, kind).weights
        if not len(params.floatValue):
            continue
        out = _coreml_out_channels(layer, kind)
        values = np.asarray(params.floatValue, np.float32).reshape(out, -1)
        params.ClearField("floatValue")
        if mode == "float16":
            params.float16Value = values.astype(np.float16).tobytes()
        else:
            q, scale = int8_codes(values, 0)
            # Core ML's linear quantization is unsigned: w = code * scale + bias.
            params.rawValue = (q.astype(np.int16) + 128).astype(np.uint8).tobytes()
            params.quantization.numberOfBits = 8
            params.quantization.linearQuantization.scale.extend(scale.tolist())
            params.quantization.linearQuantization.bias.extend(
                (-128.0 * scale.astype(np.float64)).tolist())
        count += 1
    # Quantized weights need specification version 3 (iOS 12); the classifier is 4.
    spec.specificationVersion = max(spec.specificationVersion, 3)
    return count


def _coreml_out_channels(layer: Any, kind: str) -> int:
    if kind == "convolution":
        return int(layer.convolution.outputChannels)
    if kind == "innerProduct":
        return int(layer.innerProduct.outputChannels)
    return int(layer.batchedMatmul.weightMatrixSecondDimension)


def _layers(model: Any) -> list[Any]:
    found = []
    for layer in model.layers:
        if hasattr(layer, "layers") and type(layer).__name__ in ("Functional", "Sequential"):
            found.extend(_layers(layer))
        else:
            found.append(layer)
    return found


def float_drift(float_model: TrainableModel, shipped: TrainableModel, mode: str,
                x: np.ndarray, y: np.ndarray, rows: str) -> dict[str, float | str]:
    """What quantizing cost, measured on the parity rows: the float32 model against the
    quantized one it became (both in TensorFlow). Reported beside the parity checks,
    never as one: a quantized artifact passes when it equals its quantized reference.
    """
    float_features = np.asarray(float_model.feature_model(x, training=False), np.float64)
    features = np.asarray(shipped.feature_model(x, training=False), np.float64)
    float_p, p = _head_probabilities(float_model, float_features), _head_probabilities(
        shipped, features)
    scale = max(1e-12, float(np.max(np.abs(float_features))))
    labels = np.asarray(y).astype(np.int64)
    return {
        "quantize": mode,
        "rows": rows,
        "embedding_max_abs_error": float(np.max(np.abs(features - float_features))),
        "embedding_relative_error": float(np.max(np.abs(features - float_features)) / scale),
        "probability_max_abs_error": float(np.max(np.abs(p - float_p))),
        "top1_agreement": float(np.mean(p.argmax(1) == float_p.argmax(1))),
        "float32_accuracy": float(np.mean(float_p.argmax(1) == labels)),
        "quantized_accuracy": float(np.mean(p.argmax(1) == labels)),
    }


def _head_probabilities(model: TrainableModel, features: np.ndarray) -> np.ndarray:
    hidden = features
    for i, layer in enumerate(model.layers):
        hidden = hidden @ layer.kernel.astype(np.float64) + layer.bias
        if i < len(model.layers) - 1 and layer.activation == "relu":
            hidden = np.maximum(hidden, 0.0)
    hidden = hidden - hidden.max(axis=1, keepdims=True)
    return np.exp(hidden) / np.exp(hidden).sum(axis=1, keepdims=True)

