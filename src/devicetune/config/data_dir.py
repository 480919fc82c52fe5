"""Where the shared datasets live (read from the environment here, at the edge)."""

from __future__ import annotations

import os
from pathlib import Path


def resolve_data_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where the shared datasets live: ``explicit``, else ``$DEVICETUNE_DATA``, else
    ``../shared/datasets`` beside the project root (or an ancestor of it).

    Reading the environment belongs here, at the edge; the library receives the path.
    """
    if explicit is not None:
        return Path(explicit)
    env = os.environ.get("DEVICETUNE_DATA")
    if env:
        return Path(env)
    # ../shared/datasets beside the project, or beside the nearest ancestor that has one
    # (a CI clone may sit a level deeper than the working copy).
    project_root = Path(__file__).resolve().parents[3]
    for start in (project_root, Path.cwd().resolve()):
        for ancestor in start.parents:
            candidate = ancestor / "shared" / "datasets"
            if candidate.is_dir():
                return candidate
    return (project_root / ".." / "shared" / "datasets").resolve()
