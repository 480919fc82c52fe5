"""The gateway clients (FederationClient.kt, compiled and run in test_kotlin_client.py;
FederationClient.swift, checked here only) against the OpenAPI document the running
gateway serves: routes, methods, fields, required fields, and the order of the protocol
steps; the recipe's defaults against the simulator's; the decryption code against a real
encrypted manifest. Mutated sources show that each kind of mismatch is reported."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.examples.app_sources import read_sources
from tests.examples.federation_contract import (
    check_decryption,
    check_gateway_protocol,
    check_protocol_order,
    check_recipe_defaults,
    protocol_steps,
)
from tests.server.gateway_harness import GatewayHarness


@pytest.fixture(scope="module")
def openapi(tmp_path_factory: pytest.TempPathFactory, small_artifacts: Path
            ) -> Iterator[dict[str, Any]]:
    served = GatewayHarness(tmp_path_factory.mktemp("contract-gateway"), small_artifacts)
    try:
        answer = httpx.get(f"{served.url}/openapi.json", timeout=30)
        assert answer.status_code == 200, answer.text
        yield answer.json()
    finally:
        served.stop()


@pytest.fixture(scope="module")
def sources() -> dict[str, str]:
    return read_sources()


@pytest.fixture(scope="module")
def encrypted_manifest(tmp_path_factory: pytest.TempPathFactory, small_artifacts: Path
                       ) -> dict[str, Any]:
    import json

    from cryptography.hazmat.primitives.asymmetric import ec

    from devicetune.artifacts.encryption import encrypt_folder

    folder = tmp_path_factory.mktemp("encrypted-contract") / "version"
    encrypt_folder(small_artifacts, folder, [ec.generate_private_key(ec.SECP256R1()).public_key()])
    return json.loads((folder / "manifest.json").read_text())


@pytest.fixture(scope="module")
def all_problems(openapi: dict[str, Any], encrypted_manifest: dict[str, Any]) -> Any:
    def problems(sources: dict[str, str]) -> list[str]:
        return (check_gateway_protocol(sources, openapi) + check_protocol_order(sources)
                + check_recipe_defaults(sources) + check_decryption(sources, encrypted_manifest))

    return problems


def test_the_clients_use_only_served_routes_and_fields(sources: dict[str, str],
                                                        all_problems: Any) -> None:
    assert all_problems(sources) == []


def test_both_clients_take_the_reference_phones_steps(sources: dict[str, str]) -> None:
    steps = ["enroll", "checkin", "model", "weights", "report"]
    assert protocol_steps(sources["FederationClient.kt"], "kotlin") == steps
    assert protocol_steps(sources["FederationClient.swift"], "swift") == steps


MUTATIONS = [
    ("FederationClient.kt", '"/v1/checkin"', '"/v1/check_in"', "not a route"),
    ("FederationClient.kt", 'request("POST", "/v1/enroll"', 'request("GET", "/v1/enroll"',
     "GET /v1/enroll is not a route"),
    ("FederationClient.kt", 'field("retry_after_s")', 'field("retry_after")',
     "'retry_after'"),
    ("FederationClient.kt", '"unmetered" to', '"unmetred" to', "'unmetred'"),
    ("FederationClient.kt", '"idle" to eligibility.idle', '"idle_" to eligibility.idle',
     "required field 'idle'"),
    ("FederationClient.kt", '        val start = downloadWeights(task)\n',
     '        val start = downloadWeights(task)\n        checkIn(eligibility)\n',
     "protocol steps"),
    ("FederationClient.swift", '"/v1/tasks/\\(task.taskID)/report"',
     '"/v1/tasks/\\(task.taskID)/reports"', "not a route"),
    ("FederationClient.swift", '"enrollment_token":', '"enrolment_token":',
     "required field 'enrollment_token'"),
    ("FederationClient.swift", 'field(task, "model_sha256")', 'field(task, "sha256")',
     "'sha256'"),
    ("FederationClient.swift",
     "        try adapter.load(model: try await downloadModel(task), sha256: task.modelSHA256)\n"
     "        let start = try await downloadWeights(task)\n",
     "        let start = try await downloadWeights(task)\n"
     "        try adapter.load(model: try await downloadModel(task), sha256: task.modelSHA256)\n",
     "protocol steps"),
    ("PersonalizationRecipe.kt", "const val EPOCHS = 20", "const val EPOCHS = 10",
     "EPOCHS = 10"),
    ("PersonalizationRecipe.kt", "const val GATE = true", "const val GATE = false",
     "GATE = false"),
    ("VersionDecryption.kt", 'entry["wrapped_key"]', 'entry["wrappedKey"]', "'wrappedKey'"),
    ("VersionDecryption.swift", 'entry["ephemeral_public_key"]', 'entry["ephemeral_key"]',
     "'ephemeral_key'"),
    ("VersionDecryption.swift", 'static let encryptedSuffix = ".enc"',
     'static let encryptedSuffix = ".encrypted"', "encrypted_suffix"),
]


@pytest.mark.parametrize(("file", "old", "new", "reported"), MUTATIONS,
                         ids=[f"{m[0]}:{m[3]}" for m in MUTATIONS])
def test_the_checker_reports_a_mutated_client(sources: dict[str, str], all_problems: Any,
                                              file: str, old: str, new: str,
                                              reported: str) -> None:
    assert sources[file].count(old) == 1, f"the mutation does not apply to {file}"
    found = all_problems({**sources, file: sources[file].replace(old, new)})
    assert any(reported in p for p in found), found
