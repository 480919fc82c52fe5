"""Numpy kernels for the Core ML neural-network layers devicetune's export emits.

Each kernel follows the layer's description in coremltools' ``NeuralNetwork.proto``
(EXACT_ARRAY_MAPPING: tensors keep the rank the model description gives them). Every
tensor here carries one extra leading axis, the *example* axis, so that a model whose
interface takes one example ``(1, 128, 9)`` runs a whole batch ``(N, 1, 128, 9)`` at
once; axis arguments from the spec are per-example and are shifted past it. Constants
get an example axis of size 1.

`compile_layer` reads a layer's parameters once; `run_layers` executes a list of them.
A layer type without a kernel raises `ExportError` naming it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from devicetune.errors import ExportError

Kernel = Callable[[list[np.ndarray]], list[np.ndarray]]


def weights(params: Any, shape: Sequence[int] | None = None) -> np.ndarray:
    """A ``WeightParams`` message as float32 numpy (float32, float16 or 8-bit linear
    quantization storage)."""
    if len(params.floatValue):
        array = np.asarray(params.floatValue, np.float32)
    elif len(params.float16Value):
        array = np.frombuffer(params.float16Value, np.float16).astype(np.float32)
    elif len(params.rawValue):
        array = _dequantized(params)
    else:
        array = np.zeros(0, np.float32)
    return array.reshape(shape) if shape is not None else array


def _dequantized(params: Any) -> np.ndarray:
    """8-bit linear quantization, one (scale, bias) per output channel (the first axis):
    ``w = code * scale + bias``, as Core ML widens it before computing in float."""
    quantization = params.quantization
    if quantization.numberOfBits != 8 or quantization.WhichOneof(
            "QuantizationType") != "linearQuantization":
        raise ExportError("the Core ML reference interpreter reads 8-bit linear weight "
                          f"quantization only, not {quantization.numberOfBits}-bit "
                          f"{quantization.WhichOneof('QuantizationType')}")
    codes = np.frombuffer(params.rawValue, np.uint8).astype(np.float64)
    scale = np.asarray(quantization.linearQuantization.scale, np.float64)
    bias = np.asarray(quantization.linearQuantization.bias, np.float64)
    rows = codes.reshape(len(scale), -1)
    return (rows * scale[:, None] + bias[:, None]).astype(np.float32).ravel()


def compile_layer(layer: Any) -> Kernel:
    """The kernel of one ``NeuralNetworkLayer``, its parameters already decoded.

    Raises:
        ExportError: the layer type (or a mode of it) has no kernel here.
    """
    kind = layer.WhichOneof("layer")
    make = _compilers().get(kind)
    if make is None:
        raise ExportError(f"layer {layer.name!r} has type {kind!r}, which the Core ML "
                          f"reference interpreter does not implement (it covers "
                          f"{', '.join(sorted(_compilers()))}); remove the Keras layer that "
                          "produces it")
    return make(getattr(layer, kind), layer.name)


def run_layers(steps: Sequence[tuple[list[str], list[str], Kernel]],
               blobs: dict[str, np.ndarray], stop_at: str | None = None
               ) -> dict[str, np.ndarray]:
    """Execute compiled ``(inputs, outputs, kernel)`` steps in order over ``blobs``
    (updated in place); stop once ``stop_at`` has been produced."""
    for inputs, outputs, kernel in steps:
        results = kernel([blobs[name] for name in inputs])
        blobs.update(zip(outputs, results, strict=True))
        if stop_at is not None and stop_at in blobs:
            break
    return blobs


def unsupported(name: str, what: str) -> ExportError:
    return ExportError(f"layer {name!r}: {what} is not implemented by the Core ML reference "
                       "interpreter; remove the Keras layer that produces it")


def _axis(axis: int, rank: int) -> int:
    """A per-example axis (negative allowed) as an index into the batched tensor."""
    return (axis if axis >= 0 else axis + rank) + 1


def _align(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Pad per-example ranks with 1s after the example axis, so that numpy's
    right-aligned broadcasting matches Core ML's."""
    rank = max(a.ndim for a in arrays)
    return [a.reshape(a.shape[0], *(1,) * (rank - a.ndim), *a.shape[1:]) for a in arrays]


