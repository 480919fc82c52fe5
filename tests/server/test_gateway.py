"""The device gateway's protocol v1 over real HTTP on 127.0.0.1, with reference phones:
a round's tasks and reports, and every refusal (each one counted for metrics.jsonl)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from safetensors.numpy import save

from devicetune.server.gateway import DEVICES_FILE, Gateway
from tests.server.gateway_harness import (
    CHECKIN_INTERVAL_S,
    MAX_REPORT_BYTES,
    TOKEN,
    GatewayHarness,
)


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory, small_artifacts: Path
            ) -> Iterator[GatewayHarness]:
    served = GatewayHarness(tmp_path_factory.mktemp("gateway"), small_artifacts,
                            max_update_norm=5.0)
    try:
        yield served
    finally:
        served.stop()


def _report(weights: dict[str, np.ndarray], examples: str = "20") -> bytes:
    return save({k: np.ascontiguousarray(v) for k, v in weights.items()},
                metadata={"num_examples": examples, "train_loss": "0.5"})


def _refused(harness: GatewayHarness, reason: str) -> int:
    return harness.gateway.refused[reason]


def test_a_round_closes_at_its_target_and_its_reports_become_replies(
        harness: GatewayHarness) -> None:
    """Three phones over-selected for a target of two: the round closes when two have
    reported; the third is told, at its report, that the round has closed."""
    phones = [harness.phone() for _ in range(3)]
    assert all(p.check_in()["task"] is None for p in phones)  # into the pool
    harness.open_round(1, [p.device_id for p in phones])
    tasks = [p.check_in()["task"] for p in phones]
    assert len({t["task_id"] for t in tasks}) == 3 and {t["round"] for t in tasks} == {1}
    assert tasks[0]["instructions"] == {"local_epochs": 1, "learning_rate": 0.01,
                                        "proximal_mu": 0.0, "dp_sgd": False}
    bodies = [p.train(t) for p, t in zip(phones, tasks, strict=True)]
    for phone, task, body in list(zip(phones, tasks, bodies, strict=True))[:2]:
        answer = phone.report(task, body)
        assert answer.json() == {"accepted": True, "duplicate": False}, answer.text
    replies = harness.close()
    assert sorted(int(r.content["metrics"]["device-id"]) - 1_000_000_000
                  for r in replies) == sorted(p.device_id for p in phones[:2])
    assert all(r.content["metrics"]["num-examples"] == 20 for r in replies)
    late = phones[2].report(tasks[2], bodies[2])
    assert late.status_code == 410, late.text
    # An identical retry of an accepted report is answered again and counted once.
    again = phones[0].report(tasks[0], bodies[0])
    assert again.json() == {"accepted": True, "duplicate": True}
    # A replay of the task with another body is refused.
    replay = phones[0].report(tasks[0], bodies[1])
    assert replay.status_code == 409, replay.text
    counters = harness.gateway.counters()
    assert counters["gateway_refused"]["late"] >= 1
    assert counters["gateway_refused"]["replayed"] >= 1
    assert counters["gateway_duplicates"] == 1


def test_credentials_are_needed_and_bound_to_their_device(harness: GatewayHarness) -> None:
    owner, other = harness.phone(), harness.phone()
    http = httpx.Client(base_url=harness.url)
    body = {"platform": "android", "charging": True, "unmetered": True, "idle": True}
    before = _refused(harness, "unauthorized")
    assert http.post("/v1/checkin", json=body).status_code == 401
    wrong = f"{owner.device_id}.{'x' * 43}"
    answer = http.post("/v1/checkin", json=body, headers={"authorization": f"Bearer {wrong}"})
    assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
    assert http.post("/v1/checkin", json=body, headers={
        "authorization": "Bearer 99999.abc"}).status_code == 401
    assert http.post("/v1/enroll", json={"enrollment_token": "guess",
                                         "platform": "android"}).status_code == 403
    assert _refused(harness, "unauthorized") == before + 4
    # The credential is stored hashed: the secret is nowhere on the server's disk.
    stored = (harness.gateway.out_dir / DEVICES_FILE).read_text()
    assert owner.credential.split(".")[1] not in stored
    # Another device's credential cannot fetch or report this device's task.
    owner.check_in()
    harness.open_round(2, [owner.device_id])
    task = owner.check_in()["task"]
    assert other.http.get(task["weights_url"], headers=other.auth).status_code == 403
    foreign = other.report(task, owner.train(task))
    assert foreign.status_code == 403, foreign.text
    unknown = owner.report({**task, "task_id": "A" * 22}, owner.train(task))
    assert unknown.status_code == 404 and "check in again" in unknown.text
    assert owner.report(task, owner.train(task)).status_code == 200
    harness.close()
    assert _refused(harness, "foreign") >= 2


@pytest.mark.parametrize("fault, status", [
    ("shape", 422), ("nan", 422), ("norm", 422), ("names", 422), ("not-safetensors", 400),
    ("no-examples", 400)])
def test_malformed_reports_are_refused_with_the_reason(
        harness: GatewayHarness, fault: str, status: int) -> None:
    phone = harness.phone()
    phone.check_in()
    harness.open_round(10 + len(fault), [phone.device_id])
    task = phone.check_in()["task"]
    weights = {k: v.copy() for k, v in harness.start.items()}
    name = harness.names[0]
    body = None
    if fault == "shape":
        weights[name] = np.zeros((*weights[name].shape, 2), np.float32)
    elif fault == "nan":
        weights[name][0] = np.nan
    elif fault == "norm":  # the bound is 5
        weights[name] = weights[name] + np.float32(10.0)
    elif fault == "names":
        weights["extra"] = np.zeros(3, np.float32)
    elif fault == "not-safetensors":
        body = b"\x00" * 64
    elif fault == "no-examples":
        body = save(weights, metadata={"train_loss": "0.1"})
    before = _refused(harness, "malformed")
    answer = phone.report(task, body if body is not None else _report(weights))
    assert answer.status_code == status, answer.text
    assert _refused(harness, "malformed") == before + 1
    reason = {"shape": "shape", "nan": "NaN", "norm": "exceeds the bound",
              "names": "names", "not-safetensors": "safetensors",
              "no-examples": "num_examples"}[fault]
    assert reason in answer.json()["detail"]
    # The task stays open: the phone may still send a good report.
    assert phone.report(task, phone.train(task)).status_code == 200
    harness.close()


def test_a_body_over_the_limit_is_refused_before_it_is_read(
        harness: GatewayHarness) -> None:
    phone = harness.phone()
    before = _refused(harness, "too_large")
    big = phone.report({"task_id": "A" * 22}, b"\x00" * (MAX_REPORT_BYTES + 1))
    assert big.status_code == 413
    # A Content-Length of 1 GB and no body: answered at once, nothing read (a server
    # that read the body first would wait here for a gigabyte that never comes).
    host, port = harness.server.host, harness.server.port
    with socket.create_connection((host, port), timeout=30) as raw:
        raw.sendall(f"POST /v1/tasks/{'A' * 22}/report HTTP/1.1\r\nHost: {host}\r\n"
                    f"Authorization: Bearer {phone.credential}\r\n"
                    "Content-Type: application/octet-stream\r\n"
                    f"Content-Length: {1 << 30}\r\n\r\n".encode())
        assert raw.recv(4096).startswith(b"HTTP/1.1 413")
    no_length = httpx.post(f"{harness.url}/v1/tasks/{'A' * 22}/report",
                           content=iter([b"x"]), headers=phone.auth)
    assert no_length.status_code == 411
    assert _refused(harness, "too_large") == before + 2


def test_pace_steering_and_eligibility(harness: GatewayHarness) -> None:
    """An ineligible phone (not charging) is not in the pool and waits ten times
    longer; an eligible one comes back after about the check-in interval."""
    interval = CHECKIN_INTERVAL_S
    busy = harness.phone(charging=False)
    answer = busy.check_in()
    assert answer["task"] is None and answer["retry_after_s"] >= interval * 10 * 0.8
    assert busy.device_id not in harness.gateway.waiting()
    ready = harness.phone()
    assert interval * 0.8 <= ready.check_in()["retry_after_s"] <= interval * 1.2 * 10
    assert ready.device_id in harness.gateway.waiting()


def test_enrolled_devices_survive_a_restart(harness: GatewayHarness, tmp_path: Path
                                            ) -> None:
    """A restarted gateway (same run folder) knows every credential it handed out."""
    phone = harness.phone()
    again = Gateway(harness.gateway.out_dir, TOKEN, harness.names, 5.0, 1.0, 4)
    assert again.authenticate(f"Bearer {phone.credential}") == phone.device_id


@pytest.mark.parametrize("change, message", [
    ({"token": ""}, "holds no token"),
    ({"token": "short"}, "under 16 characters"),
    ({"token": None}, "no such file"),
    ({"privacy": {"mode": "fixed"}}, "not supported yet"),
    ({"server": {"secagg": True, "devices_per_round": 3}}, "SecAgg+"),
])
def test_a_gateway_config_it_cannot_honour_is_refused_in_one_line(
        tmp_path: Path, change: dict, message: str) -> None:
    from devicetune.errors import ConfigError
    from devicetune.server.federation import check_serve_config
    from tests.conftest import small_config

    token = tmp_path / "token"
    if change.get("token", TOKEN) is not None:
        token.write_text(change.get("token", TOKEN))
    server = {"gateway": {"enabled": True, "enrollment_token_file": str(token)},
              **change.get("server", {})}
    sections = {"server": server, **({"privacy": change["privacy"]}
                                     if "privacy" in change else {})}
    with pytest.raises(ConfigError, match=message) as refused:
        check_serve_config(small_config(**sections))
    assert "\n" not in str(refused.value)
    token.write_text(TOKEN)
    check_serve_config(small_config(server={"gateway": {
        "enabled": True, "enrollment_token_file": str(token)}}))  # the fixed config runs
