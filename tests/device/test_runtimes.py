"""Android (LiteRT) and iOS (Core ML reference) devices run the same math."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from devicetune.data.synthetic import SyntheticFleet
from devicetune.device.coreml import CoreMLDevice
from devicetune.device.runtime import LiteRTDevice
from devicetune.errors import ConfigError


@pytest.fixture
def both(small_artifacts: Path) -> tuple[LiteRTDevice, CoreMLDevice]:
    return (LiteRTDevice(small_artifacts / "model.tflite", 0.005),
            CoreMLDevice(small_artifacts / "Model.mlmodel", 0.005))


def max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True))


def test_same_data_same_weights_on_both_platforms(both) -> None:
    android, ios = both
    assert android.weight_names == ios.weight_names
    assert max_diff(android.get_weights(), ios.get_weights()) == 0.0
    data = SyntheticFleet(4, seed=9, windows_per_device=50).device(2)
    features = android.features(data.x)
    np.testing.assert_allclose(ios.features(data.x), features, atol=1e-4)
    for runtime in both:
        runtime.fit(features, data.y, epochs=3, rng=np.random.default_rng(7))
    assert max_diff(android.get_weights(), ios.get_weights()) < 1e-4
    loss_a, acc_a = android.evaluate(features, data.y)
    loss_i, acc_i = ios.evaluate(features, data.y)
    assert acc_a == acc_i and abs(loss_a - loss_i) < 1e-4


def test_epoch_hook_sees_each_epoch_on_both(both) -> None:
    data = SyntheticFleet(2, seed=1).device(0)
    for runtime in both:
        seen: list[tuple[int, float]] = []
        features = runtime.features(data.x)
        runtime.fit(features, data.y, epochs=3, rng=np.random.default_rng(0),
                    on_epoch=lambda e, r=runtime, f=features, s=seen: s.append(
                        (e, r.evaluate(f, data.y)[0])))
        assert [e for e, _ in seen] == [1, 2, 3]
        # The hook saw the weights of that moment: they moved between epochs, and the
        # last one is what training ended with.
        assert len({round(v, 7) for _, v in seen}) == 3
        assert seen[-1][1] == pytest.approx(runtime.evaluate(features, data.y)[0])


def test_ios_refuses_what_core_ml_cannot_do(both) -> None:
    _, ios = both
    data = SyntheticFleet(2, seed=1).device(0)
    features = ios.features(data.x)
    with pytest.raises(ConfigError, match="per-example"):
        ios.fit(features, data.y, 1, np.random.default_rng(0), private=True)
    with pytest.raises(ConfigError, match="proximal"):
        ios.fit(features, data.y, 1, np.random.default_rng(0), proximal_mu=0.1)


def test_loading_a_model_prints_nothing_on_stderr(small_artifacts: Path) -> None:
    """LiteRT's "Created TensorFlow Lite XNNPACK delegate" note stays off the terminal,
    and what is printed after it still reaches stderr."""
    import subprocess
    import sys

    code = ("import sys; from devicetune.device.litert import LiteRTModel\n"
            "LiteRTModel(sys.argv[1]); LiteRTModel(sys.argv[1])\n"
            "print('after', file=sys.stderr)\n")
    result = subprocess.run([sys.executable, "-c", code, str(small_artifacts / "model.tflite")],
                            capture_output=True, text=True, check=True)
    assert result.stderr == "after\n"