def _elementwise(op: Callable[..., np.ndarray]) -> Callable[[Any, str], Kernel]:
    def make(params: Any, name: str) -> Kernel:
        def run(xs: list[np.ndarray]) -> list[np.ndarray]:
            result = _align(xs)
            out = result[0]
            for other in result[1:]:
                out = op(out, other)
            return [out]
        return run
    return make


def _scalar_or_many(op: Callable[..., np.ndarray]) -> Callable[[Any, str], Kernel]:
    """Legacy add/multiply: one input combines with ``alpha``, several with each other."""
    def make(params: Any, name: str) -> Kernel:
        alpha = np.float32(params.alpha)

        def run(xs: list[np.ndarray]) -> list[np.ndarray]:
            if len(xs) == 1:
                return [op(xs[0], alpha)]
            return _elementwise(op)(params, name)(xs)
        return run
    return make


# ------------------------------------------------------------------ shape and constants


def _load_constant_nd(params: Any, name: str) -> Kernel:
    value = weights(params.data, (1, *params.shape))
    return lambda xs: [value]


def _load_constant(params: Any, name: str) -> Kernel:
    value = weights(params.data, (1, 1, 1, *params.shape))
    return lambda xs: [value]


def _transpose(params: Any, name: str) -> Kernel:
    order = [0, *(int(a) + 1 for a in params.axes)]
    return lambda xs: [np.transpose(xs[0], order)]


def _expand_dims(params: Any, name: str) -> Kernel:
    def run(xs: list[np.ndarray]) -> list[np.ndarray]:
        rank = xs[0].ndim - 1 + len(params.axes)
        return [np.expand_dims(xs[0], tuple(_axis(int(a), rank) for a in params.axes))]
    return run


def _squeeze(params: Any, name: str) -> Kernel:
    def run(xs: list[np.ndarray]) -> list[np.ndarray]:
        x = xs[0]
        rank = x.ndim - 1
        if params.squeezeAll:
            axes = tuple(i for i in range(1, x.ndim) if x.shape[i] == 1)
        else:
            axes = tuple(_axis(int(a), rank) for a in params.axes)
        out = np.squeeze(x, axes)
        # Core ML keeps rank 1 when everything is squeezed away.
        return [out.reshape(x.shape[0], 1) if out.ndim == 1 else out]
    return run


def _reshape_static(params: Any, name: str) -> Kernel:
    target = [int(d) for d in params.targetShape]
    return lambda xs: [xs[0].reshape(xs[0].shape[0], *target)]


def _rank_preserving_reshape(params: Any, name: str) -> Kernel:
    def run(xs: list[np.ndarray]) -> list[np.ndarray]:
        shape = [x if t == 0 else t for x, t in zip(xs[0].shape[1:], params.targetShape,
                                                    strict=True)]
        return [xs[0].reshape(xs[0].shape[0], *shape)]
    return run


def _flatten_to_2d(params: Any, name: str) -> Kernel:
    def run(xs: list[np.ndarray]) -> list[np.ndarray]:
        x = xs[0]
        axis = _axis(int(params.axis), x.ndim - 1)
        return [x.reshape(x.shape[0], int(np.prod(x.shape[1:axis])), -1)]
    return run


def _flatten(params: Any, name: str) -> Kernel:
    channel_last = params.mode == 1

    def run(xs: list[np.ndarray]) -> list[np.ndarray]:
        x = xs[0]
        if channel_last:
            x = np.moveaxis(x, -3, -1)
        return [x.reshape(*x.shape[:-3], -1, 1, 1)]
    return run


def _concat_nd(params: Any, name: str) -> Kernel:
    return lambda xs: [np.concatenate(_align(xs), axis=_axis(int(params.axis),
                                                             max(x.ndim for x in xs) - 1))]


def _concat(params: Any, name: str) -> Kernel:
    axis = -5 if params.sequenceConcat else -3
    return lambda xs: [np.concatenate(xs, axis=axis)]


def _copy(params: Any, name: str) -> Kernel:
    return lambda xs: [xs[0]]


# ------------------------------------------------------------------------- elementwise


