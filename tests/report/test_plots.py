"""Each figure writes a PNG for the shapes runs come in: long, short, sparse, odd."""

from __future__ import annotations

from pathlib import Path

import matplotlib
from PIL import Image

from devicetune.report import plots
from devicetune.report.outcomes import by_cohort
from devicetune.report.versions import compare_versions
from devicetune.run_files import PersonalizationResult
from tests.report.conftest import VERSIONS


def _png(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def _rounds(n: int) -> list[dict]:
    return [{"round": r, "sampled": 10, "completed": 8, "dropped": 1, "rejected": 1,
             "global_accuracy": 0.6 + 0.3 * r / n, "mean_local_loss": 1 / r, "wall_s": 0.2,
             "epsilon_rdp": 0.1 * r ** 0.5} for r in range(1, n + 1)]


def test_a_long_run_draws_its_rounds_as_areas(tmp_path: Path) -> None:
    rounds = _rounds(500)
    width, _ = _png(plots.participation(rounds, tmp_path / "p.png"))
    assert width == plots.WIDTH_IN * plots.DPI
    _png(plots.accuracy_per_round(rounds, 0.55, tmp_path / "a.png"))
    _png(plots.epsilon(rounds, ["epsilon_rdp"], budget=3.0, delta=1e-5,
                       path=tmp_path / "e.png"))


def test_rounds_with_missing_values_still_plot(tmp_path: Path) -> None:
    rounds = [{"round": 1, "global_accuracy": None, "mean_local_loss": None},
              {"round": 2, "sampled": 3}]
    _png(plots.accuracy_per_round(rounds, None, tmp_path / "a.png"))
    _png(plots.participation(rounds, tmp_path / "p.png"))


def test_a_fleet_where_nothing_changed_plots(tmp_path: Path) -> None:
    devices = [PersonalizationResult(i, "android", "low", 5, 5, 0.8, 0.8, 0, True)
               for i in range(4)]
    _png(plots.gain_distribution(devices, tmp_path / "g.png"))
    _png(plots.worst_decile(devices[:1], 0.8, tmp_path / "w.png"))
    groups = [("By tier", "tier", by_cohort(devices, "tier"))]
    _png(plots.cohorts(devices, groups, tmp_path / "c.png"))


def test_the_worst_decile_figure_grows_with_its_rows(tmp_path: Path) -> None:
    devices = [PersonalizationResult(i, "ios", "mid", 5, 5, 0.5, 0.4 + i / 100, 3, False)
               for i in range(60)]
    _, few = _png(plots.worst_decile(devices[:2], 0.7, tmp_path / "few.png"))
    _, many = _png(plots.worst_decile(devices, 0.7, tmp_path / "many.png"))
    assert many > few  # and capped: at most MAX_ROWS rows are drawn
    assert many < (1.3 + 0.32 * (plots.MAX_ROWS + 1)) * plots.DPI


def test_versions_and_other_metrics_plot(tmp_path: Path) -> None:
    compared = compare_versions(VERSIONS, 0.02)
    _png(plots.versions(compared, 0.02, tmp_path / "v.png"))
    _png(plots.versions([], 0.02, tmp_path / "none.png"))
    rounds = [{"round": r, "a": r, "b": -r, "c": 0.5, "d": r * r} for r in range(1, 6)]
    _png(plots.other_metrics(rounds, ["a", "b", "c", "d"], tmp_path / "o.png"))


def test_plotting_leaves_the_callers_matplotlib_settings_alone(tmp_path: Path) -> None:
    before = dict(matplotlib.rcParams)
    plots.participation(_rounds(5), tmp_path / "p.png")
    assert dict(matplotlib.rcParams) == before
