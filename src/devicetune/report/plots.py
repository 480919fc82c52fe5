"""The report's figures, each written as a PNG; matplotlib (Agg) is imported inside them.

Figures are drawn on a `matplotlib.figure.Figure` with an Agg canvas, not through
pyplot, so making a report touches no global plotting state of the caller's.
Colours mean one thing everywhere: green gained, red harmed, grey unchanged or global,
blue personalised.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from devicetune.report.outcomes import TIE, CohortOutcome
from devicetune.report.versions import VersionComparison
from devicetune.run_files import PersonalizationResult

GLOBAL, PERSONAL, NAIVE = "#8a94a6", "#2563eb", "#d97706"
GAINED, HARMED, UNCHANGED = "#16a34a", "#dc2626", "#b8bec9"
DROPPED, REJECTED = "#f59e0b", "#dc2626"
WIDTH_IN, DPI = 9.0, 130
MIN_SPAN_POINTS = 10.0  # least accuracy range an axis shows (92-95% is not a cliff)
# Per-device plots label at most this many rows; the HTML table lists the rest.
MAX_ROWS = 30

_STYLE: Any = {
    "font.size": 10, "axes.titlesize": 11, "axes.titleweight": "bold",
    "axes.titlelocation": "left", "axes.spines.top": False, "axes.spines.right": False,
    "axes.edgecolor": "#6b7280", "axes.labelcolor": "#374151", "xtick.color": "#4b5563",
    "ytick.color": "#4b5563", "axes.grid": True, "grid.color": "#e5e7eb",
    "grid.linewidth": 0.8, "axes.axisbelow": True, "legend.frameon": False,
    "figure.facecolor": "white",
}


@contextlib.contextmanager
def _figure(path: Path, height_in: float, **subplots: Any) -> Iterator[tuple[Any, Any]]:
    """A styled figure and its axes; saved to ``path`` when the block ends."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with matplotlib.rc_context(_STYLE):
        figure = Figure(figsize=(WIDTH_IN, height_in), layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.subplots(**subplots) if subplots else figure.subplots()
        yield figure, axes
        figure.savefig(path, dpi=DPI)


def _percent_axis(axis: Any) -> None:
    from matplotlib.ticker import FuncFormatter

    # "93.5%", "94%": as many decimals as the tick needs, no trailing zeros.
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.4g}%"))


def zero_based(values: Sequence[float]) -> tuple[float, float] | None:
    """Axis limits from zero for non-negative values (seconds, losses, counts): an axis
    fitted to 6.40-6.45 s draws the same round time as a swing. None for values that
    go below zero (matplotlib's own limits)."""
    if not values or min(values) < 0:
        return None
    return 0.0, (max(values) * 1.15) or 1.0


def accuracy_limits(values: Sequence[float]) -> tuple[float, float]:
    """Limits of an accuracy axis in percent: at least `MIN_SPAN_POINTS` wide, so that
    noise between rounds (92-95%) is not drawn as a cliff; within 0-100."""
    low, high = min(values), max(values)
    pad = max(0.0, MIN_SPAN_POINTS - (high - low)) / 2
    return max(0.0, low - pad - 0.3), min(100.0, high + pad + 0.3)


def _sign_colour(gain: float) -> str:
    return GAINED if gain > TIE else HARMED if gain < -TIE else UNCHANGED


