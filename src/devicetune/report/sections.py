"""What the report shows of a run: each section's figure, reading and detail table.

A section appears when the run holds its data (per-device sections need devices.csv,
per-round ones metrics.jsonl, the privacy one an epsilon per round, the versions one
versions.jsonl); what is missing is said once, in the run's notes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devicetune.report import outcomes, plots
from devicetune.report.runs import Run
from devicetune.report.versions import CohortDelta, VersionComparison, compare_versions
from devicetune.run_files import PersonalizationResult

# Per-round keys with a plot of their own; any other number gets a small multiple.
PLOTTED = {"round", "sampled", "completed", "dropped", "rejected", "global_accuracy",
           "mean_local_loss", "wall_s", "delta"}  # delta labels the epsilon plot
MAX_VERSION_ROWS = 100


@dataclass(frozen=True)
class Detail:
    """A table under a figure: text cells, and a CSS class per row (``harmed``...)."""

    caption: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    row_classes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Section:
    id: str
    title: str
    lead: str
    image: Path | None = None
    details: tuple[Detail, ...] = field(default=())


def comparisons(run: Run) -> list[VersionComparison]:
    """The run's versions against their parents (empty for a run without versions)."""
    return compare_versions(run.versions or [], regression_tolerance(run), tier_names(run))


def regression_tolerance(run: Run) -> float:
    """The emit gate's allowed accuracy drop, from the run's config or its default."""
    from devicetune.config import EmitConfig

    emit = getattr(run.config, "emit", None) or EmitConfig.model_validate({})
    return emit.max_regression


def tier_names(run: Run) -> list[str]:
    fleet = getattr(run.config, "fleet", None)
    return [t.name for t in fleet.tiers] if fleet is not None else []


def epsilon_keys(rounds: Sequence[dict[str, Any]]) -> list[str]:
    """Per-round privacy keys (``epsilon_rdp``, ``epsilon_pld``, ...), in first-seen order."""
    keys: dict[str, None] = {}
    for row in rounds:
        keys.update({k: None for k, v in row.items()
                     if k.startswith("epsilon") and isinstance(v, int | float)})
    return list(keys)


def other_keys(rounds: Sequence[dict[str, Any]]) -> list[str]:
    """Per-round numbers without a plot of their own that change over the run (a
    constant, such as a server's ``attempts`` of 1 every round, is no chart)."""
    keys: dict[str, set[float]] = {}
    for row in rounds:
        for k, v in row.items():
            if (k not in PLOTTED and not k.startswith("epsilon")
                    and isinstance(v, int | float) and not isinstance(v, bool)):
                keys.setdefault(k, set()).add(float(v))
    return [k for k, values in keys.items() if len(values) > 1]


def verdict(devices: Sequence[PersonalizationResult]) -> str:
    """One sentence: how many devices personalization helped, left alone, harmed."""
    counts = outcomes.gain_counts(devices)
    return (f"Personalization raised accuracy on {counts.gained} of {counts.total} devices, "
            f"left {counts.unchanged} unchanged and lowered it on {counts.harmed}.")


def build_sections(run: Run, out_dir: Path) -> list[Section]:
    """Every section the run has data for, writing each figure into ``out_dir``."""
    # Who gained and who lost first: the question the report is opened for.
    sections = []
    if run.devices:
        sections += _personalization(run, run.devices, out_dir)
    if run.versions:
        sections.append(_versions(run, out_dir))
    if run.rounds:
        sections.append(_global_accuracy(run, out_dir))
        sections.append(_participation(run.rounds, out_dir))
        if keys := epsilon_keys(run.rounds):
            sections.append(_privacy(run, keys, out_dir))
    from devicetune.report.artifact_section import artifact_section

    if (built := artifact_section(run.path)) is not None:
        sections.append(built)
    if run.rounds and (keys := other_keys(run.rounds)):
        sections.append(Section(
            "other-metrics", "Other per-round metrics",
            f"Per-round values recorded in metrics.jsonl: {', '.join(keys)}.",
            plots.other_metrics(run.rounds, keys, out_dir / "other_metrics.png")))
    return sections


