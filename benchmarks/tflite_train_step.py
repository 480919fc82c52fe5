"""One on-device training step: devicetune's LiteRT artifact against what users write.

On the HAR model (simulations/har_build.toml), in one process:

1. per-step time of devicetune's LiteRT ``train`` signature (batch 8), on cached
   features and with the backbone run each step (``embed`` + ``train``);
2. the same head fine-tuned with Keras ``train_on_batch``, on features and with the
   frozen backbone in front (what a user would write);
3. TensorFlow's own on-device training recipe (tf.lite on-device training guide:
   GradientTape + the Keras optimizer in a ``tf.Module``, converted with
   SELECT_TF_OPS): which Flex ops it needs, its size, and whether LiteRT runs it.

Run:  .venv/bin/python benchmarks/tflite_train_step.py [--steps 2000]
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def per_step_ms(fn, steps: int, warmup: int = 20) -> float:
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps * 1e3


def tensorflow_recipe(backbone, num_classes: int, learning_rate: float, batch: int):
    """TensorFlow's documented on-device training model, on the same backbone and head."""
    import keras
    import tensorflow as tf

    backbone.trainable = False
    model = keras.Sequential([backbone, keras.layers.Dense(num_classes)])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    shape = list(backbone.inputs[0].shape[1:])

    class Recipe(tf.Module):
        def __init__(self) -> None:
            self.model = model

        # The guide's signatures take any batch size.
        @tf.function(input_signature=[tf.TensorSpec([None, *shape], tf.float32),
                                      tf.TensorSpec([None], tf.int32)])
        def train(self, x, y):
            with tf.GradientTape() as tape:
                loss = self.model.loss(y, self.model(x))
            grads = tape.gradient(loss, self.model.trainable_variables)
            pairs = zip(grads, self.model.trainable_variables, strict=True)
            self.model.optimizer.apply_gradients(pairs)
            return {"loss": loss}

        @tf.function(input_signature=[tf.TensorSpec([None, *shape], tf.float32)])
        def infer(self, x):
            return {"probabilities": tf.nn.softmax(self.model(x))}

        @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
        def save(self, path):
            weights = self.model.weights
            tf.raw_ops.Save(filename=path, tensor_names=[w.path for w in weights],
                            data=[w.value for w in weights])
            return {"path": path}

    recipe = Recipe()
    x0 = np.zeros([batch, *shape], np.float32)
    recipe.train(x0, np.zeros(batch, np.int32))  # create the optimizer's variables
    with tempfile.TemporaryDirectory() as saved:
        tf.saved_model.save(recipe, saved, signatures={
            "train": recipe.train.get_concrete_function(),
            "infer": recipe.infer.get_concrete_function(),
            "save": recipe.save.get_concrete_function()})
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS,
                                               tf.lite.OpsSet.SELECT_TF_OPS]
        converter.experimental_enable_resource_variables = True
        return converter.convert()