def accuracy_per_round(rounds: Sequence[dict[str, Any]], initial: float | None,
                       path: Path) -> Path:
    """Global accuracy after each round (and before the first), and mean local loss."""
    points = [(r["round"], 100 * r["global_accuracy"]) for r in rounds
              if isinstance(r.get("global_accuracy"), int | float)]
    with _figure(path, 4.6, nrows=2, sharex=True, height_ratios=[3, 2]) as (_, (top, bottom)):
        if initial is not None:
            points.insert(0, (0, 100 * initial))
            top.annotate("before round 1", (0, 100 * initial), textcoords="offset points",
                         xytext=(0, 9), ha="center", fontsize=8, color="#6b7280")
        if points:
            xs, ys = zip(*points, strict=True)
            top.plot(xs, ys, color=PERSONAL, marker="o" if len(xs) <= 60 else None, lw=2)
            top.annotate(f"{ys[-1]:.1f}%", (xs[-1], ys[-1]), textcoords="offset points",
                         xytext=(6, 4), fontsize=9, color=PERSONAL, fontweight="bold")
        top.set_title("Global model accuracy (pooled future data of the evaluation devices)")
        top.set_ylabel("accuracy")
        if points:
            # A span under a few points would draw noise between rounds as big swings.
            top.set_ylim(*accuracy_limits([y for _, y in points]))
        _percent_axis(top.yaxis)
        _per_round(bottom, rounds, "mean_local_loss",
                   "Mean local training loss of the devices that completed", "loss")
    return path


def _per_round(axes: Any, rounds: Sequence[dict[str, Any]], key: str, title: str,
               ylabel: str) -> None:
    """A secondary panel: ``key`` of every round that recorded it, against the round."""
    points = [(r["round"], r[key]) for r in rounds if isinstance(r.get(key), int | float)]
    if points:
        xs, ys = zip(*points, strict=True)
        axes.plot(xs, ys, color=GLOBAL, marker="o" if len(xs) <= 60 else None)
        if (limits := zero_based(ys)) is not None:
            axes.set_ylim(*limits)
    axes.set_title(title)
    axes.set_ylabel(ylabel)
    axes.set_xlabel("round")
    axes.xaxis.get_major_locator().set_params(integer=True)


def gain_distribution(devices: Sequence[PersonalizationResult], path: Path) -> Path:
    """Per-device gain in accuracy points: histogram by sign, and its CDF (vs naive)."""
    import numpy as np

    gains = np.array([100 * d.gain for d in devices])
    with _figure(path, 3.8, ncols=2, width_ratios=[3, 2]) as (_, (hist, cdf)):
        _gain_histogram(hist, gains)
        hist.set_xlabel("personalised − global accuracy (points)")
        hist.set_ylabel("devices")
        hist.yaxis.get_major_locator().set_params(integer=True)
        for label, colour, values in _cdf_series(devices):
            xs = np.sort(values)
            ys = 100 * np.arange(1, xs.size + 1) / xs.size
            cdf.step(xs, ys, where="post", color=colour, lw=2, label=label)
        cdf.axvline(0, color="#374151", lw=0.8)
        cdf.set_title("Cumulative share of devices")
        cdf.set_xlabel("change in accuracy (points)")
        cdf.set_ylabel("devices at or below")
        cdf.set_ylim(0, 102)
        _percent_axis(cdf.yaxis)
        cdf.legend(loc="lower right", fontsize=8)
    return path


def _gain_histogram(ax: Any, gains: Any) -> None:
    """Gains and losses in bins that meet at zero, so each bar is one sign; devices left
    exactly unchanged (most, when the gate keeps the global head) are a grey bar of
    their own at zero."""
    import numpy as np

    unchanged = np.abs(gains) <= 100 * TIE
    changed = gains[~unchanged]
    reach = float(np.abs(changed).max()) if changed.size else 1.0
    width = max(1.0, float(np.ceil(reach / 12)))
    bins = int(np.ceil(reach / width))
    edges = np.arange(-bins, bins + 1) * width
    counts, _ = np.histogram(changed, bins=edges)
    centres = edges[:-1] + width / 2
    # Narrower than their bins, so the bars beside zero leave room for the grey one.
    bars = ax.bar([*centres, 0.0], [*counts, int(unchanged.sum())],
                  width=[width * 0.6] * len(centres) + [width * 0.3],
                  color=[GAINED if c > 0 else HARMED for c in centres] + [UNCHANGED])
    # The unchanged bar often dwarfs the rest; counts keep the small bars readable.
    ax.bar_label(bars, labels=[str(c) if c else "" for c in [*counts, unchanged.sum()]],
                 fontsize=8, padding=2)
    ax.set_ylim(0, max(int(counts.max()) if counts.size else 0, int(unchanged.sum()), 1) * 1.15)
    ax.axvline(0, color="#374151", lw=0.8, zorder=0.5)  # behind the unchanged bar
    ax.set_title("Change in accuracy per device")
    gained, harmed = int((changed > 0).sum()), int((changed < 0).sum())
    for line, (text, colour) in enumerate([(f"{gained} gained", GAINED),
                                           (f"{int(unchanged.sum())} unchanged", "#6b7280"),
                                           (f"{harmed} harmed", HARMED)]):
        ax.text(0.02, 0.96 - 0.08 * line, text, color=colour, fontweight="bold",
                transform=ax.transAxes, va="top")


