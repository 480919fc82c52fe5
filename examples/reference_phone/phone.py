"""A reference phone: devicetune's device protocol v1, and nothing of devicetune.

This is the executable spec the Kotlin and Swift clients mirror: it uses only httpx,
ai_edge_litert (LiteRT, as on Android), numpy and safetensors, and runs the downloaded
``model.tflite`` through its signatures (``embed``, ``configure``, ``set_weights``,
``train``/``train_dp``, ``get_weights``) as an app does. The protocol is described in
``docs/gateway-openapi.json`` (served at ``/docs`` by ``devicetune serve``)::

    phone = ReferencePhone("https://server:9094", x, y, verify="ca.pem")
    phone.enroll(ENROLLMENT_TOKEN)     # once; keep phone.credential in the keystore
    phone.run(stop)                    # check in, train when told to, report, repeat

A signed version emitted by the federation can be fetched from the model registry and
verified with `fetch_version` (model-signing, the OpenSSF format devicetune signs in).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from safetensors.numpy import load, save

TIMEOUT_S = 60.0


class ReferencePhone:
    """One phone: its data, its interpreter, its credential.

    Args:
        url: the gateway, e.g. ``https://server:9094``.
        x, y: the phone's own training examples and labels (they never leave it).
        verify: the CA file that signed the server's certificate (or False for plain
            HTTP on a development machine).
        platform: ``android`` (LiteRT; the only one this phone runs).
        charging, unmetered, idle: the eligibility it reports at check-in.
    """

    def __init__(self, url: str, x: np.ndarray, y: np.ndarray, *,
                 verify: str | bool = True, platform: str = "android",
                 charging: bool = True, unmetered: bool = True, idle: bool = True) -> None:
        self.http = httpx.Client(base_url=url, verify=verify, timeout=TIMEOUT_S)
        self.x, self.y = np.asarray(x, np.float32), np.asarray(y, np.int32)
        self.platform = platform
        self.eligibility = {"charging": charging, "unmetered": unmetered, "idle": idle}
        self.credential: str | None = None
        self.device_id: int | None = None
        self.model_version: int | None = None
        self._interpreter: Any = None
        self._model_sha256: str | None = None
        self.reports: list[dict[str, Any]] = []  # the answers to this phone's reports
        self.task: dict[str, Any] | None = None  # the task it is working on

    # ------------------------------------------------------------------ protocol

    def enroll(self, enrollment_token: str) -> None:
        answer = self.http.post("/v1/enroll", json={"enrollment_token": enrollment_token,
                                                    "platform": self.platform})
        answer.raise_for_status()
        self.device_id, self.credential = answer.json()["device_id"], \
            answer.json()["credential"]

    @property
    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.credential}"}

    def check_in(self) -> dict[str, Any]:
        """``{"task": {...} | None, "retry_after_s": N}``."""
        answer = self.http.post("/v1/checkin", headers=self.auth, json={
            "platform": self.platform, "model_version": self.model_version,
            **self.eligibility})
        answer.raise_for_status()
        return answer.json()

    def train(self, task: dict[str, Any]) -> bytes:
        """Run the task on the phone's data; the report body (safetensors)."""
        self._load_model(task)
        start = load(self._get(task["weights_url"]).content)
        steps = self._fit(start, task["instructions"])
        weights = self._signature("get_weights")(unused=np.zeros((), np.int32))
        metadata = {"num_examples": str(len(self.y)), "train_loss": repr(self.last_loss)}
        if task["instructions"]["dp_sgd"]:
            metadata["dp_steps"] = str(steps)
        return save({k: np.ascontiguousarray(v, np.float32) for k, v in weights.items()},
                    metadata=metadata)

    def report(self, task: dict[str, Any], body: bytes) -> httpx.Response:
        return self.http.post(f"/v1/tasks/{task['task_id']}/report", content=body,
                              headers={**self.auth,
                                       "content-type": "application/octet-stream"})

    def run(self, stop: threading.Event, max_wait_s: float = 5.0) -> None:
        """Check in, train, report, until ``stop``; waits as the server says (at most
        ``max_wait_s`` here, so a test's phones stay responsive). A report that could
        not be delivered (the server unreachable) is sent again, as it is safe to: an
        accepted one counts once, and one whose round was lost gets 404 or 410, which
        mean "check in again"."""
        pending: tuple[dict[str, Any], bytes] | None = None
        while not stop.is_set():
            try:
                if pending is not None:
                    reply = self.report(*pending)
                    pending, self.task = None, None
                    self.reports.append({"status": reply.status_code, **reply.json()})
                    continue
                answer = self.check_in()
                self.task = answer["task"]
                if self.task is None:
                    stop.wait(min(answer["retry_after_s"], max_wait_s))
                    continue
                pending = (self.task, self.train(self.task))
            except httpx.TransportError:  # the server is down or restarting
                stop.wait(min(1.0, max_wait_s))

    # ------------------------------------------------------------------ the artifact

    def _get(self, url: str) -> httpx.Response:
        answer = self.http.get(url, headers=self.auth)
        answer.raise_for_status()
        return answer

    def _load_model(self, task: dict[str, Any]) -> None:
        if self._interpreter is not None and self._model_sha256 == task["model_sha256"]:
            return
        from ai_edge_litert.interpreter import Interpreter

        data = self._get(task["model_url"]).content
        if hashlib.sha256(data).hexdigest() != task["model_sha256"]:
            raise ValueError("the downloaded model does not match the task's sha256")
        self._interpreter = Interpreter(model_content=data, num_threads=1)
        self._model_sha256 = task["model_sha256"]
        self._features = self._signature("embed")(x=self.x)["features"]

    def _signature(self, name: str) -> Any:
        return self._interpreter.get_signature_runner(name)

    def _fit(self, start: dict[str, np.ndarray], instructions: dict[str, Any]) -> int:
        """Local epochs from ``start``: one optimizer step per static batch, padded rows
        masked out. Returns the optimizer steps taken."""
        self._signature("set_weights")(**{k: np.asarray(v, np.float32)
                                           for k, v in start.items()})
        self._signature("configure")(
            learning_rate=np.float32(instructions["learning_rate"]),
            proximal_mu=np.float32(instructions["proximal_mu"]))
        train = self._signature("train_dp" if instructions["dp_sgd"] else "train")
        batch = int(train.get_input_details()["features"]["shape"][0])
        rng, n, steps = np.random.default_rng(), len(self.y), 0
        for _ in range(instructions["local_epochs"]):
            order, total = rng.permutation(n), 0.0
            for first in range(0, n, batch):
                rows = order[first:first + batch]
                features = np.zeros((batch, self._features.shape[1]), np.float32)
                labels = np.zeros(batch, np.int32)
                mask = np.zeros(batch, np.float32)
                features[:len(rows)], labels[:len(rows)], mask[:len(rows)] = \
                    self._features[rows], self.y[rows], 1.0
                loss = train(features=features, labels=labels, mask=mask)["loss"]
                total += float(loss) * len(rows)
                steps += 1
            self.last_loss = total / max(1, n)
        return steps


