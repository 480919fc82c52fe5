"""Where the datasets live (read from the environment here, at the edge).

In order: an explicit folder, ``$DEVICETUNE_DATA``, the team's ``../shared/datasets``
beside the project when it exists (our machines and CI), else a per-user folder,
``$XDG_DATA_HOME/devicetune/datasets`` (default ``~/.local/share/devicetune/datasets``),
which is also where ``devicetune data download`` writes by default. A fresh clone
therefore works once ``devicetune data download har`` (or ``fsdd``) has run.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[3]


def resolve_data_dir(explicit: str | os.PathLike[str] | None = None, *,
                     project_root: Path | None = None, cwd: Path | None = None) -> Path:
    """The folder the loaders read: ``explicit``, else ``$DEVICETUNE_DATA``, else
    ``../shared/datasets`` beside the project root (or an ancestor of it, or of ``cwd``)
    if it exists, else `user_data_dir`.

    Reading the environment belongs here, at the edge; the library receives the path.
    """
    if explicit is not None:
        return Path(explicit)
    env = os.environ.get("DEVICETUNE_DATA")
    if env:
        return Path(env)
    # ../shared/datasets beside the project, or beside the nearest ancestor that has one
    # (a CI clone may sit a level deeper than the working copy).
    root = (project_root or PROJECT_ROOT).resolve()
    for start in (root, (cwd or Path.cwd()).resolve()):
        for ancestor in start.parents:
            candidate = ancestor / "shared" / "datasets"
            if candidate.is_dir():
                return candidate
    return user_data_dir()


def download_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where ``devicetune data download`` writes: ``explicit``, else ``$DEVICETUNE_DATA``,
    else `user_data_dir` (never the team's shared folder, which is read-only)."""
    if explicit is not None:
        return Path(explicit)
    env = os.environ.get("DEVICETUNE_DATA")
    return Path(env) if env else user_data_dir()


def user_data_dir() -> Path:
    """``$XDG_DATA_HOME/devicetune/datasets``, default ``~/.local/share/devicetune/datasets``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "devicetune" / "datasets"