def _decile_legend() -> list[Any]:
    from matplotlib.lines import Line2D

    def dot(colour: str, label: str) -> Any:
        return Line2D([], [], marker="o", ls="", color=colour, label=label)

    return [dot(GLOBAL, "global model"), dot(PERSONAL, "personalised, unchanged"),
            dot(GAINED, "personalised, gained"), dot(HARMED, "personalised, harmed")]


def _cdf_series(devices: Sequence[PersonalizationResult]) -> list[tuple[str, str, list[float]]]:
    series = [("devicetune recipe", PERSONAL, [100 * d.gain for d in devices])]
    if devices and all(d.acc_naive is not None for d in devices):
        series.append(("naive fine-tuning", NAIVE,
                        [100 * (d.acc_naive - d.acc_global) for d in devices  # type: ignore[operator]
                         ]))
    return series


def worst_decile(decile: Sequence[PersonalizationResult], fleet_mean: float, path: Path) -> Path:
    """The worst-served devices: each one's global accuracy and where personalization
    took it, worst at the top."""
    shown = list(decile[:MAX_ROWS])
    with _figure(path, 1.3 + 0.32 * len(shown)) as (_, ax):
        for row, device in enumerate(shown):
            before, after = 100 * device.acc_global, 100 * device.acc_personal
            colour = _sign_colour(device.gain)
            ax.annotate("", (after, row), (before, row),
                        arrowprops={"arrowstyle": "-|>", "color": colour, "lw": 1.8,
                                    "shrinkA": 3, "shrinkB": 3})
            ax.plot(before, row, "o", color=GLOBAL, ms=6)
            ax.plot(after, row, "o", color=colour if abs(device.gain) > TIE else PERSONAL,
                    ms=7)
        ax.axvline(100 * fleet_mean, color=PERSONAL, ls="--", lw=1)
        ax.text(100 * fleet_mean, -0.75, f"fleet mean {100 * fleet_mean:.1f}% ",
                color=PERSONAL, fontsize=8, va="bottom", ha="right")
        ax.legend(handles=_decile_legend(), loc="lower left", bbox_to_anchor=(0, 1.0),
                  ncols=4, fontsize=8)
        ax.set_yticks(range(len(shown)),
                      [f"#{d.device_id} {d.platform}/{d.tier}" for d in shown])
        ax.set_ylim(len(shown) - 0.5, -1.0)
        ax.set_xlabel("accuracy on the device's future data (grey: global model)")
        _percent_axis(ax.xaxis)
        ax.grid(axis="y", visible=False)
        ax.set_title(f"Worst-served tenth of devices ({len(decile)}), lowest accuracy first",
                     pad=22)
    return path