_ACTIVATIONS: dict[str, Callable[[np.ndarray, Any], np.ndarray]] = {
    "ReLU": lambda x, p: np.maximum(x, 0),
    "leakyReLU": lambda x, p: np.where(x >= 0, x, np.float32(p.alpha) * x),
    "thresholdedReLU": lambda x, p: np.where(x >= p.alpha, x, 0).astype(x.dtype),
    "linear": lambda x, p: np.float32(p.alpha) * x + np.float32(p.beta),
    "tanh": lambda x, p: np.tanh(x),
    "scaledTanh": lambda x, p: np.float32(p.alpha) * np.tanh(np.float32(p.beta) * x),
    "sigmoid": lambda x, p: 1 / (1 + np.exp(-x)),
    "sigmoidHard": lambda x, p: np.clip(np.float32(p.alpha) * x + np.float32(p.beta), 0, 1),
    "ELU": lambda x, p: np.where(x >= 0, x, np.float32(p.alpha) * np.expm1(x)),
    "softsign": lambda x, p: x / (1 + np.abs(x)),
    "softplus": lambda x, p: np.logaddexp(0, x),
}


def _activation(params: Any, name: str) -> Kernel:
    kind = params.WhichOneof("NonlinearityType")
    if kind not in _ACTIVATIONS:
        raise unsupported(name, f"activation {kind!r}")
    function, detail = _ACTIVATIONS[kind], getattr(params, kind)
    return lambda xs: [function(xs[0], detail).astype(np.float32, copy=False)]


_UNARY: dict[int, Callable[[np.ndarray, Any], np.ndarray]] = {
    0: lambda x, p: np.sqrt(x),
    1: lambda x, p: 1 / np.sqrt(x + (p.epsilon or 1e-6)),
    2: lambda x, p: 1 / (x + (p.epsilon or 1e-6)),
    3: lambda x, p: np.power(x, p.alpha),
    4: lambda x, p: np.exp(x),
    5: lambda x, p: np.log(x),
    6: lambda x, p: np.abs(x),
    7: lambda x, p: np.maximum(x, np.float32(p.alpha)),
}


def _unary(params: Any, name: str) -> Kernel:
    function = _UNARY[params.type]
    scale, shift = np.float32(params.scale or 1.0), np.float32(params.shift)
    return lambda xs: [function(scale * xs[0] + shift, params).astype(np.float32, copy=False)]


def _clip(params: Any, name: str) -> Kernel:
    return lambda xs: [np.clip(xs[0], params.minVal, params.maxVal)]


def _softmax_along(x: np.ndarray, axis: int) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)


def _softmax(params: Any, name: str) -> Kernel:
    return lambda xs: [_softmax_along(xs[0], -3)]


def _softmax_nd(params: Any, name: str) -> Kernel:
    return lambda xs: [_softmax_along(xs[0], _axis(int(params.axis), xs[0].ndim - 1))]


def _batchnorm(params: Any, name: str) -> Kernel:
    if params.computeMeanVar:
        raise unsupported(name, "batchnorm with computeMeanVar")
    channels = int(params.channels)
    gamma, beta = weights(params.gamma), weights(params.beta)
    mean, variance = weights(params.mean), weights(params.variance)
    scale = gamma / np.sqrt(variance + (params.epsilon or 1e-5))
    shift = (beta - mean * scale).reshape(channels, 1, 1)
    scale = scale.reshape(channels, 1, 1)
    return lambda xs: [xs[0] * scale + shift]


# ------------------------------------------------------------------------- reductions


def _reduce_nd(op: Callable[..., np.ndarray]) -> Callable[[Any, str], Kernel]:
    def make(params: Any, name: str) -> Kernel:
        def run(xs: list[np.ndarray]) -> list[np.ndarray]:
            x = xs[0]
            rank = x.ndim - 1
            axes = tuple(range(1, x.ndim)) if params.reduceAll else tuple(
                _axis(int(a), rank) for a in params.axes)
            out = op(x, axis=axes, keepdims=bool(params.keepDims))
            return [out.reshape(x.shape[0], 1) if out.ndim == 1 else out]
        return run
    return make


_REDUCE_OPS = {
    0: np.sum, 1: np.mean, 2: np.prod, 4: lambda x, **k: np.sum(x * x, **k),
    5: lambda x, **k: np.sum(np.abs(x), **k), 6: lambda x, **k: np.sqrt(np.sum(x * x, **k)),
    7: np.max, 8: np.min,
}
_REDUCE_AXES = {0: (-3, -2, -1), 1: (-2, -1), 2: (-3,), 3: (-2,), 4: (-1,)}


