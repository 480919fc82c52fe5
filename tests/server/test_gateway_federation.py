"""One federation of both kinds of device: a real `devicetune serve` over TLS, one
SuperNode (`devicetune device`) and 20 reference phones speaking protocol v1 over HTTPS
from threads of this process. The server is SIGKILLed mid-round (phones holding tasks,
some with reports in flight) and resumed; its rounds complete, a signed version is
emitted, and a phone fetches the version from the registry and verifies it."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from pathlib import Path

import httpx
import pytest

from devicetune.fleet.population import Population
from tests.conftest import small_config
from tests.server.conftest import (
    WAIT_S,
    Federation,
    free_port,
    kill_tree,
    metrics_rows,
    serve_config,
    tls_files,
    wait_for,
)
from tests.server.gateway_harness import TOKEN, ReferencePhone, fetch_version

PHONES = 20


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
        return True
    return False


class _Phone(ReferencePhone):
    """A reference phone that, given a task of round 2 before the kill, is still training
    when the server dies: it says so, and reports only once the server was killed, so
    its report meets the resumed server (which lost that round) whatever the timing."""

    round_two = threading.Event()
    killed = threading.Event()

    def train(self, task: dict) -> bytes:
        body = super().train(task)
        if task["round"] == 2 and not self.killed.is_set():
            self.round_two.set()
            self.killed.wait(WAIT_S)
        return body


def _run(phone: ReferencePhone, stop: threading.Event) -> None:
    with contextlib.suppress(httpx.TransportError):  # the server is gone: the test ends
        phone.run(stop, max_wait_s=0.5)  # retries through the restart itself


def test_http_phones_and_a_supernode_federate_survive_a_kill_and_get_a_signed_version(
        tmp_path: Path, federation: Federation, small_artifacts: Path,
        data_dir: Path) -> None:
    from devicetune.artifacts.keys import generate_key_pair
    from devicetune.registry import Registry, RegistryServer
    from devicetune.server.state import load_state

    keys = generate_key_pair(tmp_path / "keys")
    (tmp_path / "token").write_text(TOKEN)
    tls = tls_files(tmp_path / "tls")
    gateway_port = free_port()
    config_path, config = serve_config(
        tmp_path, devices=1, rounds=3, devices_per_round=PHONES + 1, min_devices=PHONES,
        insecure=False, **tls,
        gateway={"enabled": True, "port": gateway_port, "over_selection": 1.0,
                 "enrollment_token_file": str(tmp_path / "token"),
                 "checkin_interval_s": 0.5},
        emit={"enabled": True, "registry": str(tmp_path / "registry"),
              "private_key": str(keys.private_key), "every_rounds": 3,
              "max_regression": 1.0})
    out = tmp_path / "run"
    server = federation.serve(config_path, out, "--artifacts", str(small_artifacts))
    federation.device(config_path, config.server.port, 0)
    # Each phone trains on its own data (devices 1..20 of a larger population).
    population = Population.from_config(small_config(fleet={"devices": PHONES + 1}).fleet,
                                        config.seed, data_dir)
    wait_for(lambda: _listening(gateway_port) or server.poll() is not None, "the gateway")
    url = f"https://127.0.0.1:{gateway_port}"
    phones = []
    for k in range(1, PHONES + 1):
        data = population.local_data(k).train
        phone = _Phone(url, data.x, data.y, verify=tls["root_certificate"])
        phone.enroll(TOKEN)
        phones.append(phone)
    stop = threading.Event()
    threads = [threading.Thread(target=_run, args=(p, stop), daemon=True) for p in phones]
    for thread in threads:
        thread.start()
    try:
        # SIGKILL once round 1 is committed and phones hold tasks of round 2.
        assert _Phone.round_two.wait(WAIT_S), "no task of round 2"
        kill_tree(server)
        _Phone.killed.set()
        assert [r["round"] for r in metrics_rows(out)] == [1]
        resumed = federation.serve(config_path, out, "--artifacts", str(small_artifacts),
                                   "--resume", log_name="resumed")
        code = federation.wait(resumed)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    stdout, stderr = federation.output(resumed)
    assert code == 0, (stdout[-3000:], stderr[-3000:])
    assert f"apps join over HTTP: {url}/v1/enroll" in stdout

    rows = metrics_rows(out)
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert load_state(out).round == 3
    # Every device sampled and aggregated in every round: 20 phones and the SuperNode,
    # none counted twice (a report counts once per task, and tasks are per round).
    assert all((r["sampled"], r["completed"], r["rejected"]) == (PHONES + 1, PHONES + 1, 0)
               for r in rows), rows
    # Phones whose task died with the killed server were told to check in again.
    lost = [r for p in phones for r in p.reports if r["status"] in (404, 410)]
    assert lost and all("check in again" in r["detail"] for r in lost), lost
    assert sum(rows[1]["gateway_refused"].get(k, 0) for k in ("unknown_task", "late")) \
        == len(lost), rows[1]
    assert rows[0]["gateway_refused"] == {} and rows[2]["gateway_refused"] == {}, rows

    versions = [json.loads(line) for line in (out / "versions.jsonl").read_text()
                .splitlines()]
    assert [(v["version"], v["emitted"]) for v in versions] == [(1, True), (2, True)]
    with RegistryServer(Registry(tmp_path / "registry"), token=None) as registry:
        record = fetch_version(registry.url, "small", "phone-1", tmp_path / "app",
                               keys.public_key)
    assert record["version"] == 2 and record["parent_version"] == 1
    # A tampered download does not verify.
    (tmp_path / "app" / "model.tflite").write_bytes(b"tampered")
    from model_signing import hashing, verifying

    verifier = verifying.Config().use_elliptic_key_verifier(public_key=keys.public_key)
    verifier.set_hashing_config(hashing.Config().set_ignored_paths(paths=["model.sig"]))
    with pytest.raises(Exception):  # noqa: B017 - model-signing raises several kinds
        verifier.verify(tmp_path / "app", tmp_path / "app" / "model.sig")
