"""Numpy kernels for Core ML's spatial layers: convolution, pooling, padding.

Shapes follow ``NeuralNetwork.proto``: the last three axes are ``(C, H, W)`` and every
leading axis is batch (which includes the reference's example axis). Windows are strided
views (``sliding_window_view``), so a convolution is one ``tensordot`` (or an ``einsum``
per group).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from devicetune.device.coreml_layers import Kernel, unsupported, weights


def _same_padding(size: int, kernel: int, stride: int, top_left_heavy: bool
                  ) -> tuple[int, int]:
    out = -(-size // stride)
    total = max(0, (out - 1) * stride + kernel - size)
    small = total // 2
    return (total - small, small) if top_left_heavy else (small, total - small)


def _padding(params: Any, kernel: Sequence[int], stride: Sequence[int],
             sizes: Sequence[int]) -> list[tuple[int, int]]:
    kind = params.WhichOneof("ConvolutionPaddingType" if hasattr(params, "isDeconvolution")
                             else "PoolingPaddingType")
    if kind == "same":
        heavy = params.same.asymmetryMode == 1
        return [_same_padding(s, k, st, heavy) for s, k, st in zip(sizes, kernel, stride,
                                                                     strict=True)]
    if kind == "includeLastPixel":
        pads = list(params.includeLastPixel.paddingAmounts) or [0, 0]
        result = []
        for s, k, st, p in zip(sizes, kernel, stride, pads, strict=True):
            out = -(-(s + 2 * p - k) // st) + 1
            if p > 0 and (out - 1) * st >= s + p:
                out -= 1
            result.append((p, max(0, (out - 1) * st + k - s - p)))
        return result
    amounts = params.valid.paddingAmounts.borderAmounts if kind == "valid" else []
    if not amounts:
        return [(0, 0), (0, 0)]
    return [(int(a.startEdgeSize), int(a.endEdgeSize)) for a in amounts]


def _windows(x: np.ndarray, kernel: Sequence[int], stride: Sequence[int],
             dilation: Sequence[int]) -> np.ndarray:
    """``(B, C, H, W)`` -> ``(B, C, H_out, W_out, kh, kw)``, a strided view."""
    extent = [(k - 1) * d + 1 for k, d in zip(kernel, dilation, strict=True)]
    view = np.lib.stride_tricks.sliding_window_view(x, extent, axis=(2, 3))
    return view[:, :, ::stride[0], ::stride[1], ::dilation[0], ::dilation[1]]


def convolution(params: Any, name: str) -> Kernel:
    if params.isDeconvolution:
        raise unsupported(name, "deconvolution")
    kernel = [int(k) for k in params.kernelSize] or [3, 3]
    stride = [int(s) for s in params.stride] or [1, 1]
    dilation = [int(d) for d in params.dilationFactor] or [1, 1]
    groups = int(params.nGroups) or 1
    c_out, c_in = int(params.outputChannels), int(params.kernelChannels)
    w = weights(params.weights, (c_out, c_in, *kernel))
    bias = weights(params.bias).reshape(c_out, 1, 1) if params.hasBias else None

    def run(xs: list[np.ndarray]) -> list[np.ndarray]:
        x = xs[0]
        lead, (channels, height, width) = x.shape[:-3], x.shape[-3:]
        x = x.reshape(-1, channels, height, width)
        effective = [(k - 1) * d + 1 for k, d in zip(kernel, dilation, strict=True)]
        pads = _padding(params, effective, stride, (height, width))
        x = np.pad(x, [(0, 0), (0, 0), *pads])
        win = _windows(x, kernel, stride, dilation)
        if groups == 1:
            y = np.tensordot(win, w, axes=([1, 4, 5], [1, 2, 3]))  # (B, Ho, Wo, Cout)
            y = np.moveaxis(y, -1, 1)
        else:
            b, _, ho, wo, kh, kw = win.shape
            win = win.reshape(b, groups, channels // groups, ho, wo, kh, kw)
            wg = w.reshape(groups, c_out // groups, c_in, kh, kw)
            y = np.einsum("bgchwij,gocij->bgohw", win, wg, optimize=True)
            y = y.reshape(b, c_out, ho, wo)
        if bias is not None:
            y = y + bias
        return [y.reshape(*lead, *y.shape[1:]).astype(np.float32, copy=False)]
    return run


def pooling(params: Any, name: str) -> Kernel:
    if params.type == 2:
        raise unsupported(name, "L2 pooling")
    is_max = params.type == 0
    kernel = [int(k) for k in params.kernelSize] or [3, 3]
    stride = [int(s) for s in params.stride] or [1, 1]

    def run(xs: list[np.ndarray]) -> list[np.ndarray]:
        x = xs[0]
        if params.globalPooling:
            op = np.max if is_max else np.mean
            return [op(x, axis=(-2, -1), keepdims=True)]
        lead, (channels, height, width) = x.shape[:-3], x.shape[-3:]
        x = x.reshape(-1, channels, height, width)
        pads = _padding(params, kernel, stride, (height, width))
        spec = [(0, 0), (0, 0), *pads]
        if is_max:
            win = _windows(np.pad(x, spec, constant_values=-np.inf), kernel, stride, [1, 1])
            y = win.max(axis=(-2, -1))
        else:
            total = _windows(np.pad(x, spec), kernel, stride, [1, 1]).sum(axis=(-2, -1))
            if params.avgPoolExcludePadding:
                ones = np.pad(np.ones((1, 1, height, width), np.float32), spec)
                count = _windows(ones, kernel, stride, [1, 1]).sum(axis=(-2, -1))
            else:
                count = np.float32(kernel[0] * kernel[1])
            y = total / count
        return [y.reshape(*lead, *y.shape[1:]).astype(np.float32, copy=False)]
    return run


def padding(params: Any, name: str) -> Kernel:
    amounts = [(int(a.startEdgeSize), int(a.endEdgeSize))
               for a in params.paddingAmounts.borderAmounts] or [(0, 0), (0, 0)]
    kind = params.WhichOneof("PaddingType")
    mode = {"constant": "constant", "reflection": "reflect", "replication": "edge"}[kind]
    extra = {"constant_values": params.constant.value} if kind == "constant" else {}

    def run(xs: list[np.ndarray]) -> list[np.ndarray]:
        spec = [(0, 0)] * (xs[0].ndim - 2) + amounts
        return [np.pad(xs[0], spec, mode=mode, **extra)]
    return run
