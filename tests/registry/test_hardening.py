"""Attacks and careless requests on the registry, each reproduced and shown refused."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
from pathlib import Path

import httpx
import pytest

from devicetune.artifacts.keys import KeyPair
from devicetune.artifacts.signing import sign_folder
from devicetune.errors import ArtifactError
from devicetune.registry import Registry, RegistryClient, RegistryServer
from tests.artifacts.folders import write_model_folder
from tests.conftest import run_cli
from tests.registry.conftest import TOKEN, signed_folder

AUTH = {"authorization": f"Bearer {TOKEN}"}


def _staged_files(root: Path) -> list[Path]:
    return [p for p in (root / "tmp").rglob("*") if p.is_file()]


def test_a_sparse_tar_is_refused_before_it_expands(server: RegistryServer,
                                                   tmp_path: Path) -> None:
    folder = tmp_path / "sparse"
    folder.mkdir()
    with open(folder / "model.tflite", "wb") as handle:
        handle.truncate(256 << 20)  # 256 MiB of holes: a few KB as a GNU sparse tar
    archive = tmp_path / "sparse.tar"
    subprocess.run(["tar", "--sparse", "-C", str(folder), "-cf", str(archive), "."],
                   check=True)
    assert archive.stat().st_size < 64 << 10
    response = httpx.post(f"{server.url}/v1/models/har/versions",
                          content=archive.read_bytes(), headers=AUTH)
    assert response.status_code == 400, response.text
    assert "sparse" in response.json()["detail"]
    assert _staged_files(tmp_path / "root") == []
    assert httpx.get(f"{server.url}/v1/models").json() == {"models": []}


def test_refusals_do_not_show_server_paths(tmp_path: Path,
                                           keys: tuple[KeyPair, KeyPair]) -> None:
    root = tmp_path / "root"
    with RegistryServer(Registry(root, public_key=keys[0].public_key), token=TOKEN) as server:
        folder = signed_folder(tmp_path / "v1", keys[0])
        (folder / "update.npz").write_bytes(b"tampered")
        with RegistryClient(server.url, token=TOKEN) as client, \
                pytest.raises(ArtifactError) as refused:
            client.publish(folder)
        stranger = signed_folder(tmp_path / "v2", keys[1], version=2)
        with RegistryClient(server.url, token=TOKEN) as client, \
                pytest.raises(ArtifactError, match="another key") as other:
            client.publish(stranger)
    for message in (str(refused.value), str(other.value)):
        assert str(tmp_path) not in message and "publish-" not in message, message
    assert "update.npz" in str(refused.value)


def test_only_a_verified_signature_is_recorded_signed(tmp_path: Path,
                                                     keys: tuple[KeyPair, KeyPair]) -> None:
    stranger = signed_folder(tmp_path / "v1", keys[1])
    record = Registry(tmp_path / "open").publish(stranger)
    assert record.signed is False  # signed, but by whom was never checked
    with pytest.raises(ArtifactError, match="another key"):
        Registry(tmp_path / "keyed", public_key=keys[0].public_key).publish(stranger)
    sign_folder(stranger, keys[0].private_key)
    assert Registry(tmp_path / "keyed", public_key=keys[0].public_key
                    ).publish(stranger).signed is True


def test_registry_serve_needs_a_key_or_allow_unsigned(tmp_path: Path) -> None:
    result = run_cli("registry", "serve", "--root", str(tmp_path / "root"), "--port", "0")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "--public-key" in result.stderr and "--allow-unsigned" in result.stderr
    assert not (tmp_path / "root").exists()


def test_registry_serve_refuses_plain_http_beyond_loopback(tmp_path: Path) -> None:
    result = run_cli("registry", "serve", "--root", str(tmp_path / "root"), "--host",
                     "0.0.0.0", "--port", "0", "--allow-unsigned")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "--certificate" in result.stderr and "--insecure" in result.stderr
    half = run_cli("registry", "serve", "--root", str(tmp_path / "root"), "--port", "0",
                   "--allow-unsigned", "--certificate", str(tmp_path / "cert.pem"))
    assert half.returncode == 2 and "together" in half.stderr


def _self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "registry.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return folder / "cert.pem", folder / "key.pem"


def test_https_serves_and_a_client_verifies_the_certificate(
        tmp_path: Path, keys: tuple[KeyPair, KeyPair]) -> None:
    cert, key = _self_signed(tmp_path / "tls")
    registry = Registry(tmp_path / "root", public_key=keys[0].public_key)
    with RegistryServer(registry, token=TOKEN, certificate=cert, private_key=key) as server:
        assert server.url.startswith("https://127.0.0.1:")
        with RegistryClient(server.url, token=TOKEN, ca_certificate=cert) as client:
            client.publish(signed_folder(tmp_path / "v1", keys[0]))
            fetched = client.fetch("har", 1, tmp_path / "app", public_key=keys[0].public_key)
        assert fetched.version == 1
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{server.url}/v1/models")  # not trusted: nothing sent in clear
        plain = server.url.replace("https://", "http://")
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{plain}/v1/models", headers=AUTH)


def test_rollout_nan_infinite_or_too_fine_percent_is_422(
        server: RegistryServer, client: RegistryClient, tmp_path: Path) -> None:
    write_model_folder(tmp_path / "v1")
    client.publish(tmp_path / "v1")
    url = f"{server.url}/v1/models/har/rollout"
    headers = {**AUTH, "content-type": "application/json"}
    for percent in ("NaN", "Infinity", "1e-9", "0", "-5", "100.5"):
        body = '{"arms": [{"version": 1, "percent": ' + percent + "}]}"
        response = httpx.put(url, content=body, headers=headers)
        assert response.status_code == 422, (percent, response.status_code, response.text)
        assert "percent" in str(response.json()["detail"])
    assert client.rollout("har").arms == []


def test_assignments_are_capped_and_errors_do_not_echo_the_input(
        server: RegistryServer, client: RegistryClient, tmp_path: Path) -> None:
    write_model_folder(tmp_path / "v1")
    client.publish(tmp_path / "v1")
    url = f"{server.url}/v1/models/har/assignments"
    big = httpx.post(url, json={"device_ids": [f"phone-{i:06d}" for i in range(100_000)]})
    assert big.status_code == 422
    assert len(big.content) < 2000 and "phone-" not in big.text
    one_over = httpx.post(url, json={"device_ids": [f"d{i}" for i in range(1001)]})
    assert one_over.status_code == 422
    long_id = httpx.post(url, json={"device_ids": ["x" * 100_000]})
    assert long_id.status_code == 422 and len(long_id.content) < 2000
    at_cap = httpx.post(url, json={"device_ids": [f"d{i}" for i in range(1000)]})
    assert at_cap.status_code == 200 and len(at_cap.json()["assignments"]) == 1000
    assert len(client.assignments("har", [f"d{i}" for i in range(2500)])) == 2500


def test_range_requests_are_checked_capped_and_merged(
        server: RegistryServer, client: RegistryClient, tmp_path: Path) -> None:
    write_model_folder(tmp_path / "v1", size=158_000)
    client.publish(tmp_path / "v1")
    data = (tmp_path / "v1" / "model.tflite").read_bytes()
    url = f"{server.url}/v1/models/har/versions/1/files/model.tflite"
    with httpx.Client() as http:
        for bad in ("bytes=1-0,2-1", "bytes=5-4", "bytes=-0", "bytes=abc",
                    "bytes=" + ",".join(f"{i}-{i}" for i in range(0, 4000, 2)),
                    "items=0-1", f"bytes={len(data)}-"):
            response = http.get(url, headers={"range": bad})
            assert response.status_code == 416, (bad[:40], response.status_code)
            assert response.headers["content-range"] == f"bytes */{len(data)}"
            assert len(response.content) < 1000
        overlapping = http.get(url, headers={"range": "bytes=0-99,50-149,150-199,10-20"})
        assert overlapping.status_code == 206 and overlapping.content == data[:200]
        assert overlapping.headers["content-range"] == f"bytes 0-199/{len(data)}"
        two = http.get(url, headers={"range": "bytes=0-9,100-109"})
        assert two.status_code == 206
        assert two.headers["content-type"].startswith("multipart/byteranges")
        assert data[:10] in two.content and data[100:110] in two.content
        assert len(two.content) < 1000


def test_every_get_answers_head_and_405_lists_the_paths_methods(
        server: RegistryServer, client: RegistryClient, tmp_path: Path) -> None:
    write_model_folder(tmp_path / "v1")
    client.publish(tmp_path / "v1")
    with httpx.Client(base_url=server.url) as http:
        for path in ("/v1/models", "/v1/models/har/versions", "/v1/models/har/versions/1",
                     "/v1/models/har/versions/1/manifest", "/v1/models/har/rollout",
                     "/v1/models/har/latest?device_id=d1",
                     "/v1/models/har/versions/1/files/update.npz"):
            get, head = http.get(path), http.head(path)
            assert head.status_code == get.status_code == 200, (path, head.status_code)
            assert head.content == b""
            assert head.headers["content-type"] == get.headers["content-type"]
        assert http.head("/v1/models/kws/versions").status_code == 404
        for method, path, allowed in (
                ("DELETE", "/v1/models/har/versions", "GET, HEAD, POST"),
                ("PATCH", "/v1/models/har/rollout", "GET, HEAD, PUT"),
                ("GET", "/v1/models/har/assignments", "POST"),
                ("PUT", "/v1/models/har/versions/1/files/update.npz", "GET, HEAD")):
            response = http.request(method, path)
            assert response.status_code == 405, (method, path)
            assert response.headers["allow"] == allowed, (method, path)


def test_the_openapi_document_carries_the_real_constraints(server: RegistryServer) -> None:
    spec = httpx.get(f"{server.url}/openapi.json").json()
    download = spec["paths"]["/v1/models/{name}/versions/{version}/files/{file}"]
    params = {p["name"]: p["schema"] for p in download["get"]["parameters"]}
    assert params["name"]["pattern"] == params["file"]["pattern"]
    assert params["version"]["minimum"] == 1 and "maximum" in params["version"]
    assert {"200", "206", "304", "404", "416", "422"} <= set(download["get"]["responses"])
    assert "head" in download
    publish = spec["paths"]["/v1/models/{name}/versions"]["post"]["responses"]
    assert {"201", "400", "401", "403", "409", "413", "422"} <= set(publish)
