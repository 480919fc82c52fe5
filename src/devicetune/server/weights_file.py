"""Weights on the wire between the gateway and apps: safetensors files.

safetensors (https://huggingface.co/docs/safetensors) is an 8-byte little-endian header
length, a JSON header (each tensor's dtype, shape and byte offsets, plus an optional
``__metadata__`` map of strings) and the raw little-endian bytes: a few dozen lines in
Kotlin or Swift, no code execution on load. The gateway sends a round's start weights
as one (float32, named as the artifact's ``weight_names``); a report is one with the
new weights and, in ``__metadata__``, what the device says about its training::

    num_examples   examples trained on (an integer >= 1; weighs the update)
    train_loss     mean loss of the last local epoch (a finite number)
    dp_steps       DP-SGD steps taken (an integer >= 0; 0 or absent without DP-SGD)
"""

from __future__ import annotations

import math

import numpy as np

REPORT_METADATA = ("num_examples", "train_loss", "dp_steps")


class WeightsFileError(ValueError):
    """A body that is not a usable safetensors file (the reason, in one line)."""


def write_weights(weights: dict[str, np.ndarray], metadata: dict[str, str] | None = None
                  ) -> bytes:
    """The safetensors bytes of named float32 arrays."""
    from safetensors.numpy import save

    return save({k: np.ascontiguousarray(v, np.float32) for k, v in weights.items()},
                metadata=metadata)


def read_weights(body: bytes) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Arrays and metadata of a safetensors body; `WeightsFileError` if it is not one."""
    import json

    from safetensors import SafetensorError
    from safetensors.numpy import load

    if len(body) < 8:
        raise WeightsFileError("the body is not a safetensors file (shorter than its "
                               "8-byte header length)")
    try:
        arrays = load(body)
        size = int.from_bytes(body[:8], "little")
        header = json.loads(body[8:8 + size])
    except (SafetensorError, ValueError, TypeError, OverflowError) as exc:
        raise WeightsFileError(f"the body is not a safetensors file "
                               f"({' '.join(str(exc).split())[:160]})") from None
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise WeightsFileError("__metadata__ must map strings to strings")
    return arrays, {str(k): str(v) for k, v in metadata.items()}


def read_report(body: bytes) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """A device report's weights and its metrics (``num-examples``, ``train-loss``,
    ``dp-steps``, as the round loop names them).

    Raises:
        WeightsFileError: not safetensors, or its metadata is missing or not numbers.
    """
    arrays, metadata = read_weights(body)
    unknown = sorted(set(metadata) - set(REPORT_METADATA))
    if unknown:
        raise WeightsFileError(f"__metadata__ has unknown key(s) {unknown[:5]}; allowed "
                               f"{list(REPORT_METADATA)}")
    try:
        examples = int(metadata["num_examples"])
        loss = float(metadata.get("train_loss", "nan"))
        dp_steps = int(metadata.get("dp_steps", "0"))
    except KeyError:
        raise WeightsFileError("__metadata__ lacks num_examples") from None
    except ValueError:
        raise WeightsFileError("__metadata__: num_examples and dp_steps must be integers, "
                               "train_loss a number") from None
    if not 1 <= examples <= 10**9 or not 0 <= dp_steps <= 10**9:
        raise WeightsFileError("__metadata__: num_examples must be 1..1e9 and dp_steps "
                               "0..1e9")
    if "train_loss" in metadata and not math.isfinite(loss):
        raise WeightsFileError("__metadata__: train_loss must be a finite number")
    metrics = {"num-examples": examples, "train-loss": loss}
    if dp_steps:
        metrics["dp-steps"] = dp_steps
    return arrays, metrics
