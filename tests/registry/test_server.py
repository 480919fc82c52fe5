from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from devicetune.errors import RegistryError
from devicetune.registry import RegistryClient
from tests.artifacts.folders import write_model_folder
from tests.conftest import PROJECT_ROOT, run_cli


def test_cli_serves_a_registry_that_takes_the_token_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("file-token\n")
    write_model_folder(tmp_path / "v1")
    (tmp_path / "root").mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "devicetune", "registry", "serve", "--root",
         str(tmp_path / "root"), "--port", "0", "--token-file", str(tmp_path / "token"),
         "--allow-unsigned"],
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "DEVICETUNE_REGISTRY_TOKEN": "env-token-is-not-used"})
    try:
        assert process.stderr is not None
        url = None
        for line in process.stderr:  # uvicorn names the port it bound
            found = re.search(r"Uvicorn running on (http://\S+)", line)
            if found:
                url = found.group(1)
                break
        assert url is not None, "the server never said where it listens"
        with RegistryClient(url, token="file-token") as client:
            assert client.publish(tmp_path / "v1").version == 1
            assert client.latest("har", "phone-1").version == 1
        with RegistryClient(url, token="env-token-is-not-used") as wrong, \
                pytest.raises(RegistryError, match="HTTP 403"):
            wrong.publish(tmp_path / "v1")
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C
        _, rest = process.communicate(timeout=60)
    assert "Application shutdown complete" in rest  # requests in flight were finished
    assert process.returncode == 130  # the shell convention for Ctrl-C


def test_cli_refuses_a_root_that_does_not_exist(tmp_path: Path) -> None:
    result = run_cli("registry", "serve", "--root", str(tmp_path / "typo"),
                     "--allow-unsigned")
    assert result.returncode == 2
    assert result.stderr == (f"error: --root {tmp_path / 'typo'}: no such folder (a server "
                             "with [emit] fills one; to serve an empty registry, create the "
                             "folder first)\n")
    assert not (tmp_path / "typo").exists()


def test_cli_refuses_an_empty_token_file(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("\n")
    result = run_cli("registry", "serve", "--root", str(tmp_path / "root"),
                     "--token-file", str(tmp_path / "token"), "--allow-unsigned")
    assert result.returncode == 2 and "is empty" in result.stderr
