from __future__ import annotations

import hashlib
import io
import tarfile
import threading
from pathlib import Path

import httpx
import pytest

from devicetune.artifacts.encryption import encrypt_folder
from devicetune.artifacts.keys import KeyPair, load_public_key
from devicetune.artifacts.manifest import read_manifest
from devicetune.errors import NotInRegistry, RegistryError, VersionExists
from devicetune.registry import (
    Registry,
    RegistryClient,
    RegistryServer,
    RolloutArm,
    RolloutPolicy,
)
from tests.artifacts.folders import write_model_folder
from tests.registry.conftest import TOKEN, signed_folder

AUTH = {"authorization": f"Bearer {TOKEN}"}


def tar_of(files: dict[str, bytes], symlink: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        if symlink:
            info = tarfile.TarInfo(symlink)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            archive.addfile(info)
    return buffer.getvalue()


def test_openapi_and_docs_are_served(server: RegistryServer) -> None:
    spec = httpx.get(f"{server.url}/openapi.json").json()
    assert {"/v1/models/{name}/versions", "/v1/models/{name}/versions/{version}/manifest",
            "/v1/models/{name}/versions/{version}/files/{file}", "/v1/models/{name}/latest",
            "/v1/models/{name}/rollout"} <= set(spec["paths"])
    assert "post" in spec["paths"]["/v1/models/{name}/versions"]
    assert httpx.get(f"{server.url}/docs").status_code == 200


@pytest.mark.parametrize("path", [
    "/v1/models/%2e%2e/versions",
    "/v1/models/..%2F..%2Fsecret.txt/versions",
    "/v1/models/%2e%2e%2f%2e%2e/versions/1/manifest",
    "/v1/models/har/versions/1/files/%2e%2e",
    "/v1/models/har/versions/1/files/..%2F..%2F..%2F..%2Fsecret.txt",
    "/v1/models/har/versions/1/files/%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fsecret.txt",
    "/v1/models/har/versions/..%2F..%2F/files/model.tflite",
    "/v1/models/har/versions/1/files/.%2Fmanifest.json",
    "/v1/models/.hidden/latest?device_id=x",
    "/v1/models/har/versions/1/files/%00",
])
def test_path_traversal_in_any_name_is_refused(server: RegistryServer, tmp_path: Path,
                                               client: RegistryClient, path: str) -> None:
    (tmp_path / "secret.txt").write_text("SECRET")
    (tmp_path / "root" / "secret.txt").write_text("SECRET")
    write_model_folder(tmp_path / "v1")
    client.publish(tmp_path / "v1")
    with httpx.Client(base_url=server.url) as http:
        response = http.get(path)
    assert response.status_code in (400, 404, 422), (path, response.status_code)
    assert "SECRET" not in response.text


@pytest.mark.parametrize("member", ["../escape.bin", "/tmp/abs.bin", "sub/dir.bin", ".hidden"])
def test_an_upload_cannot_write_outside_its_staging_folder(
        server: RegistryServer, tmp_path: Path, member: str) -> None:
    body = tar_of({"manifest.json": b"{}", member: b"evil"})
    response = httpx.post(f"{server.url}/v1/models/har/versions", content=body, headers=AUTH)
    assert response.status_code == 400 and "invalid file name" in response.json()["detail"]
    assert not (tmp_path / "escape.bin").exists() and not Path("/tmp/abs.bin").exists()
    links = tar_of({"manifest.json": b"{}"}, symlink="model.tflite")
    response = httpx.post(f"{server.url}/v1/models/har/versions", content=links, headers=AUTH)
    assert response.status_code == 400 and "not a regular file" in response.json()["detail"]


def test_publish_needs_the_token(server: RegistryServer, tmp_path: Path) -> None:
    write_model_folder(tmp_path / "v1")
    with RegistryClient(server.url) as anonymous, \
            pytest.raises(RegistryError, match="HTTP 401"):
        anonymous.publish(tmp_path / "v1")
    url = f"{server.url}/v1/models/har/versions"
    missing = httpx.post(url, content=b"")
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    basic = httpx.post(url, content=b"", headers={"authorization": "Basic dXNlcjpwYXNz"})
    assert basic.status_code == 401
    wrong = httpx.post(url, content=b"", headers={"authorization": "Bearer not-the-token"})
    assert wrong.status_code == 403
    policy = RolloutPolicy().model_dump_json()
    rollout = f"{server.url}/v1/models/har/rollout"
    assert httpx.put(rollout, content=policy).status_code == 401
    assert httpx.put(rollout, content=policy, headers={"authorization": "Bearer x"}
                     ).status_code == 403
    assert httpx.get(f"{server.url}/v1/models").json() == {"models": []}


def test_a_read_only_registry_refuses_every_publish(tmp_path: Path) -> None:
    write_model_folder(tmp_path / "v1")
    with RegistryServer(Registry(tmp_path / "root"), token=None) as server:
        response = httpx.post(f"{server.url}/v1/models/har/versions", content=b"",
                              headers=AUTH)
    assert response.status_code == 403 and "read-only" in response.json()["detail"]


def test_an_existing_version_is_409_and_unchanged(server: RegistryServer, tmp_path: Path,
                                                  client: RegistryClient) -> None:
    write_model_folder(tmp_path / "a", version=1, seed=1)
    write_model_folder(tmp_path / "b", version=1, seed=2)
    first = client.publish(tmp_path / "a")
    with pytest.raises(VersionExists, match="never overwritten"):
        client.publish(tmp_path / "b")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for path in (tmp_path / "b").iterdir():
            archive.add(path, arcname=path.name)
    raw = httpx.post(f"{server.url}/v1/models/har/versions", content=buffer.getvalue(),
                     headers=AUTH)
    assert raw.status_code == 409
    assert client.record("har", 1) == first


def test_a_tampered_upload_is_422_with_the_reason(tmp_path: Path,
                                                  keys: tuple[KeyPair, KeyPair]) -> None:
    registry = Registry(tmp_path / "root", public_key=keys[0].public_key)
    with RegistryServer(registry, token=TOKEN) as server, \
            RegistryClient(server.url, token=TOKEN) as client:
        folder = signed_folder(tmp_path / "v1", keys[0], version=1)
        data = bytearray((folder / "update.npz").read_bytes())
        data[3] ^= 1
        (folder / "update.npz").write_bytes(bytes(data))
        response = httpx.post(f"{server.url}/v1/models/har/versions",
                              content=_tar_folder(folder), headers=AUTH)
        assert response.status_code == 422
        assert "update.npz does not match manifest.json" in response.json()["detail"]
        stranger = signed_folder(tmp_path / "v2", keys[1], version=2)
        response = httpx.post(f"{server.url}/v1/models/har/versions",
                              content=_tar_folder(stranger), headers=AUTH)
        assert response.status_code == 422 and "another key" in response.json()["detail"]
        assert client.models() == []


def test_rollout_share_and_stable_answers_over_http(tmp_path: Path) -> None:
    root = tmp_path / "root"
    devices = [f"phone-{i:06d}" for i in range(20_000)]
    sample = devices[::50]
    with RegistryServer(Registry(root), token=TOKEN) as server, \
            RegistryClient(server.url, token=TOKEN) as client:
        for version in (1, 2):
            write_model_folder(tmp_path / f"v{version}", version=version)
            client.publish(tmp_path / f"v{version}")
        client.set_rollout("har", RolloutPolicy(default_version=1,
                                                arms=[RolloutArm(version=2, percent=10)]))
        first = client.assignments("har", devices)
        share = 100 * sum(a.version == 2 for a in first) / len(devices)
        assert abs(share - 10) < 1, share
        assert client.assignments("har", devices) == first
        one_by_one = [client.latest("har", d).version for d in sample]
        assert one_by_one == [a.version for a in first[::50]]
        assert [client.latest("har", d).version for d in sample] == one_by_one
    with RegistryServer(Registry(root), token=None) as restarted, \
            RegistryClient(restarted.url) as client:
        assert [client.latest("har", d).version for d in sample] == one_by_one


def test_ab_cohorts_over_http(client: RegistryClient, tmp_path: Path) -> None:
    for version in (1, 2, 3):
        write_model_folder(tmp_path / f"v{version}", version=version)
        client.publish(tmp_path / f"v{version}")
    client.set_rollout("har", RolloutPolicy(default_version=1, arms=[
        RolloutArm(version=2, percent=50, cohort="A"),
        RolloutArm(version=3, percent=50, cohort="B")]))
    got = client.assignments("har", [f"d{i}" for i in range(20_000)])
    a_share = 100 * sum(x.cohort == "A" for x in got) / len(got)
    assert abs(a_share - 50) < 1
    assert all({"A": 2, "B": 3}[x.cohort] == x.version for x in got if x.cohort)
    with pytest.raises(NotInRegistry, match="no version 9"):
        client.set_rollout("har", RolloutPolicy(default_version=9))


def test_latest_names_the_file_for_the_platform(
        client: RegistryClient, tmp_path: Path, keys: tuple[KeyPair, KeyPair]) -> None:
    write_model_folder(tmp_path / "v1", version=1, platforms=True)
    client.publish(tmp_path / "v1")
    android = client.latest("har", "d1", platform="android")
    ios = client.latest("har", "d1", platform="ios")
    assert (android.file, ios.file) == ("model.tflite", "Model.mlmodel")
    data = httpx.get(f"{client._http.base_url}{android.url}").content
    assert hashlib.sha256(data).hexdigest() == android.sha256 and len(data) == android.size
    write_model_folder(tmp_path / "plain2", version=2, platforms=True)
    encrypt_folder(tmp_path / "plain2", tmp_path / "v2", [load_public_key(keys[0].public_key)])
    client.publish(tmp_path / "v2")
    assert client.latest("har", "d1", platform="android").file == "model.tflite.enc"
    write_model_folder(tmp_path / "v3", version=3)
    client.publish(tmp_path / "v3")
    with pytest.raises(NotInRegistry, match="no android model"):
        client.latest("har", "d1", platform="android")
    bad = httpx.get(f"{client._http.base_url}/v1/models/har/latest",
                    params={"device_id": "d1", "platform": "symbian"})
    assert bad.status_code == 422


def test_etag_if_none_match_and_range(client: RegistryClient, server: RegistryServer,
                                      tmp_path: Path) -> None:
    write_model_folder(tmp_path / "v1", size=100_000)
    record = client.publish(tmp_path / "v1")
    data = (tmp_path / "v1" / "model.tflite").read_bytes()
    url = f"{server.url}/v1/models/har/versions/1/files/model.tflite"
    with httpx.Client() as http:
        full = http.get(url)
        etag = f'"{record.files["model.tflite"].sha256}"'
        assert full.status_code == 200 and full.content == data
        assert full.headers["etag"] == etag and "immutable" in full.headers["cache-control"]
        cached = http.get(url, headers={"if-none-match": etag})
        assert cached.status_code == 304 and cached.content == b""
        assert http.get(url, headers={"if-none-match": f'"x", W/{etag}'}).status_code == 304
        assert http.get(url, headers={"if-none-match": '"stale"'}).status_code == 200
        part = http.get(url, headers={"range": "bytes=1000-1999"})
        assert part.status_code == 206 and part.content == data[1000:2000]
        assert part.headers["content-range"] == f"bytes 1000-1999/{len(data)}"
        tail = http.get(url, headers={"range": "bytes=-100"})
        assert tail.status_code == 206 and tail.content == data[-100:]
        resumed = http.get(url, headers={"range": "bytes=5000-", "if-range": etag})
        assert resumed.status_code == 206 and resumed.content == data[5000:]
        changed = http.get(url, headers={"range": "bytes=5000-", "if-range": '"old"'})
        assert changed.status_code == 200 and changed.content == data
        beyond = http.get(url, headers={"range": f"bytes={len(data) + 10}-"})
        assert beyond.status_code == 416
        head = http.head(url)
        assert head.status_code == 200 and head.content == b""
        assert int(head.headers["content-length"]) == len(data)
        manifest = http.get(f"{server.url}/v1/models/har/versions/1/manifest")
        assert manifest.content == (tmp_path / "v1" / "manifest.json").read_bytes()
        assert http.get(f"{server.url}/v1/models/har/versions/1/manifest", headers={
            "if-none-match": manifest.headers["etag"]}).status_code == 304


def test_unknown_model_version_or_file_is_404(client: RegistryClient, server: RegistryServer,
                                              tmp_path: Path) -> None:
    write_model_folder(tmp_path / "v1")
    client.publish(tmp_path / "v1")
    for path in ("/v1/models/kws/versions", "/v1/models/har/versions/7/manifest",
                 "/v1/models/har/versions/1/files/nothing.bin",
                 "/v1/models/kws/latest?device_id=d"):
        assert httpx.get(server.url + path).status_code == 404, path
    assert httpx.get(server.url + "/v1/models/har/versions/0/manifest").status_code == 422


def test_downloads_during_publishes_never_see_a_half_written_version(
        tmp_path: Path) -> None:
    versions = 12
    for version in range(1, versions + 1):
        write_model_folder(tmp_path / f"v{version}", version=version, size=1_500_000,
                           seed=version)
    errors: list[str] = []
    seen_counts: set[int] = set()
    passes = [0]
    done = threading.Event()

    def read_until_done(url: str) -> None:
        with httpx.Client(base_url=url) as http:
            while not done.is_set():
                listed = http.get("/v1/models/har/versions")
                if listed.status_code == 404:
                    continue  # nothing published yet
                records = listed.json()["versions"]
                seen_counts.add(len(records))
                record = records[-1]
                base = f"/v1/models/har/versions/{record['version']}"
                manifest = http.get(f"{base}/manifest").json()
                expected = {**manifest["files"]}
                if set(record["files"]) != {*expected, "manifest.json"}:
                    errors.append(f"v{record['version']}: files {sorted(record['files'])}")
                for file, entry in record["files"].items():
                    body = http.get(f"{base}/files/{file}")
                    digest = hashlib.sha256(body.content).hexdigest()
                    if body.status_code != 200 or digest != entry["sha256"]:
                        errors.append(f"v{record['version']} {file}: {body.status_code}")
                    elif file in expected and digest != expected[file]:
                        errors.append(f"v{record['version']} {file}: manifest disagrees")
                passes[0] += 1

    with RegistryServer(Registry(tmp_path / "root"), token=TOKEN) as server:
        readers = [threading.Thread(target=read_until_done, args=(server.url,))
                   for _ in range(4)]
        for reader in readers:
            reader.start()
        try:
            with RegistryClient(server.url, token=TOKEN) as client:
                for version in range(1, versions + 1):
                    client.publish(tmp_path / f"v{version}")
        finally:
            done.set()
            for reader in readers:
                reader.join()
    assert errors == []
    assert passes[0] > 0
    assert len(seen_counts) >= 3, seen_counts  # the readers really ran between publishes


def _tar_folder(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for path in sorted(folder.iterdir()):
            archive.add(path, arcname=path.name)
    return buffer.getvalue()


def test_tar_made_by_the_tar_tool_layout_is_accepted(server: RegistryServer,
                                                     tmp_path: Path) -> None:
    """`tar -C DIR -cf - .` names members ./file and adds ./ itself."""
    folder = tmp_path / "v1"
    write_model_folder(folder)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        archive.add(folder, arcname=".", recursive=True)
    response = httpx.post(f"{server.url}/v1/models/har/versions", content=buffer.getvalue(),
                          headers={**AUTH, "content-type": "application/x-tar"})
    assert response.status_code == 201, response.text
    assert response.headers["location"] == "/v1/models/har/versions/1"
    assert read_manifest(folder).version == response.json()["version"]
