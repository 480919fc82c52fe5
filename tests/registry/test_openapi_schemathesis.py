"""The OpenAPI document describes the API: schemathesis finds no request it gets wrong.

schemathesis generates requests from /openapi.json (valid and invalid ones) and checks
every answer against the document: status codes listed, content types, schemas, valid
data accepted, invalid data refused, ``Allow`` on 405. One pass fuzzes names freely;
one pins them to a published version (with the token) so the checks reach the files,
ranges and the rollout. POST is left out: a publish is a tar body, which the document
describes but schemathesis cannot make meaningful.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from devicetune.registry import Registry, RegistryClient, RegistryServer
from tests.artifacts.folders import write_model_folder
from tests.registry.conftest import TOKEN

PINNED = f"""
headers = {{ Authorization = "Bearer {TOKEN}" }}

[parameters]
name = "har"
version = 1
file = "model.tflite"

[checks]
enabled = true

# A policy whose arms add up to more than 100 % is refused (422), and JSON Schema cannot
# say "the sum of the items' percents": that one rule is outside the document.
[[operations]]
include-method = "PUT"
include-path = "/v1/models/{{name}}/rollout"
checks.positive_data_acceptance.enabled = false
"""
FREE = """
[checks]
enabled = true
"""


@pytest.mark.parametrize("config", [FREE, PINNED], ids=["free-names", "published-version"])
def test_schemathesis_finds_no_failure(tmp_path: Path, config: str) -> None:
    write_model_folder(tmp_path / "v1", platforms=True)
    (tmp_path / "schemathesis.toml").write_text(config)
    with RegistryServer(Registry(tmp_path / "root"), token=TOKEN) as server:
        with RegistryClient(server.url, token=TOKEN) as client:
            client.publish(tmp_path / "v1")
        result = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "--config-file",
             str(tmp_path / "schemathesis.toml"), "run", f"{server.url}/openapi.json",
             "--exclude-method", "POST", "--max-examples", "15", "--seed", "16",
             "--generation-database", "none", "--no-color"],
            cwd=tmp_path, capture_output=True, text=True)
    output = result.stdout + result.stderr
    generated = re.search(r"(\d+) generated", output)
    assert generated is not None and int(generated.group(1)) > 200, output[-3000:]
    assert result.returncode == 0, output[-6000:]
