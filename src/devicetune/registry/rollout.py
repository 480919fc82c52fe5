"""Staged rollout: which version a device gets, the same answer every time.

A device falls in a bucket ``int(sha256("NAME:DEVICE_ID")[:8]) mod 10000``: stable across
requests, processes and machines, and independent between models. A `RolloutPolicy`
lays its arms over the buckets in order, each ``percent`` wide (0.01 % steps); a device
in no arm gets ``default_version`` (the newest version when unset)::

    RolloutPolicy(default_version=3, arms=[RolloutArm(version=4, percent=10)])
        # 10 % of devices get 4, the rest 3; raising 10 to 50 keeps the first 10 % on 4
    RolloutPolicy(default_version=3, arms=[RolloutArm(version=4, percent=25, cohort="A"),
                                           RolloutArm(version=5, percent=25, cohort="B")])
        # an A/B test on half the fleet; the answer names the cohort for the app's metrics
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from devicetune.errors import NotInRegistry

BUCKETS = 10_000
MAX_VERSION = 2**31 - 1


def _not_bool(value: Any) -> Any:
    # JSON `true` is not a number; pydantic's lax mode would read it as 1.
    if isinstance(value, bool):
        raise ValueError("must be a number, not true/false")
    return value


Version = Annotated[int, Field(ge=1, le=MAX_VERSION), BeforeValidator(_not_bool)]


def bucket(name: str, device_id: str) -> int:
    """The device's stable bucket, 0..9999, for model ``name``."""
    digest = hashlib.sha256(f"{name}:{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


class RolloutArm(BaseModel):
    """A share of the fleet that gets one version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Version
    percent: Annotated[float, BeforeValidator(_not_bool)] = Field(
        ge=100 / BUCKETS, le=100, allow_inf_nan=False, json_schema_extra={"multipleOf": 0.01},
        description="share of devices, in 0.01 steps")
    cohort: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
                               description="A/B label reported back to the device")

    @property
    def buckets(self) -> int:
        return round(self.percent * BUCKETS / 100)


class RolloutPolicy(BaseModel):
    """Who gets which version of one model; the registry keeps one per model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default_version: Version | None = Field(
        default=None, description="for devices in no arm; unset = newest version")
    arms: list[RolloutArm] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> RolloutPolicy:
        if sum(arm.buckets for arm in self.arms) > BUCKETS:
            raise ValueError("the arms' percents add up to more than 100")
        for arm in self.arms:
            if abs(arm.buckets * 100 / BUCKETS - arm.percent) > 1e-9:
                raise ValueError(f"percent {arm.percent} is finer than the 0.01 step")
        cohorts = [arm.cohort for arm in self.arms if arm.cohort is not None]
        if len(cohorts) != len(set(cohorts)):
            raise ValueError("cohort names must be unique")
        return self

    def versions(self) -> set[int]:
        """Every version the policy names."""
        named = {arm.version for arm in self.arms}
        return named | ({self.default_version} if self.default_version else set())


class Assignment(BaseModel):
    """The version a device gets, and why."""

    model_config = ConfigDict(frozen=True)

    version: int
    cohort: str | None = Field(description="the arm's cohort; None for the default")
    bucket: int = Field(description="the device's stable bucket, 0..9999")


class LatestAnswer(BaseModel):
    """What a device should run and where to get it (``GET .../latest``)."""

    name: str
    version: int
    cohort: str | None
    bucket: int
    platform: Literal["android", "ios"] | None
    file: str | None = Field(description="the platform's model file (None: no platform)")
    sha256: str | None
    size: int | None
    url: str | None = Field(description="path of the file, relative to the registry")
    manifest_url: str


def assign(policy: RolloutPolicy, name: str, device_id: str,
           published: Sequence[int]) -> Assignment:
    """The version ``device_id`` gets under ``policy``.

    Raises:
        NotInRegistry: no version is published yet.
    """
    b = bucket(name, device_id)
    start = 0
    for arm in policy.arms:
        if start <= b < start + arm.buckets:
            return Assignment(version=arm.version, cohort=arm.cohort, bucket=b)
        start += arm.buckets
    if policy.default_version is not None:
        return Assignment(version=policy.default_version, cohort=None, bucket=b)
    if not published:
        raise NotInRegistry(f"model {name} has no published version yet; publish one first")
    return Assignment(version=max(published), cohort=None, bucket=b)
