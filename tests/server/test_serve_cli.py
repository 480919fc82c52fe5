"""Every way a user can misuse `devicetune serve` / `devicetune device` ends in one line
on stderr and exit code 2, before any Flower process starts."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

from devicetune.server.state import STATE_FILE, ServerState, commit_state
from tests.conftest import run_cli
from tests.server.conftest import serve_config


def _one_line_error(result, *fragments: str) -> None:  # noqa: ANN001
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _serve(config: Path, out: Path, *args: str):  # noqa: ANN202
    return run_cli("serve", str(config), "--out", str(out), *args, timeout=120)


def _committed(out: Path, strategy: str = "fedavg", artifact: str = "0" * 64) -> None:
    commit_state(out, ServerState(2, strategy, ["dense0_kernel", "dense0_bias"],
                                  [np.zeros((16, 6), np.float32), np.zeros(6, np.float32)],
                                  artifact))


def test_a_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nrounds = 0\n")
    _one_line_error(_serve(bad, tmp_path / "run"), "server.rounds")


def test_a_port_in_use(tmp_path: Path, small_artifacts: Path) -> None:
    config, settings = serve_config(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", settings.server.port))
        taken.listen()
        result = _serve(config, tmp_path / "run", "--artifacts", str(small_artifacts))
    _one_line_error(result, f"127.0.0.1:{settings.server.port}", "server.port")


def test_missing_artifacts(tmp_path: Path) -> None:
    config, _ = serve_config(tmp_path)
    result = _serve(config, tmp_path / "run", "--artifacts", str(tmp_path / "nowhere"))
    _one_line_error(result, "no manifest")


def test_resume_without_a_state(tmp_path: Path, small_artifacts: Path) -> None:
    config, _ = serve_config(tmp_path)
    result = _serve(config, tmp_path / "run", "--resume", "--artifacts",
                    str(small_artifacts))
    _one_line_error(result, "no server state to resume")


def test_resume_with_a_corrupt_state(tmp_path: Path, small_artifacts: Path) -> None:
    config, _ = serve_config(tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    (out / STATE_FILE).write_bytes(b"PK\x03\x04 not really a zip")
    result = _serve(config, out, "--resume", "--artifacts", str(small_artifacts))
    _one_line_error(result, STATE_FILE, "corrupt")


@pytest.mark.parametrize("mismatch", ["strategy", "artifacts"])
def test_resume_with_a_state_of_another_run(tmp_path: Path, small_artifacts: Path,
                                            mismatch: str) -> None:
    config, _ = serve_config(tmp_path, rounds=3)  # the state is at round 2
    out = tmp_path / "run"
    _committed(out, strategy="fedadam" if mismatch == "strategy" else "fedavg")
    result = _serve(config, out, "--resume", "--artifacts", str(small_artifacts))
    _one_line_error(result, "fedadam" if mismatch == "strategy" else "model.tflite")


def test_a_state_is_never_overwritten_without_resume(tmp_path: Path,
                                                     small_artifacts: Path) -> None:
    config, _ = serve_config(tmp_path)
    out = tmp_path / "run"
    _committed(out)
    result = _serve(config, out, "--artifacts", str(small_artifacts))
    _one_line_error(result, "round 2", "--resume")


def test_tls_without_its_files(tmp_path: Path, small_artifacts: Path) -> None:
    config, _ = serve_config(tmp_path, insecure=False)
    result = _serve(config, tmp_path / "run", "--artifacts", str(small_artifacts))
    _one_line_error(result, "server.server_certificate", "insecure = true")
    config, _ = serve_config(tmp_path, insecure=False, root_certificate="ca.pem",
                             server_certificate="cert.pem", server_private_key="key.pem")
    result = _serve(config, tmp_path / "run", "--artifacts", str(small_artifacts))
    _one_line_error(result, "no such file")


def test_secagg_with_a_robust_strategy(tmp_path: Path, small_artifacts: Path) -> None:
    config, _ = serve_config(tmp_path, secagg=True, strategy="fedmedian")
    result = _serve(config, tmp_path / "run", "--artifacts", str(small_artifacts))
    _one_line_error(result, "secagg", "fedavg")


def test_central_dp_with_secagg_is_refused(tmp_path: Path, small_artifacts: Path) -> None:
    config, settings = serve_config(tmp_path)
    raw = settings.model_copy(update={
        "privacy": settings.privacy.model_copy(update={"mode": "fixed"}),
        "server": settings.server.model_copy(update={"secagg": True})})
    from devicetune.config import to_toml

    config.write_text(to_toml(raw))
    result = _serve(config, tmp_path / "run", "--artifacts", str(small_artifacts))
    _one_line_error(result, "secagg")


@pytest.mark.parametrize(("args", "fragment"), [
    (["--superlink", "127.0.0.1:9092", "--device-id", "3"], "devices 0 to 2"),
    (["--superlink", "localhost", "--device-id", "0"], "HOST:PORT"),
    (["--superlink", "127.0.0.1:9092", "--device-id", "0", "--artifacts", "nowhere"],
     "no manifest"),
])
def test_device_misuse(tmp_path: Path, args: list[str], fragment: str) -> None:
    config, _ = serve_config(tmp_path)
    _one_line_error(run_cli("device", str(config), *args), fragment)


def test_resuming_a_finished_federation_does_nothing(tmp_path: Path,
                                                     small_artifacts: Path) -> None:
    config, _ = serve_config(tmp_path, rounds=2)
    out = tmp_path / "run"
    _committed(out)  # round 2 of 2
    result = _serve(config, out, "--resume", "--artifacts", str(small_artifacts))
    assert result.returncode == 0, result.stderr
    assert "nothing to do: all 2 rounds are committed" in result.stdout


def test_artifacts_that_do_not_match_their_manifest(tmp_path: Path) -> None:
    from tests.artifacts.folders import write_model_folder

    write_model_folder(tmp_path / "build")
    data = bytearray((tmp_path / "build" / "model.tflite").read_bytes())
    data[200] ^= 0x01
    (tmp_path / "build" / "model.tflite").write_bytes(bytes(data))
    config, _ = serve_config(tmp_path)
    result = _serve(config, tmp_path / "run", "--artifacts", str(tmp_path / "build"))
    _one_line_error(result, "model.tflite: sha256", "does not match")
    assert not (tmp_path / "run" / "flower").exists()
