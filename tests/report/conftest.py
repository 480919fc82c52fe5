"""A real small simulation to report on, a hand-made server run, and a page reader."""

from __future__ import annotations

import base64
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.conftest import small_config


@pytest.fixture(scope="session")
def simulation_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path,
                   small_artifacts: Path) -> Path:
    """A finished simulation of both platforms, with dropouts (never modified: copy it)."""
    from devicetune.fleet.simulate import simulate

    out = tmp_path_factory.mktemp("simulation-run")
    config = small_config(fleet={"devices": 10, "platform_mix": {"android": 0.5, "ios": 0.5},
                                 "dropout": 0.2})
    simulate(config, out, data_dir, artifacts=small_artifacts)
    return out


@pytest.fixture
def run_copy(simulation_run: Path, tmp_path: Path) -> Path:
    """A copy of the simulation run a test may cut, delete or report into."""
    return Path(shutil.copytree(simulation_run, tmp_path / "run"))


def version(number: int, parent: int | None, accuracy: dict[str, float],
            parent_accuracy: dict[str, float] | None, emitted: bool = True,
            reason: str | None = None) -> dict:
    """A versions.jsonl line; ``accuracy`` maps all/android/ios/high/mid/low to 0..1."""
    def metrics(values: dict[str, float]) -> dict:
        return {"accuracy": values["all"],
                "by_platform": {k: values[k] for k in ("android", "ios")},
                "by_tier": {k: values[k] for k in ("high", "mid", "low")}}

    return {"version": number, "parent_version": parent, "round": 2 * number,
            "emitted": emitted, "reason": reason, "metrics": metrics(accuracy),
            "parent_metrics": metrics(parent_accuracy) if parent_accuracy else None}


V1 = {"all": 0.80, "android": 0.81, "ios": 0.78, "high": 0.82, "mid": 0.80, "low": 0.77}
V2 = {"all": 0.84, "android": 0.85, "ios": 0.82, "high": 0.85, "mid": 0.84, "low": 0.82}
# v3 gains overall but iOS loses 6 points: an average that hides a cohort.
V3 = {"all": 0.85, "android": 0.89, "ios": 0.76, "high": 0.86, "mid": 0.85, "low": 0.83}
# v4 is refused by the gate.
V4 = {"all": 0.70, "android": 0.72, "ios": 0.66, "high": 0.71, "mid": 0.70, "low": 0.69}
VERSIONS = [version(1, None, V1, None), version(2, 1, V2, V1), version(3, 2, V3, V2),
            version(4, 3, V4, V3, emitted=False, reason="accuracy fell 15.0 points")]


def write_server_run(folder: Path, rounds: int = 8, dp: bool = True) -> Path:
    """A server run folder as `devicetune serve` is specified to write it: metrics.jsonl
    (with epsilon per round and a key the report does not know) and versions.jsonl."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for r in range(1, rounds + 1):
        row = {"round": r, "sampled": 20, "completed": 18 - r % 3, "dropped": 2,
               "rejected": r % 3, "global_accuracy": 0.7 + 0.2 * r / rounds,
               "mean_local_loss": 1.0 / r, "wall_s": 1.5, "clip_norm": 1.0 - 0.05 * r}
        if dp:
            row |= {"epsilon_rdp": 0.4 * r ** 0.5, "epsilon_pld": 0.35 * r ** 0.5}
        lines.append(json.dumps(row))
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "versions.jsonl").write_text("".join(json.dumps(v) + "\n" for v in VERSIONS))
    return folder


class Page(HTMLParser):
    """What a report page holds: section ids, images, numbers with their sources,
    table rows with their classes, and every external reference."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: list[dict[str, str]] = []
        self.numbers: list[dict[str, str]] = []
        self.rows: list[tuple[str, list[str]]] = []
        self.references: list[str] = []
        self._number: dict[str, str] | None = None
        self._row: tuple[str, list[str]] | None = None
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "section":
            self.sections.append(a.get("id", ""))
        if tag == "img":
            self.images.append(a)
        for key in ("src", "href"):
            if key in a and not a[key].startswith(("data:", "#")):
                self.references.append(a[key])
        if tag == "link" or tag == "script":
            self.references.append(tag)
        if "data-source" in a:
            self._number = {**a, "text": ""}
        if tag == "tr":
            self._row = (a.get("class", ""), [])
        if tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_data(self, data: str) -> None:
        if self._number is not None:
            self._number["text"] += data
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "div") and self._number is not None:
            self.numbers.append(self._number)
            self._number = None
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row[1].append("".join(self._cell))
            self._cell = None
        if tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None


def read_page(path: Path) -> Page:
    return Page(path.read_text(encoding="utf-8"))


def png_bytes(data_uri: str) -> bytes:
    prefix = "data:image/png;base64,"
    assert data_uri.startswith(prefix)
    return base64.b64decode(data_uri[len(prefix):], validate=True)
