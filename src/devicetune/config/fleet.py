"""`[fleet]`: the simulated phones, their data, and how each personalises."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from devicetune.config.base import PositiveFloat, Probability, Section, parse_id_list
from devicetune.config.data_file import DataFileFields


class TierSpec(Section):
    """A class of phone hardware: its share of the fleet and its relative speed."""

    name: str = Field(min_length=1)
    share: Probability
    speed: PositiveFloat = 1.0


def _default_tiers() -> list[TierSpec]:
    return [
        TierSpec(name="high", share=0.3, speed=1.0),
        TierSpec(name="mid", share=0.5, speed=0.6),
        TierSpec(name="low", share=0.2, speed=0.3),
    ]


class LabelShift(Section):
    """Synthetic label shift in time: each device's past (the part before its local test
    split) holds only ``past_classes`` of the classes, drawn per device; its future adds
    the others. ``future_overlap`` is the share of future windows from the past's classes
    (0 = past and future disjoint)."""

    past_classes: int = Field(ge=1, description="classes each device's past holds")
    future_overlap: Probability = Field(
        0.0, description="share of future windows from the classes the past holds"
    )

    @field_validator("past_classes")
    @classmethod
    def _leaves_classes_to_add(cls, value: int) -> int:
        from devicetune.data.synthetic import CLASSES  # data imports config: not at top

        if value >= len(CLASSES):
            raise ValueError(f"the synthetic task has {len(CLASSES)} classes; use "
                             f"1..{len(CLASSES) - 1} so the future has classes to add")
        return value


class FleetData(DataFileFields):
    """Where each device's data comes from and how it is split: the synthetic
    generator, a shared dataset, or a team's own file (``source = "file"``, ``path``)."""

    source: Literal["synthetic", "har", "fsdd", "file"] = "synthetic"
    partition: Literal["natural", "dirichlet"] = "natural"
    dirichlet_alpha: PositiveFloat = 0.5
    subjects: list[int] = Field(
        default_factory=list, description="natural users forming the fleet; empty = all"
    )
    test_fraction: float = Field(0.5, gt=0.0, lt=1.0, description="time-ordered local test")
    windows_per_device: int = Field(60, ge=4, le=10_000, description="synthetic: mean")
    label_shift: LabelShift | None = Field(
        None, description="synthetic: each past holds only some classes, the future adds "
        "the rest"
    )
    order: Literal["recorded", "class_grouped"] = Field(
        "recorded",
        description="each device's rows as recorded, or grouped by class (classes one "
        "after another in a random order per device, so the past lacks the last ones)",
    )

    _ids = field_validator("subjects", mode="before")(parse_id_list)

    @model_validator(mode="after")
    def _path_with_file(self) -> FleetData:
        self.check_file_source(self.source == "file", "source")
        if self.label_shift is not None and self.source != "synthetic":
            raise ValueError(f"label_shift shapes the synthetic generator; source = "
                             f"{self.source!r} has its own labels (use order = "
                             "'class_grouped' to skew a dataset's pasts)")
        return self


