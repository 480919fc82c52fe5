from __future__ import annotations

import threading
from pathlib import Path

import pytest

from devicetune.artifacts.keys import KeyPair, generate_key_pair
from devicetune.artifacts.signing import sign_folder
from devicetune.errors import ArtifactError, NotInRegistry, RegistryError, VersionExists
from devicetune.registry import Registry, RolloutArm, RolloutPolicy
from tests.artifacts.folders import write_model_folder


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[KeyPair, KeyPair]:
    base = tmp_path_factory.mktemp("keys")
    return generate_key_pair(base / "release"), generate_key_pair(base / "other")


def test_publish_lists_and_serves_every_file(tmp_path: Path) -> None:
    write_model_folder(tmp_path / "v1", version=1)
    registry = Registry(tmp_path / "root")
    record = registry.publish(tmp_path / "v1")
    assert set(record.files) == {"manifest.json", "model.tflite", "Model.mlmodel",
                                 "update.npz"}
    assert not record.signed and not record.encrypted
    assert [r.version for r in registry.versions("har")] == [1]
    path, entry = registry.file("har", 1, "model.tflite")
    assert path.read_bytes() == (tmp_path / "v1" / "model.tflite").read_bytes()
    assert entry.size == path.stat().st_size
    assert registry.models() == ["har"]


def test_a_version_is_never_overwritten(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "root")
    write_model_folder(tmp_path / "a", version=1, seed=1)
    write_model_folder(tmp_path / "b", version=1, seed=2)
    first = registry.publish(tmp_path / "a")
    with pytest.raises(VersionExists, match="publish it as version 2"):
        registry.publish(tmp_path / "b")
    assert registry.record("har", 1) == first


def test_concurrent_publishes_of_one_version_have_exactly_one_winner(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "root")
    for i in range(8):
        write_model_folder(tmp_path / f"f{i}", version=3, seed=i, size=200_000)
    outcomes: list[str] = []
    start = threading.Barrier(8)

    def publish(i: int) -> None:
        start.wait()
        try:
            registry.publish(tmp_path / f"f{i}")
            outcomes.append("won")
        except VersionExists:
            outcomes.append("refused")

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["refused"] * 7 + ["won"]
    registry.record("har", 3)


def test_identical_files_are_stored_once(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "root")
    write_model_folder(tmp_path / "v1", version=1)
    registry.publish(tmp_path / "v1")
    blobs = tmp_path / "root" / "blobs"
    before = {p for p in blobs.rglob("*") if p.is_file()}
    manifest = write_model_folder(tmp_path / "v2", version=2)
    (tmp_path / "v2" / "update.npz").write_bytes((tmp_path / "v1" / "update.npz").read_bytes())
    files = {**manifest.files, "update.npz": registry.versions("har")[0].files[
        "update.npz"].sha256}
    manifest.model_copy(update={"files": files}).write(tmp_path / "v2")
    registry.publish(tmp_path / "v2")
    added = {p for p in blobs.rglob("*") if p.is_file()} - before
    assert len(added) == 3  # manifest, tflite, mlmodel; update.npz is shared
    assert registry.file("har", 1, "update.npz")[0] == registry.file("har", 2, "update.npz")[0]


def test_leftovers_of_an_interrupted_publish_are_invisible(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "root")
    write_model_folder(tmp_path / "v1", version=1)
    registry.publish(tmp_path / "v1")
    versions = tmp_path / "root" / "models" / "har" / "versions"
    (versions / ".2.json.abc.tmp").write_text('{"half": ')  # a record being written
    (tmp_path / "root" / "blobs" / "sha256" / "ff").mkdir(exist_ok=True)
    (tmp_path / "root" / "blobs" / "sha256" / "ff" / ("f" * 64)).write_bytes(b"orphan")
    assert [r.version for r in Registry(tmp_path / "root").versions("har")] == [1]


def test_a_registry_with_a_key_takes_only_versions_signed_by_its_pair(
        tmp_path: Path, keys: tuple[KeyPair, KeyPair]) -> None:
    registry = Registry(tmp_path / "root", public_key=keys[0].public_key)
    write_model_folder(tmp_path / "v1", version=1)
    with pytest.raises(ArtifactError, match="unsigned"):
        registry.publish(tmp_path / "v1")
    sign_folder(tmp_path / "v1", keys[1].private_key)
    with pytest.raises(ArtifactError, match="signed by another key"):
        registry.publish(tmp_path / "v1")
    sign_folder(tmp_path / "v1", keys[0].private_key)
    assert registry.publish(tmp_path / "v1").signed


def test_a_folder_that_disagrees_with_its_manifest_is_refused(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "root")
    write_model_folder(tmp_path / "v1", version=1)
    (tmp_path / "v1" / "model.tflite").write_bytes(b"swapped")
    with pytest.raises(ArtifactError, match="model.tflite does not match"):
        registry.publish(tmp_path / "v1")
    with pytest.raises(NotInRegistry):
        registry.versions("har")


@pytest.mark.parametrize("name", ["..", "../etc", "a/b", ".hidden", "", "x" * 200, "a\0b"])
def test_names_that_could_be_paths_are_refused(tmp_path: Path, name: str) -> None:
    registry = Registry(tmp_path / "root")
    with pytest.raises(RegistryError, match="invalid"):
        registry.versions(name)
    write_model_folder(tmp_path / "v1", version=1)
    registry.publish(tmp_path / "v1")
    with pytest.raises(RegistryError, match="invalid"):
        registry.file("har", 1, name)


def test_a_manifest_name_that_is_a_path_is_refused(tmp_path: Path) -> None:
    write_model_folder(tmp_path / "v1", name="../../escape", version=1)
    with pytest.raises(RegistryError, match="invalid model name"):
        Registry(tmp_path / "root").publish(tmp_path / "v1")
    assert not (tmp_path / "escape").exists()


def test_rollout_must_name_published_versions(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "root")
    for v in (1, 2):
        write_model_folder(tmp_path / f"v{v}", version=v)
        registry.publish(tmp_path / f"v{v}")
    with pytest.raises(NotInRegistry, match="no version 5"):
        registry.set_rollout("har", RolloutPolicy(default_version=5))
    policy = RolloutPolicy(default_version=1, arms=[RolloutArm(version=2, percent=10)])
    registry.set_rollout("har", policy)
    assert Registry(tmp_path / "root").rollout("har") == policy