def cohorts(devices: Sequence[PersonalizationResult],
            groups: Sequence[tuple[str, str, Sequence[CohortOutcome]]], path: Path) -> Path:
    """Per-device gains in each cohort, with its mean: one panel per grouping.

    Args:
        groups: (title, device attribute, outcomes) for each panel.
    """
    import numpy as np

    rows = max(len(outcomes) for _, _, outcomes in groups)
    with _figure(path, 1.4 + 0.55 * rows, ncols=len(groups), squeeze=False) as (_, axes):
        for ax, (title, attribute, outcomes) in zip(axes[0], groups, strict=True):
            for row, cohort in enumerate(outcomes):
                members = [d for d in devices if getattr(d, attribute) == cohort.name]
                jitter = np.random.default_rng(row).uniform(-0.22, 0.22, len(members))
                ax.scatter([100 * d.gain for d in members], row + jitter, s=14, alpha=0.7,
                           c=[_sign_colour(d.gain) for d in members], linewidths=0)
                ax.plot([100 * cohort.mean_gain] * 2, [row - 0.32, row + 0.32], color="#111827",
                        lw=2.5)
                ax.annotate(f"mean {100 * cohort.mean_gain:+.1f}",
                            (100 * cohort.mean_gain, row - 0.32), textcoords="offset points",
                            xytext=(3, 1), fontsize=8, va="bottom")
            ax.axvline(0, color="#374151", lw=0.8)
            low, high = ax.get_xlim()
            ax.set_xlim(min(low, -1.0), max(high, 1.0))  # no gains: still a scale in points
            ax.set_yticks(range(len(outcomes)), [
                f"{c.name}\n{c.devices} devices, {100 * c.fraction_harmed:.0f}% harmed"
                for c in outcomes])
            ax.set_ylim(len(outcomes) - 0.5, -0.5)
            ax.grid(axis="y", visible=False)
            ax.set_xlabel("change in accuracy (points)")
            ax.set_title(title)
    return path


def participation(rounds: Sequence[dict[str, Any]], path: Path) -> Path:
    """Per round: updates that counted, devices that dropped, updates rejected; and how
    long each round took."""
    import numpy as np

    xs = np.array([r["round"] for r in rounds])

    def series(key: str) -> Any:
        return np.array([r.get(key) if isinstance(r.get(key), int | float) else 0
                         for r in rounds], dtype=float)

    completed, dropped, rejected = series("completed"), series("dropped"), series("rejected")
    with _figure(path, 4.4, nrows=2, sharex=True, height_ratios=[3, 2]) as (_, (top, bottom)):
        stack = [("completed", completed, GAINED), ("dropped out", dropped, DROPPED),
                 ("rejected", rejected, REJECTED)]
        if len(xs) <= 80:
            base = np.zeros(len(xs))
            for label, values, colour in stack:
                top.bar(xs, values, bottom=base, color=colour, label=label, width=0.8)
                base = base + values
        else:
            top.stackplot(xs, *(v for _, v, _ in stack), colors=[c for *_, c in stack],
                          labels=[label for label, *_ in stack], step="mid")
        top.plot(xs, series("sampled"), color="#111827", lw=1, ls=":", label="sampled")
        top.set_title("Devices per round")
        top.set_ylabel("devices")
        top.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
        _per_round(bottom, rounds, "wall_s", "Round wall time", "seconds")
    return path


def epsilon(rounds: Sequence[dict[str, Any]], keys: Sequence[str], budget: float | None,
            delta: float | None, path: Path) -> Path:
    """Privacy spent by the end of each round, per accountant, against the budget."""
    colours = [PERSONAL, NAIVE, GLOBAL, "#7c3aed"]
    with _figure(path, 3.4) as (_, ax):
        for key, colour in zip(keys, colours * len(keys), strict=False):
            points = [(r["round"], r[key]) for r in rounds
                      if isinstance(r.get(key), int | float)]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, color=colour, lw=2, label=key.removeprefix("epsilon_").upper())
        if budget is not None:
            ax.axhline(budget, color=HARMED, ls="--", lw=1.2, label=f"budget ε = {budget:g}")
        ax.set_title("Privacy spent (ε)" + (f" at δ = {delta:g}" if delta else ""))
        ax.set_xlabel("round")
        ax.set_ylabel("ε")
        ax.set_ylim(bottom=0)
        ax.legend(loc="upper left", fontsize=8)
    return path


