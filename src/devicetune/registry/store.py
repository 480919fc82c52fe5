"""The versioned model store: content-addressed files, atomic publish, never overwritten.

Layout under the registry root::

    blobs/sha256/ab/ab12...        every file once, named by its sha256, read-only
    models/NAME/versions/7.json    the version record: file name -> sha256 and size
    models/NAME/rollout.json       the rollout policy (absent: newest for everyone)
    tmp/                           staging of publishes in progress

A publish stages the folder under ``tmp/``, checks it (manifest hashes; the signature
when the registry has a public key, and then only is the record ``signed``), moves its
files into ``blobs/`` and writes the version record last, with a hard link that fails
if the record exists. A reader lists records only, and a record names blobs that are
already complete, so it sees a version whole or not at all; a crash mid-publish leaves
orphan blobs and no version.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from devicetune.artifacts.manifest import MANIFEST_FILE, Manifest, sha256_file
from devicetune.artifacts.signing import SIGNATURE_FILE, check_folder, verify_folder
from devicetune.atomic import atomic_write_bytes, fsync_dir
from devicetune.errors import ArtifactError, NotInRegistry, RegistryError, VersionExists
from devicetune.registry.names import check_name
from devicetune.registry.rollout import MAX_VERSION, Assignment, RolloutPolicy, assign
from devicetune.registry.transfer import unpack

PLATFORMS = ("android", "ios")


class FileRecord(BaseModel):
    """One file of a version, as stored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: str
    size: int


