"""App size: float32 against quantized backbones (`[export] quantize`), side by side.

For the HAR model (simulations/har_build.toml: conv1d_small pretrained on subjects
1-15) and the spoken-digits model (as examples/spoken_digits: conv2d_small pretrained on
FSDD speakers 0-3 for 30 epochs, its embedding layer trainable on the phone), the
backbone is pretrained once; then, in one process, for each setting (none = float32,
float16, int8, int8_full) the artifacts are built as `devicetune build` builds them
(export.quantize) and measured:

- sizes: ``model.tflite``, ``Model.mlmodel``, the backbone's kernels, the weights-only
  update (``update.npz``, the float32 head; the same for every setting);
- LiteRT time: ``infer`` on one example, and one training step with the backbone in
  front (``embed`` + ``train`` on batch 8), one thread; the settings take turns over
  five rounds and each keeps its fastest (the machine is shared);
- global accuracy: the shipped LiteRT model on the users it never saw (HAR subjects
  16-30, FSDD speakers 4-5), every example;
- personalization gain: each unseen user fine-tunes the shipped artifact on the first
  half of their examples (in time) and is tested on the second half; the gain is the
  mean over users of accuracy after minus before, in points.

Run:  .venv/bin/python benchmarks/app_size.py [--epochs 20] [--steps 300]
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODES = ("none", "float16", "int8", "int8_full")

HAR = {"name": "har", "seed": 0, "model": {
    "classes": ["WALKING", "WALKING_UPSTAIRS", "WALKING_DOWNSTAIRS", "SITTING",
                "STANDING", "LAYING"],
    "input_shape": [128, 9], "batch_size": 8, "epochs": 5,
    "backbone": {"architecture": "conv1d_small", "embedding_dim": 64,
                 "pretrain": {"dataset": "har", "subjects": "1-15", "epochs": 8}},
    "head": {"type": "linear"}, "optimizer": {"name": "adam", "learning_rate": 0.001}}}
FSDD = {"name": "digits", "seed": 0, "model": {
    "classes": 10, "input_shape": [32, 32, 1], "batch_size": 8, "epochs": 5,
    "backbone": {"architecture": "conv2d_small", "embedding_dim": 64,
                 "trainable_dense_layers": 1,
                 "pretrain": {"dataset": "fsdd", "subjects": "0-3", "epochs": 30}},
    "head": {"type": "linear"}, "optimizer": {"name": "adam", "learning_rate": 0.001}}}
UNSEEN = {"har": list(range(16, 31)), "digits": [4, 5]}
DATASET = {"har": "har", "digits": "fsdd"}


def per_step_ms(fn, steps: int, warmup: int = 20) -> float:
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps * 1e3


def build_setting(model, config, mode: str, out: Path, data_dir: Path) -> dict[str, object]:
    """The artifacts `devicetune build` writes for ``mode``, calibrated (int8_full) on the
    rows the build uses (`parity_rows`); parity is the build's and the tests' job, here
    only what ships is measured."""
    from devicetune.export.build import parity_rows
    from devicetune.export.coreml import build_coreml
    from devicetune.export.quantize import kernel_bytes, quantize_tflite, quantized_model
    from devicetune.export.tflite import check_builtin_ops, convert_program

    export = config.export.model_copy(update={"quantize": mode})
    config = config.model_copy(update={"export": export})
    shipped = quantized_model(model, mode)
    rows = parity_rows(config, model, data_dir)[0] if mode == "int8_full" else None
    flatbuffer = quantize_tflite(convert_program(shipped.program(export), rows), mode)
    check_builtin_ops(flatbuffer)
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.tflite").write_bytes(flatbuffer)
    coreml = build_coreml(shipped, export, out)
    update = io.BytesIO()
    np.savez(update, **{f"w{i}": w for i, w in enumerate(model.weights())})
    return {"tflite": flatbuffer, "tflite_kb": len(flatbuffer) / 1024,
            "mlmodel_kb": coreml.path.stat().st_size / 1024,
            "kernels_kb": kernel_bytes(model, mode) / 1024,
            "update_kb": len(update.getvalue()) / 1024}


def personalization(flatbuffer: bytes, data, users: list[int], epochs: int, seed: int
                    ) -> tuple[float, float, list[float]]:
    """Global accuracy on every example of ``users``, and per user the gain of
    fine-tuning on the first half (in time) tested on the second half."""
    from devicetune.device.batching import padded_batches
    from devicetune.device.litert import LiteRTModel

    lite = LiteRTModel(flatbuffer)
    rows = np.isin(data.user, users)
    global_accuracy = float(np.mean(lite.infer(data.x[rows]).argmax(1) == data.y[rows]))
    gains = []
    rng = np.random.default_rng(seed)
    for user in users:
        index = np.flatnonzero(data.user == user)
        half = len(index) // 2
        lite = LiteRTModel(flatbuffer)
        features = lite.embed(data.x[index])
        labels = data.y[index].astype(np.int32)
        train_f, train_y = features[:half], labels[:half]
        test_f, test_y = features[half:], labels[half:]
        before = _accuracy(lite, test_f, test_y)
        for _ in range(epochs):
            order = rng.permutation(half)
            for batch in padded_batches(train_f, train_y, lite.batch_size, order=order):
                lite.train(*batch)
        after = _accuracy(lite, test_f, test_y)
        gains.append(100.0 * float(after - before))
    return global_accuracy, float(np.mean(gains)), gains


def _accuracy(lite, features: np.ndarray, labels: np.ndarray) -> float:
    from devicetune.device.batching import padded_batches

    correct = 0.0
    for batch in padded_batches(features, labels, lite.batch_size):
        correct += float(lite.evaluate(*batch)[1])
    return correct / len(labels)


def timings(flatbuffers: dict[str, bytes], x: np.ndarray, y: np.ndarray, steps: int,
            rounds: int = 5) -> dict[str, tuple[float, float]]:
    """Per setting, ms of ``infer`` (one example) and of ``embed`` + ``train`` (batch 8).
    The settings take turns over ``rounds`` rounds and each keeps its fastest round, so
    a burst of load on the shared machine does not land on one setting only."""
    from devicetune.device.litert import LiteRTModel

    calls = {}
    for mode, flatbuffer in flatbuffers.items():
        lite = LiteRTModel(flatbuffer, num_threads=1)
        one = x[:1]
        batch_x, batch_y = x[:lite.batch_size], y[:lite.batch_size].astype(np.int32)
        mask = np.ones(lite.batch_size, np.float32)
        calls[mode] = (lambda lite=lite, one=one: lite.infer(one),
                       lambda lite=lite, bx=batch_x, by=batch_y, m=mask:
                       lite.train(lite.embed(bx), by, m))
    best = {mode: [float("inf"), float("inf")] for mode in flatbuffers}
    for _ in range(rounds):
        for mode, (infer, step) in calls.items():
            best[mode][0] = min(best[mode][0], per_step_ms(infer, max(1, steps // rounds)))
            best[mode][1] = min(best[mode][1], per_step_ms(step, max(1, steps // rounds)))
    return {mode: (value[0], value[1]) for mode, value in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20, help="personalization epochs")
    parser.add_argument("--steps", type=int, default=300, help="timed LiteRT calls")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from devicetune.config import parse_config, resolve_data_dir
    from devicetune.data.sources import load_dataset
    from devicetune.model.trainable import build_trainable_model

    data_dir = resolve_data_dir()
    rows = []
    with tempfile.TemporaryDirectory(prefix="devicetune-app-size-") as scratch:
        for raw in (HAR, FSDD):
            config = parse_config(raw)
            name = config.name
            print(f"pretraining {name} ...", file=sys.stderr)
            model = build_trainable_model(config.model, config.seed, data_dir)
            data = load_dataset(DATASET[name], data_dir)
            unseen = data.for_users(UNSEEN[name])
            flatbuffers, measured = {}, []
            for mode in MODES:
                print(f"  {name} {mode}", file=sys.stderr)
                built = build_setting(model, config, mode, Path(scratch) / name / mode,
                                      data_dir)
                flatbuffers[mode] = built.pop("tflite")
                accuracy, gain, _ = personalization(flatbuffers[mode], unseen, UNSEEN[name],
                                                    args.epochs, config.seed)
                measured.append({"model": name, "quantize": mode, **built,
                                 "global_accuracy": accuracy,
                                 "personalization_gain_pts": gain})
            times = timings(flatbuffers, unseen.x, unseen.y, args.steps)
            for row in measured:
                row["infer_ms"], row["embed_train_ms"] = times[row["quantize"]]
            rows += measured
    for row in rows:
        base = next(r for r in rows if r["model"] == row["model"] and r["quantize"] == "none")
        row["tflite_vs_float32"] = row["tflite_kb"] / base["tflite_kb"]
        row["kernels_vs_float32"] = row["kernels_kb"] / base["kernels_kb"]
        row["accuracy_delta_pts"] = 100 * (row["global_accuracy"] - base["global_accuracy"])
        row["gain_delta_pts"] = row["personalization_gain_pts"] - base[
            "personalization_gain_pts"]
    header = (f"{'model':7} {'quantize':8} {'tflite KB':>9} {'x f32':>6} {'mlmodel KB':>10} "
              f"{'kernels KB':>10} {'x f32':>6} {'update KB':>9} {'infer ms':>8} "
              f"{'emb+train ms':>12} {'global acc':>10} {'d pts':>6} {'pers. gain':>10} "
              f"{'d pts':>6}")
    print(f"\nLiteRT, 1 thread, fastest of 5 rounds of {args.steps // 5} calls; "
          f"personalization {args.epochs} epochs per unseen user")
    print(header)
    for r in rows:
        print(f"{r['model']:7} {r['quantize']:8} {r['tflite_kb']:9.1f} "
              f"{r['tflite_vs_float32']:6.2f} {r['mlmodel_kb']:10.1f} {r['kernels_kb']:10.1f} "
              f"{r['kernels_vs_float32']:6.2f} {r['update_kb']:9.1f} {r['infer_ms']:8.3f} "
              f"{r['embed_train_ms']:12.3f} {100 * r['global_accuracy']:9.1f}% "
              f"{r['accuracy_delta_pts']:+6.1f} {r['personalization_gain_pts']:+9.1f}p "
              f"{r['gain_delta_pts']:+6.1f}")
    print(json.dumps({"benchmark": "app_size", "epochs": args.epochs, "steps": args.steps,
                      "rows": [{k: (round(v, 4) if isinstance(v, float) else v)
                                for k, v in r.items()} for r in rows]}))


if __name__ == "__main__":
    main()