class PersonalizationConfig(Section):
    """How each device fine-tunes the global model on its own data, and on whom it is
    measured. Every step is one an app can do with the artifact's signatures."""

    subjects: list[int] = Field(
        default_factory=list,
        description="natural users to personalise (e.g. never-seen subjects); empty = the "
        "fleet's own devices",
    )
    max_devices: int = Field(200, ge=1, description="personalise at most this many devices")
    method: Literal["seen_rerank", "seen_knn", "gated_finetune"] = Field(
        "seen_rerank",
        description="seen_rerank: the personal head re-ranks only among classes the "
        "device has seen, where the global model predicts one of them; seen_knn: the "
        "same rule with a nearest-neighbour vote over the past's embeddings instead "
        "of fine-tuning; gated_finetune: the personal head replaces the global one "
        "(interpolation, protect_unseen_classes apply)",
    )
    knn_k: int = Field(10, ge=1, le=1000, description="seen_knn: neighbours that vote")
    test_fraction: float | None = Field(
        None, gt=0.0, lt=1.0,
        description="share of each person's data (the latest) kept to measure on; default: "
        "fleet.data.test_fraction",
    )
    epochs: int = Field(20, ge=0, le=1000, description="most epochs cross-validation may "
                        "pick; 0: every device keeps the global model")
    learning_rate: PositiveFloat | None = Field(None, description="default: the model's")
    blend: float | Literal["cross_validated", "global_error"] = Field(
        "global_error",
        description="seen_rerank: weight of the personal output among seen classes: a "
        "number, 'cross_validated' (tried on validation folds), or 'global_error' (0.5 "
        "plus half the global model's error rate on the device's past)",
    )
    choose_epochs: bool = Field(
        False, description="seen_rerank: cross-validate the epoch count (else always "
        "`epochs`; validation then only gates and picks the blend)"
    )
    validation_fraction: float = Field(
        0.2, ge=0.0, lt=1.0, description="share of local data each validation fold holds"
    )
    interpolation: float = Field(
        1.0, gt=0.0, le=1.0, description="weight of the personal head against the global one"
    )
    protect_unseen_classes: bool = Field(
        True, description="keep the global classifier for classes absent from local data"
    )
    gate: bool = Field(True, description="keep the global head unless personal is better")
    gate_margin: float | None = Field(
        None, ge=0.0,
        description="gain needed, in standard errors of validation accuracy; default: "
        "1 for seen_rerank and seen_knn, 2 for gated_finetune",
    )
    compare_naive: bool = Field(
        True, description="also measure naive fine-tuning (all epochs, no safeguards)"
    )

    _ids = field_validator("subjects", mode="before")(parse_id_list)

    @field_validator("blend", mode="before")
    @classmethod
    def _blend_rule_or_weight(cls, value: object) -> object:
        rules = ("cross_validated", "global_error")
        weight = isinstance(value, int | float) and not isinstance(value, bool)
        if value in rules or (weight and 0.0 < float(value) <= 1.0):  # type: ignore[arg-type]
            return value
        raise ValueError(f"must be a weight in (0, 1] or one of {', '.join(map(repr, rules))}")

    @property
    def margin(self) -> float:
        """The gate's margin: ``gate_margin``, or the method's default (measured in
        benchmarks/personalization.py: at 2, seen_rerank kept the global model on
        people whose own data would have helped)."""
        if self.gate_margin is not None:
            return self.gate_margin
        return 2.0 if self.method == "gated_finetune" else 1.0


class FleetConfig(Section):
    """A population of simulated phones."""

    devices: int = Field(ge=1, le=10_000_000)
    platform_mix: dict[Literal["android", "ios"], Probability] = Field(
        default_factory=lambda: {"android": 0.7, "ios": 0.3}
    )
    tiers: list[TierSpec] = Field(default_factory=_default_tiers, min_length=1)
    availability: float = Field(0.8, gt=0.0, le=1.0, description="P(available in a round)")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="P(drops out mid-round)")
    local_epochs: int = Field(1, ge=1, le=1000)
    learning_rate: PositiveFloat | None = Field(
        None, description="local training rate in federated rounds; default: the model's"
    )
    eval_devices: int = Field(
        50, ge=1, le=10_000_000,
        description="devices whose local test data measure global accuracy"
    )
    data: FleetData = FleetData()
    personalization: PersonalizationConfig = PersonalizationConfig()

    @field_validator("platform_mix")
    @classmethod
    def _mix_sums_to_one(cls, value: dict[str, float]) -> dict[str, float]:
        if not value or not math.isclose(sum(value.values()), 1.0, abs_tol=1e-6):
            raise ValueError(f"shares must sum to 1, got {sum(value.values()):g}")
        return value

    @field_validator("tiers")
    @classmethod
    def _tiers_sum_to_one(cls, value: list[TierSpec]) -> list[TierSpec]:
        total = sum(t.share for t in value)
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"tier shares must sum to 1, got {total:g}")
        if len({t.name for t in value}) != len(value):
            raise ValueError("tier names must be unique")
        return value
