"""Running the Android artifact as the app does: the LiteRT interpreter and its signatures.

Only `ai_edge_litert` is needed here, not TensorFlow: a phone has no TensorFlow either.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from devicetune.errors import ArtifactError

_INVOKE_SECONDS = [0.0]


def invocation_seconds() -> float:
    """Seconds spent inside LiteRT signature calls in this process so far: the compute
    floor a simulation's overhead is measured against."""
    return _INVOKE_SECONDS[0]


_QUIETED: set[str] = set()


@contextlib.contextmanager
def without_xnnpack_note(moment: str = "allocate") -> Iterator[None]:
    """Keep LiteRT's "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." off
    stderr. The C++ runtime prints it once per process, when it first applies the
    delegate: at the first allocation, or (with TensorFlow loaded) at the first call.
    No environment variable or option turns it off (TF_CPP_MIN_LOG_LEVEL does not reach
    it), so the first time at each ``moment`` runs with stderr pointed at /dev/null.
    What fails there still raises, with its message."""
    if moment in _QUIETED:
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    _QUIETED.add(moment)


class _Timed:
    """A signature runner that adds its call time to the process-wide total."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner

    def __call__(self, **inputs: Any) -> Any:
        if "invoke" not in _QUIETED:
            with without_xnnpack_note("invoke"):
                return self._call(inputs)
        return self._call(inputs)

    def _call(self, inputs: dict[str, Any]) -> Any:
        start = time.perf_counter()
        try:
            return self.runner(**inputs)
        finally:
            _INVOKE_SECONDS[0] += time.perf_counter() - start


class LiteRTModel:
    """A loaded `model.tflite` with devicetune's signatures, holding its own weights.

    Args:
        model: path to the file, or its bytes.
        num_threads: interpreter threads (1 is what a simulated phone gets).
    """

    def __init__(self, model: Path | bytes, num_threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        try:
            if isinstance(model, bytes):
                self._interpreter = Interpreter(model_content=model, num_threads=num_threads)
            else:
                self._interpreter = Interpreter(model_path=str(model), num_threads=num_threads)
        except ValueError as exc:
            raise ArtifactError(f"{model if not isinstance(model, bytes) else 'model'}: not a "
                                f"loadable TFLite model ({exc})") from None
        signatures = self._interpreter.get_signature_list()
        missing = {"embed", "train", "evaluate", "get_weights", "set_weights"} - set(signatures)
        if missing:
            raise ArtifactError(f"the TFLite model lacks signature(s) {sorted(missing)}; build "
                                "it with `devicetune build`")
        with without_xnnpack_note():  # a signature runner allocates the tensors
            self._runners = {name: _Timed(self._interpreter.get_signature_runner(name))
                             for name in signatures}
        details = self._runners["train"].runner.get_input_details()
        self.batch_size = int(details["features"]["shape"][0])
        self.feature_dim = int(details["features"]["shape"][1])
        self.weight_names = sorted(self._runners["get_weights"].runner.get_output_details())

    @property
    def signatures(self) -> list[str]:
        return sorted(self._runners)

    def infer(self, x: np.ndarray) -> np.ndarray:
        return self._runners["infer"](x=np.asarray(x, np.float32))["probabilities"]

    def embed(self, x: np.ndarray) -> np.ndarray:
        return self._runners["embed"](x=np.asarray(x, np.float32))["features"]

    def train(self, features: np.ndarray, labels: np.ndarray, mask: np.ndarray,
              private: bool = False, class_mask: np.ndarray | None = None) -> float:
        """One optimizer step on a full static batch (``mask`` marks the real rows);
        with ``class_mask`` (1 per class the device holds) the restricted-softmax step
        ``train_masked``.

        Raises:
            ArtifactError: ``class_mask`` for an artifact built without ``train_masked``.
        """
        if class_mask is None:
            runner = self._runners["train_dp" if private else "train"]
            out = runner(features=features, labels=labels, mask=mask)
            return float(out["loss"])
        if private or "train_masked" not in self._runners:
            raise ArtifactError("the restricted-softmax step (server.class_mask) needs the "
                                "train_masked signature without DP-SGD; rebuild the model "
                                "with this devicetune, and turn privacy.device off")
        out = self._runners["train_masked"](features=features, labels=labels, mask=mask,
                                            class_mask=np.asarray(class_mask, np.float32))
        return float(out["loss"])

    def evaluate(self, features: np.ndarray, labels: np.ndarray, mask: np.ndarray
                 ) -> tuple[float, float]:
        out = self._runners["evaluate"](features=features, labels=labels, mask=mask)
        return float(out["loss"]), float(out["correct"])

    def get_weights(self) -> dict[str, np.ndarray]:
        out = self._runners["get_weights"](unused=np.zeros((), np.int32))
        return {k: np.array(v) for k, v in out.items()}

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        """Load new weights; this also restarts the optimizer and re-anchors the
        proximal term (the artifact treats them as a new global model)."""
        self._runners["set_weights"](**{k: np.asarray(weights[k], np.float32)
                                        for k in self.weight_names})

    def configure(self, learning_rate: float, proximal_mu: float = 0.0) -> None:
        self._runners["configure"](learning_rate=np.float32(learning_rate),
                                   proximal_mu=np.float32(proximal_mu))