def constant_bytes(flatbuffer: bytes) -> int:
    """Bytes of constant data (weights) stored in a TFLite flatbuffer."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(flatbuffer, 0)
    return sum(model.Buffers(i).DataLength() for i in range(model.BuffersLength()))


def runs_in_litert(flatbuffer: bytes, batch: tuple[np.ndarray, np.ndarray]) -> str:
    """Try the recipe's train signature in the LiteRT interpreter, as an app would."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_content=flatbuffer)
        interpreter.get_signature_runner("train")(x=batch[0], y=batch[1])
        return "yes"
    except Exception as exc:  # the interpreter refuses Flex ops without the delegate
        return "no: " + " ".join(str(exc).split())[:100]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--keras-steps", type=int, default=300)
    args = parser.parse_args()

    import keras

    from devicetune.config import load_config, resolve_data_dir
    from devicetune.data.har import load_har
    from devicetune.device.batching import padded_batches
    from devicetune.device.litert import LiteRTModel
    from devicetune.export.build import build
    from devicetune.export.tflite import operator_names

    config = load_config(ROOT / "simulations" / "har_build.toml")
    data_dir = resolve_data_dir()
    out = Path(tempfile.mkdtemp(prefix="bench-tflite-"))
    print(f"building {config.name} into {out} ...", file=sys.stderr)
    result = build(config, out, data_dir)
    lite = LiteRTModel(out / "model.tflite")
    batch = lite.batch_size
    har = load_har(data_dir).for_users([16])
    x, y = har.x[: batch * 8], har.y[: batch * 8].astype(np.int32)
    features = lite.embed(x)
    batches = list(padded_batches(features, y, batch))
    raw = [(x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch)]
    step = {"i": 0}

    def ours() -> None:
        step["i"] += 1
        lite.train(*batches[step["i"] % len(batches)])

    def ours_with_backbone() -> None:
        step["i"] += 1
        xb, yb = raw[step["i"] % len(raw)]
        lite.train(lite.embed(xb), yb, np.ones(batch, np.float32))

    timings = {
        "devicetune LiteRT train (cached features)": per_step_ms(ours, args.steps),
        "devicetune LiteRT embed + train": per_step_ms(ours_with_backbone, args.steps // 4),
    }

    backbone = keras.saving.load_model(out / "backbone.keras", compile=False)
    learning_rate = config.model.optimizer.learning_rate
    head = keras.Sequential([keras.Input((features.shape[1],)),
                             keras.layers.Dense(len(config.model.classes),
                                                activation="softmax")])
    head.compile(optimizer=keras.optimizers.Adam(learning_rate),
                 loss="sparse_categorical_crossentropy")
    backbone.trainable = False
    full = keras.Sequential([backbone, keras.layers.Dense(len(config.model.classes),
                                                          activation="softmax")])
    full.compile(optimizer=keras.optimizers.Adam(learning_rate),
                 loss="sparse_categorical_crossentropy")

    def keras_head() -> None:
        step["i"] += 1
        f, yb, _ = batches[step["i"] % len(batches)]
        head.train_on_batch(f, yb)

    def keras_full() -> None:
        step["i"] += 1
        xb, yb = raw[step["i"] % len(raw)]
        full.train_on_batch(xb, yb)

    timings["Keras train_on_batch, head on features"] = per_step_ms(keras_head,
                                                                    args.keras_steps)
    timings["Keras train_on_batch, frozen backbone + head"] = per_step_ms(keras_full,
                                                                          args.keras_steps)

    recipe = tensorflow_recipe(keras.saving.load_model(out / "backbone.keras", compile=False),
                               len(config.model.classes), learning_rate, batch)
    recipe_ops = operator_names(recipe)
    flex = sorted(op.removeprefix("CUSTOM:") for op in recipe_ops if op.startswith("CUSTOM:"))
    runs = runs_in_litert(recipe, raw[0])

    ours_ms = timings["devicetune LiteRT train (cached features)"]
    print(f"\nHAR model, batch {batch}, {args.steps} LiteRT steps, {args.keras_steps} Keras "
          "steps, 1 process\n")
    print(f"{'training step':48} {'ms/step':>9} {'x slower than ours':>19}")
    for name, ms in timings.items():
        print(f"{name:48} {ms:9.3f} {ms / ours_ms:19.1f}")
    ours_flatbuffer = (out / "model.tflite").read_bytes()
    ours_bytes = len(ours_flatbuffer)
    weight_bytes = sum(w.size for w in backbone.get_weights()) * 4
    print(f"\n{'artifact':40} {'bytes':>9} {'weights in it':>14}  notes")
    print(f"{'devicetune model.tflite':40} {ours_bytes:9,} {constant_bytes(ours_flatbuffer):14,}"
          f"  {len(result.manifest.tflite.builtin_ops)} built-in ops, no Flex")
    print(f"{'TF recipe .tflite':40} {len(recipe):9,} {constant_bytes(recipe):14,}"
          f"  Flex ops: {', '.join(flex) or 'none'}")
    print(f"{'':40} {'':9} {'':14}  runs in ai_edge_litert: {runs}")
    print(f"(the backbone's weights are {weight_bytes:,} bytes; TensorFlow's ops_select "
          "guide: the Flex delegate adds about 8 MB to an APK against 0.56 MB for built-ins "
          "only.)\n")
    print(json.dumps({
        "benchmark": "tflite_train_step",
        "ours_ms_per_step": round(ours_ms, 4),
        "ours_embed_train_ms_per_step": round(
            timings["devicetune LiteRT embed + train"], 4),
        "keras_head_ms_per_step": round(timings["Keras train_on_batch, head on features"], 4),
        "keras_full_ms_per_step": round(
            timings["Keras train_on_batch, frozen backbone + head"], 4),
        "speedup_vs_keras_head": round(
            timings["Keras train_on_batch, head on features"] / ours_ms, 1),
        "ours_tflite_bytes": ours_bytes, "recipe_tflite_bytes": len(recipe),
        "ours_weight_bytes": constant_bytes(ours_flatbuffer),
        "recipe_weight_bytes": constant_bytes(recipe),
        "recipe_flex_ops": flex, "recipe_runs_in_litert": runs == "yes",
    }))


if __name__ == "__main__":
    main()