def _shown(shown: int, total: int, which: str = "first") -> str:
    return f"; the {which} {shown} of {total} shown" if shown < total else ""


def _devices(count: int) -> str:
    return f"{count} device{'' if count == 1 else 's'}"


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _pts(value: float) -> str:
    return f"{100 * value:+.1f}"


def _global_accuracy(run: Run, out_dir: Path) -> Section:
    initial = (run.summary or {}).get("global_accuracy_initial")
    initial = initial if isinstance(initial, int | float) else None
    values = [r["global_accuracy"] for r in run.rounds
              if isinstance(r.get("global_accuracy"), int | float)]
    lead = "The federated model's accuracy after each round, on the future data of the " \
           "evaluation devices."
    if values:
        start = f"{_pct(initial)} before round 1" if initial is not None \
            else f"{_pct(values[0])} after round {run.rounds[0]['round']}"
        lead += f" {start} → {_pct(values[-1])} after round {run.rounds[-1]['round']}."
    return Section("global-accuracy", "Global model over the rounds", lead,
                   plots.accuracy_per_round(run.rounds, initial, out_dir / "global_accuracy.png"))


def _device_rows(devices: Sequence[PersonalizationResult]) -> tuple[tuple[str, ...], ...]:
    return tuple((str(d.device_id), d.platform, d.tier, str(d.n_train), _pct(d.acc_global),
                  _pct(d.acc_personal), _pts(d.gain), "yes" if d.kept_global else "no")
                 for d in devices)


DEVICE_COLUMNS = ("device", "platform", "tier", "train windows", "global", "personalised",
                  "change (pts)", "kept global head")


def _row_classes(devices: Sequence[PersonalizationResult]) -> tuple[str, ...]:
    return tuple("harmed" if d.gain < -outcomes.TIE else "gained" if d.gain > outcomes.TIE
                 else "" for d in devices)


def _personalization(run: Run, devices: list[PersonalizationResult], out_dir: Path
                     ) -> list[Section]:
    harmed = outcomes.harmed(devices)
    shown = harmed[:plots.MAX_ROWS]
    gain_details = (Detail(
        f"Devices personalization harmed, most harmed first ({len(harmed)})"
        + _shown(len(shown), len(harmed)),
        DEVICE_COLUMNS, _device_rows(shown), _row_classes(shown)),) if harmed else ()
    decile = outcomes.worst_decile(devices)
    fleet_mean = sum(d.acc_personal for d in devices) / len(devices)
    decile_global = sum(d.acc_global for d in decile) / len(decile)
    decile_personal = sum(d.acc_personal for d in decile) / len(decile)
    groups = [("By platform", "platform", outcomes.by_cohort(devices, "platform")),
              ("By compute tier", "tier", outcomes.by_cohort(devices, "tier", tier_names(run)))]
    cohort_rows = [(kind, c) for title, kind, cs in groups for c in cs]
    return [
        Section("personalization-gain", "Who gained and who lost",
                verdict(devices) + " Each device's accuracy on its own future data, "
                "personalised minus global model.",
                plots.gain_distribution(devices, out_dir / "personalization_gain.png"),
                gain_details),
        Section("worst-decile", "The worst-served tenth",
                f"The {_devices(len(decile))} left with the lowest accuracy after "
                f"personalization: on average {_pct(decile_global)} with the global model, "
                f"{_pct(decile_personal)} personalised (fleet: {_pct(fleet_mean)}).",
                plots.worst_decile(decile, fleet_mean, out_dir / "worst_decile.png"),
                (Detail("Worst-served devices, lowest accuracy first"
                        + _shown(len(decile[:plots.MAX_ROWS]), len(decile)), DEVICE_COLUMNS,
                        _device_rows(decile[:plots.MAX_ROWS]),
                        _row_classes(decile[:plots.MAX_ROWS])),)),
        Section("cohorts", "Fairness across cohorts",
                "Whether personalization serves every platform and compute tier alike: each "
                "dot is a device's change in accuracy, the black bar its cohort's mean.",
                plots.cohorts(devices, groups, out_dir / "cohorts.png"),
                (Detail("Mean accuracy on future data per cohort",
                        ("grouping", "cohort", "devices", "global", "personalised",
                         "mean change (pts)", "gained", "harmed"),
                        tuple((kind, c.name, str(c.devices), _pct(c.acc_global),
                               _pct(c.acc_personal), _pts(c.mean_gain),
                               _pct(c.fraction_gained), _pct(c.fraction_harmed))
                              for kind, c in cohort_rows),
                        tuple("harmed" if c.mean_gain < -outcomes.TIE else ""
                              for _, c in cohort_rows)),)),
    ]