def _reduce(params: Any, name: str) -> Kernel:
    if params.mode not in _REDUCE_OPS:
        raise unsupported(name, f"reduce mode {params.mode}")
    op, axes = _REDUCE_OPS[params.mode], _REDUCE_AXES[params.axis]
    return lambda xs: [op(xs[0], axis=axes, keepdims=True)]


# ------------------------------------------------------------------ matrix products


class InnerProduct:
    """``y = x W + b`` (``W`` is ``(C_in, C_out)`` here; the spec stores ``(C_out, C_in)``).
    Rank 4 and 5 inputs flatten their last three axes, as the format specifies.
    ``kernel`` and ``bias`` may be replaced (the reference does, after an update)."""

    def __init__(self, params: Any, name: str) -> None:
        c_in, c_out = int(params.inputChannels), int(params.outputChannels)
        self.kernel = weights(params.weights, (c_out, c_in)).T.copy()
        self.bias = weights(params.bias) if params.hasBias else np.zeros(c_out, np.float32)

    def __call__(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        x = xs[0]
        if x.ndim - 1 <= 3:
            return [x @ self.kernel + self.bias]
        lead = x.shape[:-3]
        y = x.reshape(*lead, -1) @ self.kernel + self.bias
        return [y.reshape(*lead, -1, 1, 1)]


def _batched_matmul(params: Any, name: str) -> Kernel:
    if params.int8DynamicQuantize:
        raise unsupported(name, "int8 batchedMatmul")
    rows, cols = int(params.weightMatrixFirstDimension), int(params.weightMatrixSecondDimension)
    # Stored column-major (the builder writes W.T flattened).
    matrix = weights(params.weights, (cols, rows)).T.copy() if rows else None
    bias = weights(params.bias) if params.hasBias else None

    def run(xs: list[np.ndarray]) -> list[np.ndarray]:
        if len(xs) == 1:
            y = xs[0] @ matrix
            return [y + bias if bias is not None else y]
        a, b = xs
        if params.transposeA:
            a = np.swapaxes(a, -1, -2)
        if params.transposeB:
            b = np.swapaxes(b, -1, -2)
        a, b = _align([a, b])
        return [a @ b]
    return run


_COMPILERS: dict[str, Callable[[Any, str], Kernel]] = {
    "activation": _activation, "unary": _unary, "clip": _clip,
    "add": _scalar_or_many(np.add), "multiply": _scalar_or_many(np.multiply),
    "addBroadcastable": _elementwise(np.add),
    "subtractBroadcastable": _elementwise(np.subtract),
    "multiplyBroadcastable": _elementwise(np.multiply),
    "divideBroadcastable": _elementwise(np.divide),
    "maxBroadcastable": _elementwise(np.maximum),
    "minBroadcastable": _elementwise(np.minimum),
    "loadConstantND": _load_constant_nd, "loadConstant": _load_constant,
    "transpose": _transpose, "expandDims": _expand_dims, "squeeze": _squeeze,
    "reshapeStatic": _reshape_static, "rankPreservingReshape": _rank_preserving_reshape,
    "flattenTo2D": _flatten_to_2d, "flatten": _flatten, "concatND": _concat_nd,
    "concat": _concat, "copy": _copy,
    "softmax": _softmax, "softmaxND": _softmax_nd, "batchnorm": _batchnorm,
    "reduceMean": _reduce_nd(np.mean), "reduceMax": _reduce_nd(np.max),
    "reduceMin": _reduce_nd(np.min), "reduceSum": _reduce_nd(np.sum),
    "reduceProd": _reduce_nd(np.prod), "reduce": _reduce,
    "innerProduct": InnerProduct, "batchedMatmul": _batched_matmul,
}


@functools.cache
def _compilers() -> dict[str, Callable[[Any, str], Kernel]]:
    # Imported here: the spatial kernels use this module's helpers.
    from devicetune.device.coreml_spatial import convolution, padding, pooling

    return {**_COMPILERS, "convolution": convolution, "pooling": pooling,
            "padding": padding}
