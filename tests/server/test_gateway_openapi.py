"""Protocol v1's OpenAPI document: the checked-in copy is what a gateway serves, and
schemathesis (``--checks all``) finds no request the gateway answers against it.

schemathesis generates requests from /openapi.json (valid and invalid ones) and checks
every answer against the document: status codes listed, content types, schemas, valid
data accepted, invalid data refused, auth enforced. It runs as an enrolled device, with
one task of an open round pinned, so the checks reach the task endpoints too.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.server.gateway_harness import PROJECT_ROOT, GatewayHarness

CHECKED_IN = PROJECT_ROOT / "docs" / "gateway-openapi.json"


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory, small_artifacts: Path
            ) -> Iterator[GatewayHarness]:
    served = GatewayHarness(tmp_path_factory.mktemp("gateway-openapi"), small_artifacts,
                            timeout_s=600.0)
    try:
        yield served
    finally:
        served.stop()


def test_the_checked_in_document_is_what_is_served(harness: GatewayHarness) -> None:
    served = httpx.get(f"{harness.url}/openapi.json").json()
    assert served == json.loads(CHECKED_IN.read_text()), (
        "docs/gateway-openapi.json is stale: regenerate it with `python -m "
        "devicetune.server.gateway_api > docs/gateway-openapi.json`")
    assert served["info"]["version"] == "1"
    page = httpx.get(f"{harness.url}/docs")
    assert page.status_code == 200 and "swagger" in page.text.lower()


def test_schemathesis_finds_no_failure(harness: GatewayHarness, tmp_path: Path) -> None:
    phone = harness.phone()
    phone.check_in()
    harness.open_round(1, [phone.device_id])  # a task to pin, open for the whole run
    task = phone.check_in()["task"]
    (tmp_path / "schemathesis.toml").write_text(f"""
headers = {{ Authorization = "Bearer {phone.credential}" }}

[parameters]
task_id = "{task['task_id']}"
platform = "android"

# Every check (what `--checks all` selects; given here, as the CLI's choice would
# override the exceptions below).
[checks]
enabled = true

# A report's body is a safetensors file whose names, shapes and values must fit the
# round's model: JSON Schema can say "binary", not that; random bytes are refused
# (400) as they should be.
[[operations]]
include-method = "POST"
include-path = "/v1/tasks/{{task_id}}/report"
checks.positive_data_acceptance.enabled = false

# Enrollment needs the fleet's secret token, which a generated string never is (403).
[[operations]]
include-method = "POST"
include-path = "/v1/enroll"
checks.positive_data_acceptance.enabled = false
""")
    result = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "--config-file",
         str(tmp_path / "schemathesis.toml"), "run", f"{harness.url}/openapi.json",
         "--max-examples", "15", "--seed", "18",
         "--generation-database", "none", "--no-color"],
        cwd=tmp_path, capture_output=True, text=True)
    output = result.stdout + result.stderr
    generated = re.search(r"(\d+) generated", output)
    assert generated is not None and int(generated.group(1)) > 50, output[-3000:]
    assert result.returncode == 0, output[-6000:]
    harness.gateway.close_round()
    harness.close()
