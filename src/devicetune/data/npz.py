"""Reading the shared ``.npz`` datasets safely (never with pickles)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from devicetune.errors import DataError


def read_npz(path: Path, required: set[str], dataset: str | None = None
             ) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, checked for the required names. No pickles.

    ``dataset`` names the ``devicetune data download`` target that fetches a missing file.
    """
    if not path.exists():
        fetch = (f"fetch it with `devicetune data download {dataset} --to {path.parent}`, "
                 "or " if dataset else "")
        raise DataError(
            f"{path}: not found; {fetch}set DEVICETUNE_DATA to the folder that holds "
            f"{path.name}"
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz archive ({exc})") from None
    missing = required - arrays.keys()
    if missing:
        raise DataError(
            f"{path}: missing array(s) {', '.join(sorted(missing))}; expected "
            f"{', '.join(sorted(required))}"
        )
    return arrays