def _participation(rounds: list[dict[str, Any]], out_dir: Path) -> Section:
    def total(key: str) -> int:
        return sum(r[key] for r in rounds if isinstance(r.get(key), int))

    lead = (f"{total('sampled'):,} device rounds sampled over {len(rounds)} rounds: "
            f"{total('completed'):,} updates aggregated, {total('dropped'):,} devices dropped "
            f"out, {total('rejected'):,} updates rejected by validation.")
    return Section("participation", "Participation", lead,
                   plots.participation(rounds, out_dir / "participation.png"))


def _privacy(run: Run, keys: list[str], out_dir: Path) -> Section:
    privacy = getattr(run.config, "privacy", None)
    budget = getattr(privacy, "max_epsilon", None)
    last = run.rounds[-1]
    delta = getattr(privacy, "delta", None) or last.get("delta")
    spent = ", ".join(f"{k.removeprefix('epsilon_').upper()} ε = {last[k]:.3g}"
                      for k in keys if isinstance(last.get(k), int | float))
    lead = f"Privacy spent after round {last['round']}: {spent or 'not recorded'}"
    lead += f", of a budget of ε = {budget:g}." if budget is not None else "."
    return Section("privacy", "Differential privacy", lead,
                   plots.epsilon(run.rounds, keys, budget, delta, out_dir / "epsilon.png"))


def _versions(run: Run, out_dir: Path) -> Section:
    tolerance = regression_tolerance(run)
    compared = comparisons(run)
    emitted = [v for v in compared if v.emitted]
    flagged = [v for v in emitted if v.regressed]
    lead = (f"{len(emitted)} version{'' if len(emitted) == 1 else 's'} emitted, "
            f"{len(compared) - len(emitted)} refused; "
            f"{len(flagged)} emitted with a cohort more than {100 * tolerance:.1f} points "
            "below its parent (emit.max_regression), boxed in the figure and red in the "
            "table. Refused versions are faded: they never shipped.")
    if flagged:
        lead += (f" Why a flagged version still shipped: the emit gate compares the global "
                 f"accuracy only (at most {100 * tolerance:.1f} points below the parent); "
                 "a cohort's drop is recorded here, not blocked, so read it before a "
                 "rollout widens (`devicetune registry rollout`).")
    names = [c.cohort for c in compared[0].cohorts] if compared else []
    rows, classes = [], []
    # A long-running server emits hundreds of versions; the table keeps the latest.
    for v in compared[-MAX_VERSION_ROWS:]:
        status = "emitted" if v.emitted else f"refused: {v.reason or 'no reason given'}"
        rows.append((f"v{v.version}", "–" if v.parent_version is None else f"v{v.parent_version}",
                     "–" if v.round is None else str(v.round), status,
                     *(_version_cell(c) for c in v.cohorts),
                     ", ".join(v.regressed) or "none"))
        # A refused version never shipped: its regression is the gate working, not a flag.
        classes.append("refused" if not v.emitted else "regressed" if v.regressed else "")
    return Section("versions", "Model versions against their parents", lead,
                   plots.versions(compared, tolerance, out_dir / "versions.png"),
                   (Detail("Accuracy per cohort, and change vs the parent version in points"
                           + _shown(min(len(compared), MAX_VERSION_ROWS), len(compared),
                                    "latest"),
                           ("version", "parent", "round", "status", *names, "regressed"),
                           tuple(rows), tuple(classes)),))


def _version_cell(cohort: CohortDelta) -> str:
    if cohort.accuracy is None:
        return "–"
    change = f" ({_pts(cohort.delta)})" if cohort.delta is not None else ""
    return ("▼ " if cohort.regressed else "") + _pct(cohort.accuracy) + change
