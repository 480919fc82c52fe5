"""The app's plain-JVM Kotlin, compiled by ``kotlinc`` and run: the protocol v1 client
federates through the real gateway (HTTP on 127.0.0.1) in the same round as a reference
phone, and the seen_rerank rule and its gate give what the simulator's numpy gives."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from devicetune.fleet.personalize_seen import SeenRerankSearch, combine, predict
from tests.examples.kotlin_build import compile_jar, java_command
from tests.server.gateway_harness import TOKEN, GatewayHarness, ReferencePhone

DELTA = 0.001  # what the test's Kotlin adapter adds to every weight


@pytest.fixture(scope="module")
def jar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Kept beside pytest's numbered session folders (above a worker's own folder under
    # pytest-xdist), so an unchanged set of sources is compiled once across runs.
    base = tmp_path_factory.getbasetemp()
    root = base.parent.parent if os.environ.get("PYTEST_XDIST_WORKER") else base.parent
    built, seconds = compile_jar(root / "kotlin-jars")
    print(f"\nkotlinc: {seconds:.1f} s" if seconds else "\nkotlinc: jar cached")
    return built


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory, small_artifacts: Path
            ) -> Iterator[GatewayHarness]:
    served = GatewayHarness(tmp_path_factory.mktemp("kotlin-gateway"), small_artifacts)
    try:
        yield served
    finally:
        served.stop()


def steps(trace: list[str]) -> list[str]:
    """Protocol steps of a request trace ("METHOD /path -> status") up to the first
    report, repeats collapsed."""
    names = []
    for line in trace:
        path = line.split()[1]
        name = ("enroll" if path == "/v1/enroll" else "checkin" if path == "/v1/checkin"
                else "model" if path.startswith("/v1/model/") else
                "weights" if path.endswith("/weights") else
                "report" if path.endswith("/report") else path)
        if not names or names[-1] != name:
            names.append(name)
        if name == "report":
            break
    return names


class KotlinDevice:
    """The compiled client in its own JVM; its stdout lines collected by a thread."""

    def __init__(self, jar: Path, url: str) -> None:
        self.process = subprocess.Popen(java_command(jar, "federate", url, TOKEN, str(DELTA),
                                                     "0.2"),
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str) -> re.Match[str]:
        while True:
            for line in list(self.lines):
                if found := re.fullmatch(pattern, line):
                    return found
            assert self.process.poll() is None or self.reader.is_alive(), \
                f"the Kotlin client exited: {self.process.stderr.read()}"  # type: ignore[union-attr]
            time.sleep(0.05)

    @property
    def trace(self) -> list[str]:
        return [line.removeprefix("TRACE ") for line in self.lines if line.startswith("TRACE ")]


def test_the_kotlin_client_federates_beside_the_reference_phone(
        jar: Path, harness: GatewayHarness) -> None:
    """Enroll, check in (told to come back), get a task, download the model (sha256) and
    the start weights, train through the adapter, report in safetensors: the server
    aggregates exactly start + DELTA from the Kotlin device, beside the reference phone's
    report; a resent report is counted once; both followed the same protocol steps."""
    kotlin = KotlinDevice(jar, harness.url)
    phone_trace: list[str] = []
    rng = np.random.default_rng(1)
    phone = ReferencePhone(harness.url, rng.normal(size=(20, 128, 9)).astype(np.float32),
                           rng.integers(0, 6, 20), verify=False)
    phone.http.event_hooks["response"].append(
        lambda r: phone_trace.append(f"{r.request.method} {r.request.url.path} -> "
                                     f"{r.status_code}"))
    phone.enroll(TOKEN)
    stop = threading.Event()
    runner = threading.Thread(target=phone.run, args=(stop, 0.2))
    runner.start()
    try:
        kotlin_id = int(kotlin.wait_for(r"ENROLLED (\d+)").group(1))
        kotlin.wait_for(r"TRACE POST /v1/checkin -> 200")
        while "POST /v1/checkin -> 200" not in phone_trace:
            assert runner.is_alive(), "the reference phone stopped"
            time.sleep(0.05)
        harness.open_round(1, [kotlin_id, phone.device_id])
        replies = harness.close()
        resent = kotlin.wait_for(r"RESENT duplicate=(\w+)").group(1)
        while not phone.reports:
            assert runner.is_alive(), "the reference phone stopped"
            time.sleep(0.05)
    finally:
        stop.set()
        runner.join()
        kotlin.process.wait()
    assert kotlin.process.returncode == 0, kotlin.process.stderr.read()  # type: ignore[union-attr]
    by_device = {int(r.content["metrics"]["device-id"]) - 1_000_000_000: r for r in replies}
    assert set(by_device) == {kotlin_id, phone.device_id}
    ours = by_device[kotlin_id]
    assert ours.content["metrics"]["num-examples"] == 20
    for name in harness.names:
        sent = ours.content["arrays"][name].numpy()
        np.testing.assert_allclose(sent, harness.start[name] + np.float32(DELTA), rtol=0,
                                   atol=1e-6, err_msg=name)
    assert resent == "true"  # the same report again: accepted once, answered again
    assert harness.gateway.counters()["gateway_duplicates"] == 1
    assert phone.reports[0]["accepted"] is True
    # Both followed the same protocol steps in the same order, to their first report.
    assert steps(kotlin.trace) == steps(phone_trace) == \
        ["enroll", "checkin", "model", "weights", "report"], (kotlin.trace, phone_trace)


def test_the_kotlin_client_refuses_a_wrong_enrollment_token(
        jar: Path, harness: GatewayHarness) -> None:
    done = subprocess.run(java_command(jar, "federate", harness.url, "not-the-token", "0",
                                       "0.2"), capture_output=True, text=True, check=False)
    assert done.returncode != 0
    assert "POST /v1/enroll: HTTP 403" in done.stderr, done.stderr


def _csv(values: np.ndarray) -> str:
    return ",".join(repr(float(v)) for v in values)


def test_the_kotlin_seen_rerank_rule_is_the_simulators(jar: Path, tmp_path: Path) -> None:
    """combine and predict on random probability rows: seen sets of every size (none, some,
    all), rows whose global top class is unseen, blends 0 to 1."""
    rng = np.random.default_rng(7)
    cases = []
    for _ in range(200):
        classes = int(rng.integers(2, 8))
        g, p = rng.dirichlet(np.ones(classes)), rng.dirichlet(np.ones(classes))
        seen = np.sort(rng.choice(classes, int(rng.integers(0, classes + 1)), replace=False))
        blend = float(rng.choice([0.0, 0.25, 0.5, 0.75, 1.0, rng.uniform()]))
        cases.append((g, p, seen, blend))
    (tmp_path / "in.txt").write_text("\n".join(
        f"{b!r};{','.join(map(str, s))};{_csv(g)};{_csv(p)}" for g, p, s, b in cases))
    subprocess.run(java_command(jar, "rerank", str(tmp_path / "in.txt"),
                                str(tmp_path / "out.txt")), check=True)
    lines = (tmp_path / "out.txt").read_text().splitlines()
    assert len(lines) == len(cases)
    unseen_top = 0
    for (g, p, seen, blend), line in zip(cases, lines, strict=True):
        probabilities, cls = line.split(";")
        expected = combine(g[None], p[None], seen, blend)[0]
        np.testing.assert_allclose(np.array(probabilities.split(","), float), expected,
                                   rtol=1e-12, atol=1e-15)
        assert int(cls) == predict(g[None], p[None], seen, blend)[0]
        unseen_top += len(seen) > 0 and g.argmax() not in seen
    assert unseen_top > 10  # the protected case was exercised


def test_the_kotlin_gate_chooses_as_the_simulator(jar: Path, tmp_path: Path) -> None:
    """SeenRerank.choose against SeenRerankSearch.best: random counts, ties, gate on/off,
    epochs chosen or fixed."""
    rng = np.random.default_rng(3)
    searches, lines = [], []
    for _ in range(200):
        search = SeenRerankSearch(int(rng.integers(1, 5)))
        search.total = int(rng.integers(1, 60))
        search.correct = rng.integers(0, search.total + 1,
                                      size=search.correct.shape).astype(float)
        gate, margin = bool(rng.integers(0, 2)), float(rng.choice([0.0, 1.0, 2.0]))
        choose = bool(rng.integers(0, 2))
        searches.append((search, gate, margin, choose))
        lines.append(f"{str(gate).lower()};{margin!r};{search.total};{_csv(search.blends)};"
                     + "|".join(_csv(row) for row in search.correct) + f";{str(choose).lower()}")
    (tmp_path / "in.txt").write_text("\n".join(lines))
    subprocess.run(java_command(jar, "choose", str(tmp_path / "in.txt"),
                                str(tmp_path / "out.txt")), check=True)
    answers = (tmp_path / "out.txt").read_text().splitlines()
    kept_global = 0
    for (search, gate, margin, choose), answer in zip(searches, answers, strict=True):
        epochs, blend = answer.split(";")
        assert (int(epochs), float(blend)) == search.best(gate, margin, choose), answer
        kept_global += int(epochs) == 0
    assert 10 < kept_global < 190  # the gate both kept the global model and let through


@pytest.fixture(scope="module")
def encrypted(tmp_path_factory: pytest.TempPathFactory, small_artifacts: Path
              ) -> tuple[Path, Path, Path]:
    """A fresh build encrypted for one app key: (folder, PKCS#8 DER, X.509 DER)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from devicetune.artifacts.encryption import encrypt_folder

    base = tmp_path_factory.mktemp("encrypted")
    key = ec.generate_private_key(ec.SECP256R1())
    encrypt_folder(small_artifacts, base / "version", [key.public_key()])
    private = base / "app.pk8"
    private.write_bytes(key.private_bytes(serialization.Encoding.DER,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public = base / "app.pub.der"
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
    return base / "version", private, public


def _decrypt(jar: Path, folder: Path, private: Path, public: Path, out: Path
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(java_command(jar, "decrypt", str(folder), str(private), str(public),
                                       str(out)), capture_output=True, text=True, check=False)


def test_the_kotlin_app_decrypts_an_encrypted_version(
        jar: Path, encrypted: tuple[Path, Path, Path], small_artifacts: Path,
        tmp_path: Path) -> None:
    """ECDH P-256 + HKDF-SHA256 + AES-256-GCM in javax.crypto opens what
    artifacts/encryption.py wrote: every payload file back byte for byte."""
    import json

    folder, private, public = encrypted
    done = _decrypt(jar, folder, private, public, tmp_path / "plain")
    assert done.returncode == 0, done.stderr
    files = json.loads((small_artifacts / "manifest.json").read_text())["files"]
    assert done.stdout.strip() == "DECRYPTED " + ",".join(sorted(files))
    for name in files:
        assert (tmp_path / "plain" / name).read_bytes() == (small_artifacts / name).read_bytes()


def test_the_kotlin_app_refuses_another_key_and_an_altered_file(
        jar: Path, encrypted: tuple[Path, Path, Path], tmp_path: Path) -> None:
    import shutil

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder, private, public = encrypted
    other = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "other.pk8").write_bytes(other.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (tmp_path / "other.der").write_bytes(other.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
    refused = _decrypt(jar, folder, tmp_path / "other.pk8", tmp_path / "other.der",
                       tmp_path / "out1")
    assert refused.returncode != 0
    assert "not encrypted for this app's key" in refused.stderr, refused.stderr

    altered = tmp_path / "altered"
    shutil.copytree(folder, altered)
    blob = bytearray((altered / "model.tflite.enc").read_bytes())
    blob[100] ^= 1
    (altered / "model.tflite.enc").write_bytes(bytes(blob))
    refused = _decrypt(jar, altered, private, public, tmp_path / "out2")
    assert refused.returncode != 0
    assert "model.tflite: decryption failed" in refused.stderr, refused.stderr
    assert not (tmp_path / "out2" / "model.tflite").exists()


class LinearRuntime:
    """The simulator's runtime, reduced to a dense softmax head on fixed features trained
    by full-batch gradient descent in float64 (what Check.kt's LinearHead does), so the
    simulator's own `_seen_rerank` and the Kotlin recipe see the same head."""

    def __init__(self) -> None:
        self.kernel = self.bias = np.zeros(0)

    def set_weights(self, weights: list[np.ndarray]) -> None:
        self.kernel, self.bias = (np.asarray(w, np.float64) for w in weights)

    def get_weights(self) -> list[np.ndarray]:
        return [self.kernel.astype(np.float32), self.bias.astype(np.float32)]

    def fit(self, x: np.ndarray, y: np.ndarray, epochs: int, rng: Any,
            learning_rate: float, on_epoch: Any = None) -> None:
        for epoch in range(1, epochs + 1):
            logits = x @ self.kernel + self.bias
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            p[np.arange(len(y)), y] -= 1.0
            self.kernel = self.kernel - learning_rate * (x.T @ p) / len(y)
            self.bias = self.bias - learning_rate * p.sum(axis=0) / len(y)
            if on_epoch is not None:
                on_epoch(epoch)


def _recipe_case(seed: int, own_labels: bool) -> dict[str, Any]:
    """A device with 80 past examples of classes 0-2 (of 5) and 40 future ones of all five;
    its labels follow its own rule (``own_labels``: personalisation can gain) or the
    global model's (nothing to gain: the gate must keep the global model)."""
    rng = np.random.default_rng(seed)
    d, classes = 6, 5
    kernel = rng.normal(size=(d, classes)).astype(np.float32)
    bias = np.zeros(classes, np.float32)
    own = rng.normal(size=(d, classes))

    def label(x: np.ndarray, allowed: np.ndarray) -> np.ndarray:
        scores = x @ (own if own_labels else kernel.astype(np.float64))
        masked = np.full_like(scores, -np.inf)
        masked[:, allowed] = scores[:, allowed]
        return masked.argmax(axis=1)

    x, test_x = rng.normal(size=(80, d)), rng.normal(size=(40, d))
    return {"classes": classes, "rate": 0.5, "kernel": kernel.ravel().tolist(),
            "bias": bias.tolist(), "x": x.tolist(), "y": label(x, np.arange(3)).tolist(),
            "test_x": test_x.tolist(), "test_y": label(test_x, np.arange(classes)).tolist()}


def test_the_kotlin_recipe_chooses_as_the_simulator(jar: Path, tmp_path: Path) -> None:
    """PersonalizationRecipe.kt with its defaults and the simulator's `_seen_rerank` with
    PersonalizationConfig's: the same epochs, blend and accuracy on the future examples,
    on devices where personalisation gains and where the gate keeps the global model."""
    import json

    from devicetune.config.fleet import PersonalizationConfig
    from devicetune.fleet.personalize import _seen_rerank
    from devicetune.run_files import PersonalizationResult

    outcomes = []
    for seed, own_labels in [(0, True), (1, True), (2, True), (3, False), (4, False)]:
        case = _recipe_case(seed, own_labels)
        (tmp_path / f"case{seed}.json").write_text(json.dumps(case))
        done = subprocess.run(java_command(jar, "recipe", str(tmp_path / f"case{seed}.json")),
                              capture_output=True, text=True, check=True)
        epochs, blend, accuracy = done.stdout.strip().removeprefix("RECIPE ").split(";")
        x, y = np.array(case["x"]), np.array(case["y"])
        test_x, test_y = np.array(case["test_x"]), np.array(case["test_y"])
        start = PersonalizationResult(device_id=seed, platform="android", tier="", n_train=80,
                                      n_test=40, acc_global=float("nan"),
                                      acc_personal=float("nan"), epochs=0, kept_global=True)
        kernel = np.array(case["kernel"], np.float32).reshape(6, 5)
        ours = _seen_rerank(LinearRuntime(), x, y, test_x, test_y,
                            [kernel, np.array(case["bias"], np.float32)],
                            PersonalizationConfig(), case["rate"], np.random.default_rng(0),
                            ["linear"], start)
        assert (int(epochs), float(blend)) == (ours.epochs, ours.blend), (seed, done.stdout)
        if ours.blend:
            assert float(accuracy) == pytest.approx(ours.acc_personal, abs=1e-12)
        outcomes.append(ours.blend > 0)
    assert any(outcomes[:3]) and not any(outcomes[3:])  # both sides of the gate ran


def test_the_kotlin_client_refuses_a_model_that_is_not_the_tasks(
        jar: Path, harness: GatewayHarness) -> None:
    """The real model, downloaded for a task that names another sha256: refused."""
    done = subprocess.run(java_command(jar, "bad-model", harness.url, TOKEN),
                          capture_output=True, text=True, check=False)
    assert done.returncode != 0 and "ACCEPTED" not in done.stdout
    assert "the model does not match the task's sha256" in done.stderr, done.stderr


def test_the_kotlin_safetensors_reader_refuses_what_it_cannot_read(
        jar: Path, tmp_path: Path) -> None:
    """A file safetensors.numpy wrote reads back; a truncated one and a float64 tensor
    are refused with a message naming the problem."""
    from safetensors.numpy import save

    good = save({"a": np.arange(6, dtype=np.float32).reshape(2, 3),
                 "b": np.ones(4, np.float32)}, metadata={"num_examples": "3"})
    cases = {"good": good, "truncated": good[:-4],
             "float64": save({"a": np.zeros(3, np.float64)})}
    answers = {}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        answers[name] = subprocess.run(java_command(jar, "decode", str(tmp_path / name)),
                                       capture_output=True, text=True, check=False)
    assert answers["good"].stdout.strip() == "DECODED a:6,b:4", answers["good"].stderr
    assert "b runs past the end" in answers["truncated"].stderr
    assert "a is F64, not F32" in answers["float64"].stderr