def fetch_version(registry_url: str, name: str, device_id: str, folder: Path,
                  public_key: Path, verify: str | bool = True) -> dict[str, Any]:
    """Download the version the registry assigns this device, every file of it, and
    verify it: each file's sha256 against the registry record, then the signature
    (model-signing) with the publisher's public key. Returns the version record.

    Raises:
        ValueError: a file's digest differs, or the signature does not verify.
    """
    from model_signing import hashing, verifying

    with httpx.Client(base_url=registry_url, verify=verify, timeout=TIMEOUT_S) as http:
        latest = http.get(f"/v1/models/{name}/latest", params={"device_id": device_id})
        latest.raise_for_status()
        version = latest.json()["version"]
        record = http.get(f"/v1/models/{name}/versions/{version}").json()
        folder.mkdir(parents=True, exist_ok=True)
        for file, entry in record["files"].items():
            url = (f"/v1/models/{name}/versions/{version}/manifest" if file == "manifest.json"
                   else f"/v1/models/{name}/versions/{version}/files/{file}")
            data = http.get(url).raise_for_status().content
            if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                raise ValueError(f"{file}: its sha256 differs from the registry's record")
            (folder / file).write_bytes(data)
    config = verifying.Config().use_elliptic_key_verifier(public_key=Path(public_key))
    config.set_hashing_config(hashing.Config().set_ignored_paths(paths=["model.sig"]))
    config.verify(folder, folder / "model.sig")  # raises when it does not verify
    manifest = json.loads((folder / "manifest.json").read_text())
    for file, digest in manifest.get("files", {}).items():
        wanted = digest if isinstance(digest, str) else digest.get("sha256")
        if hashlib.sha256((folder / file).read_bytes()).hexdigest() != wanted:
            raise ValueError(f"{file}: its sha256 differs from the signed manifest")
    return record


def main() -> None:  # pragma: no cover - a manual run against a server
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("url")
    parser.add_argument("--token-file", required=True, type=Path)
    parser.add_argument("--data", required=True, type=Path, help=".npz with x and y")
    parser.add_argument("--ca", default=True, help="CA file of the server certificate")
    parser.add_argument("--seconds", type=float, default=600.0)
    args = parser.parse_args()
    with np.load(args.data) as data:
        phone = ReferencePhone(args.url, data["x"], data["y"], verify=args.ca)
    phone.enroll(args.token_file.read_text().strip())
    stop = threading.Event()
    threading.Timer(args.seconds, stop.set).start()
    started = time.monotonic()
    phone.run(stop)
    print(f"{len(phone.reports)} reports in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
