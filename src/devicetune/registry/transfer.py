"""The upload format of a publish: a plain tar of the model folder's files.

A flat, uncompressed tar (models are already dense) that any shell can make::

    tar -C DIR -cf - . | curl --data-binary @- -H "Content-Type: application/x-tar" \\
        -H "Authorization: Bearer $TOKEN" http://HOST:PORT/v1/models/NAME/versions

Unpacking trusts nothing: only regular files with plain names are taken, so an archive
cannot write outside the staging folder (no ``..``, absolute paths, links or devices),
and what it writes is bounded by the archive's own size: a plain tar stores every byte
of its members, so a sparse member (which `tarfile` would expand, 280 KB into 4 GiB) or
a size field larger than the archive is refused before anything is written.
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import BinaryIO

from devicetune.errors import RegistryError
from devicetune.registry.names import check_name

TAR_MEDIA_TYPE = "application/x-tar"
MAX_FILES = 64


def pack_folder(folder: Path, out: BinaryIO) -> None:
    """Write every regular file directly in ``folder`` to ``out`` as a tar."""
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for path in sorted(Path(folder).iterdir()):
            if path.is_file() and not path.is_symlink():
                archive.add(path, arcname=path.name, recursive=False)


def unpack(archive: Path, dest: Path) -> list[str]:
    """Extract the regular files of ``archive`` into the empty folder ``dest``.

    Returns:
        The names extracted.

    Raises:
        RegistryError: not a tar, a member that is not a plain file, a bad or
            duplicate name, or too many files.
    """
    names: list[str] = []
    budget = Path(archive).stat().st_size
    try:
        with tarfile.open(archive, mode="r:") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if member.isdir() and name in ("", "."):
                    continue  # `tar -C DIR -cf - .` adds the folder itself
                if not member.isfile() or member.issparse():
                    raise RegistryError(f"upload member {member.name[:80]!r} is not a "
                                        "regular file; upload a flat folder of files "
                                        "(no links, devices or sparse files)")
                check_name(name, "file name")
                budget -= member.size
                if budget < 0:
                    raise RegistryError(f"upload member {name!r} claims more bytes than "
                                        "the upload holds; send a plain tar")
                if name in names:
                    raise RegistryError(f"upload has {name!r} twice; upload each file once")
                names.append(name)
                if len(names) > MAX_FILES:
                    raise RegistryError(f"upload has more than {MAX_FILES} files")
                source = tar.extractfile(member)
                assert source is not None  # a regular file always has a body
                with source, open(dest / name, "xb") as target:
                    while chunk := source.read(1 << 20):
                        target.write(chunk)
    except tarfile.TarError as exc:
        raise RegistryError(f"upload is not a tar archive ({exc}); send the model "
                            f"folder as {TAR_MEDIA_TYPE}") from None
    return names