class VersionRecord(BaseModel):
    """A published version: what the registry lists and serves."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: int
    parent_version: int | None
    published_at: str
    signed: bool = Field(description="the signature was verified against the registry's "
                         "public key at publish (false: the registry has no key)")
    encrypted: bool
    files: dict[str, FileRecord] = Field(description="every file, manifest.json included")


class Registry:
    """A model registry rooted at a folder.

    Args:
        root: the registry folder (created if missing).
        public_key: when given, only versions signed by this key's pair are accepted.
    """

    def __init__(self, root: Path, *, public_key: Path | None = None) -> None:
        self.root = Path(root)
        self.public_key = public_key
        for folder in ("blobs/sha256", "models", "tmp"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)

    def models(self) -> list[str]:
        """Names of the models that have at least one version."""
        return sorted(p.name for p in (self.root / "models").iterdir()
                      if any(self._records(p.name)))

    def versions(self, name: str) -> list[VersionRecord]:
        """Every published version of ``name``, oldest first.

        Raises:
            NotInRegistry: the model has no version.
        """
        records = [self._read_record(path) for path in self._records(name)]
        if not records:
            raise NotInRegistry(f"no model named {name!r} in this registry")
        return sorted(records, key=lambda r: r.version)

    def record(self, name: str, version: int) -> VersionRecord:
        """The record of one version.

        Raises:
            NotInRegistry: no such version.
        """
        path = self._record_path(name, version)
        if not path.is_file():
            raise NotInRegistry(f"model {name!r} has no version {version}")
        return self._read_record(path)

    def file(self, name: str, version: int, file: str) -> tuple[Path, FileRecord]:
        """Where one file of a version is stored, and its record.

        Raises:
            NotInRegistry: no such version or file.
        """
        check_name(file, "file name")
        entry = self.record(name, version).files.get(file)
        if entry is None:
            raise NotInRegistry(f"model {name!r} version {version} has no file {file!r}")
        return self._blob_path(entry.sha256), entry

    def manifest(self, name: str, version: int) -> Manifest:
        """The parsed manifest of a version."""
        return _parse_manifest(self.file(name, version, MANIFEST_FILE)[0])

    def publish(self, folder: Path, *, name: str | None = None) -> VersionRecord:
        """Publish a model folder as the version its manifest names.

        Args:
            folder: a model folder (manifest.json, payload files, model.sig if signed).
            name: when given, the manifest's name must be this.

        Raises:
            VersionExists: the version is already published.
            ArtifactError: the folder fails its manifest or signature check.
            RegistryError: a name the registry does not accept.
        """
        with self._staging() as staging:
            for path in Path(folder).iterdir():
                if path.is_dir() or path.is_symlink():
                    raise RegistryError(f"{path}: the registry takes a flat folder of "
                                        "files; move it out of the model folder")
                shutil.copyfile(path, staging / check_name(path.name, "file name"))
            return self._publish_staged(staging, name)

    def publish_archive(self, archive: Path, *, name: str) -> VersionRecord:
        """Publish an uploaded tar (see `registry.transfer`) as a version of ``name``."""
        check_name(name, "model name")
        with self._staging() as staging:
            unpack(archive, staging)
            return self._publish_staged(staging, name)

    def rollout(self, name: str) -> RolloutPolicy:
        """The rollout policy of ``name`` (newest version for everyone when unset)."""
        path = self._model_dir(name) / "rollout.json"
        if not path.is_file():
            return RolloutPolicy()
        return RolloutPolicy.model_validate_json(path.read_bytes())

    def set_rollout(self, name: str, policy: RolloutPolicy) -> RolloutPolicy:
        """Replace the rollout policy of ``name``; every version it names must exist.

        Raises:
            NotInRegistry: the policy names a version that is not published.
        """
        published = {r.version for r in self.versions(name)}
        missing = sorted(policy.versions() - published)
        if missing:
            raise NotInRegistry(f"model {name!r} has no version {missing[0]}; publish it "
                                "before rolling it out")
        atomic_write_bytes(self._model_dir(name) / "rollout.json",
                           policy.model_dump_json(indent=2).encode())
        return policy

    def assign(self, name: str, device_ids: Sequence[str]) -> list[Assignment]:
        """The versions ``device_ids`` get now (see `registry.rollout`)."""
        for device_id in device_ids:
            if not device_id or len(device_id) > 256:
                raise RegistryError("a device_id must be 1 to 256 characters")
        published = [r.version for r in self.versions(name)]
        policy = self.rollout(name)
        return [assign(policy, name, device_id, published) for device_id in device_ids]

    def platform_file(self, name: str, version: int, platform: str) -> str:
        """The file a device on ``platform`` downloads (the encrypted one if encrypted).

        Raises:
            RegistryError: unknown platform.
            NotInRegistry: the version has no model for that platform.
        """
        if platform not in PLATFORMS:
            raise RegistryError(f"unknown platform {platform!r}; use one of {PLATFORMS}")
        manifest = self.manifest(name, version)
        entry = manifest.tflite if platform == "android" else manifest.coreml
        if entry is None:
            raise NotInRegistry(f"model {name!r} version {version} has no {platform} model")
        if manifest.encryption is not None:
            return manifest.encryption.files[entry.file].file
        return entry.file

    def _publish_staged(self, staging: Path, name: str | None) -> VersionRecord:
        try:
            return self._publish_checked(staging, name)
        except (ArtifactError, RegistryError) as exc:
            if isinstance(exc, VersionExists | NotInRegistry):
                raise
            # The staging folder is the server's business, not the publisher's.
            message = str(exc).replace(f"{staging}/", "").replace(str(staging), "upload")
            raise type(exc)(message) from None

    def _publish_checked(self, staging: Path, name: str | None) -> VersionRecord:
        manifest = check_folder(staging)
        if name is not None and manifest.name != name:
            raise RegistryError(f"manifest.json names model {manifest.name!r}, not {name!r};"
                                " publish it under its own name")
        check_name(manifest.name, "model name")
        if self._record_path(manifest.name, manifest.version).exists():
            raise self._exists(manifest)
        if self.public_key is not None:
            verify_folder(staging, self.public_key)
        # "signed" is a claim to readers: make it only for a signature verified here.
        signed = self.public_key is not None and (staging / SIGNATURE_FILE).is_file()
        files = {}
        for path in sorted(staging.iterdir()):
            sha256 = sha256_file(path)
            files[path.name] = FileRecord(sha256=sha256, size=path.stat().st_size)
            self._store_blob(path, sha256)
        record = VersionRecord(
            name=manifest.name, version=manifest.version,
            parent_version=manifest.parent_version,
            published_at=datetime.now(UTC).isoformat(timespec="seconds"),
            signed=signed,
            encrypted=manifest.encryption is not None, files=files)
        self._create_record(record, manifest)
        return record

    def _store_blob(self, path: Path, sha256: str) -> None:
        blob = self._blob_path(sha256)
        if blob.exists():
            return  # content-addressed: the same bytes are already there
        blob.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
        path.chmod(0o444)
        os.replace(path, blob)  # same file system as tmp/, so atomic
        fsync_dir(blob.parent)

    def _create_record(self, record: VersionRecord, manifest: Manifest) -> None:
        path = self._record_path(record.name, record.version)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(record.model_dump_json(indent=2).encode())
                handle.flush()
                os.fsync(handle.fileno())
            # link(2) refuses an existing target, unlike rename: two concurrent
            # publishes of one version cannot both win, and none overwrites.
            os.link(tmp, path)
        except FileExistsError:
            raise self._exists(manifest) from None
        finally:
            Path(tmp).unlink(missing_ok=True)
        fsync_dir(path.parent)

    @contextlib.contextmanager
    def _staging(self) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix="publish-", dir=self.root / "tmp") as path:
            yield Path(path)

    def _records(self, name: str) -> list[Path]:
        folder = self._model_dir(name) / "versions"
        if not folder.is_dir():
            return []
        # Dot files are records still being written (see _create_record).
        return [p for p in folder.iterdir() if p.suffix == ".json"
                and not p.name.startswith(".")]

    def _model_dir(self, name: str) -> Path:
        return self.root / "models" / check_name(name, "model name")

    def _record_path(self, name: str, version: int) -> Path:
        if not 1 <= version <= MAX_VERSION:
            raise NotInRegistry(f"model {name!r} has no version {version}")
        return self._model_dir(name) / "versions" / f"{int(version)}.json"

    def _blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / "sha256" / sha256[:2] / sha256

    @staticmethod
    def _read_record(path: Path) -> VersionRecord:
        return VersionRecord.model_validate_json(path.read_bytes())

    def _exists(self, manifest: Manifest) -> VersionExists:
        newest = max(r.version for r in self.versions(manifest.name))
        return VersionExists(f"model {manifest.name!r} version {manifest.version} is already"
                             " published and is never overwritten; publish it as version "
                             f"{newest + 1}")


@functools.lru_cache(maxsize=256)
def _parse_manifest(blob: Path) -> Manifest:
    # Blobs are immutable and named by their hash, so a parse is valid forever.
    try:
        return Manifest.model_validate_json(blob.read_bytes())
    except ValueError:
        raise ArtifactError(f"stored manifest {blob.name[:12]} does not parse") from None