def versions(comparisons: Sequence[VersionComparison], tolerance: float, path: Path) -> Path:
    """Each version's accuracy change against its parent, per cohort, as a heat map;
    a cohort more than ``tolerance`` below its parent is boxed and marked."""
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.patches import Rectangle

    shown = list(comparisons[-MAX_ROWS:])
    names = [c.cohort for c in shown[0].cohorts] if shown else []
    values = np.array([[np.nan if c.delta is None else 100 * c.delta for c in v.cohorts]
                       for v in shown]) if shown else np.zeros((0, 0))
    finite = np.abs(values[np.isfinite(values)])
    limit = max(100 * tolerance * 2, float(finite.max()) if finite.size else 0, 0.5)
    with _figure(path, 1.5 + 0.42 * max(len(shown), 1)) as (_, ax):
        if not shown:
            ax.set_axis_off()
            ax.text(0.5, 0.5, "no versions recorded", ha="center", transform=ax.transAxes)
            return path
        image = ax.imshow(np.ma.masked_invalid(values), cmap="RdYlGn", aspect="auto",
                          norm=TwoSlopeNorm(0, -limit, limit))
        ax.set_facecolor("#f3f4f6")
        for i, version in enumerate(shown):
            for j, cohort in enumerate(version.cohorts):
                text = "–" if cohort.delta is None else f"{100 * cohort.delta:+.1f}"
                ax.text(j, i, ("▼ " if cohort.regressed else "") + text, ha="center",
                        va="center", fontsize=8.5,
                        fontweight="bold" if cohort.regressed else "normal")
                if cohort.regressed and version.emitted:
                    ax.add_patch(Rectangle((j - 0.48, i - 0.46), 0.96, 0.92, fill=False,
                                           ec="#111827", lw=2))
            if not version.emitted:  # never shipped: faded, its regression was refused
                ax.add_patch(Rectangle((-0.5, i - 0.5), len(names), 1, color="white",
                                       alpha=0.55, lw=0))
        ax.set_xticks(range(len(names)), names)
        ax.xaxis.tick_top()
        ax.set_yticks(range(len(shown)), [_version_label(v) for v in shown])
        ax.grid(False)
        ax.set_title(f"Change vs the parent version, points (▼ below by more than "
                     f"{100 * tolerance:.1f})", pad=24)
        ax.figure.colorbar(image, ax=ax, shrink=0.8, label="points vs parent")
    return path


def _version_label(version: VersionComparison) -> str:
    parent = f" ← v{version.parent_version}" if version.parent_version is not None else ""
    refused = "" if version.emitted else " (refused)"
    return f"v{version.version}{parent}{refused}"


def other_metrics(rounds: Sequence[dict[str, Any]], keys: Sequence[str], path: Path) -> Path:
    """Small multiples of per-round values the report has no dedicated plot for."""
    columns = min(3, len(keys))
    rows = -(-len(keys) // columns)
    with _figure(path, 0.6 + 2.2 * rows, nrows=rows, ncols=columns, squeeze=False) \
            as (figure, axes):
        for ax in axes.flat[len(keys):]:
            figure.delaxes(ax)
        for ax, key in zip(axes.flat, keys, strict=False):
            points = [(r["round"], r[key]) for r in rounds
                      if isinstance(r.get(key), int | float) and not isinstance(r[key], bool)]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, color=PERSONAL, marker="o" if len(xs) <= 60 else None)
                if (limits := zero_based(ys)) is not None:
                    ax.set_ylim(*limits)
            ax.set_title(key, fontsize=10)
            ax.set_xlabel("round")
    return path
