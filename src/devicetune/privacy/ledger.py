"""The privacy ledger: one append-only entry per round that spent privacy.

The server commits ``ledger.to_dict()`` inside its per-round state file (atomically,
with `devicetune.atomic`), so after a crash the ledger and the model state are of the
same round. On resume, `PrivacyLedger.from_dict` refuses a ledger that is not
append-only consistent, and `PrivacyLedger.replay` rebuilds the accountant by
recording the same rounds again, checking every recorded epsilon on the way: epsilon
never goes down across a crash and ``--resume``.

An infinite epsilon (a round with noise multiplier 0) is stored as ``null``, since
JSON has no infinity.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from devicetune.atomic import atomic_write_json
from devicetune.errors import ArtifactError, ConfigError, DevicetuneError, ServerError
from devicetune.privacy.accounting import (
    ACCOUNTANTS,
    DEFAULT_PLD_INTERVAL,
    AccountantName,
    Epsilons,
    RoundAccountant,
)

LEDGER_FORMAT = "devicetune.privacy-ledger/1"
# Replaying on another machine may differ in the last bits of an FFT; anything larger
# means the ledger was edited or written by different accounting code.
_REPLAY_RTOL = 1e-9


@dataclass(frozen=True)
class LedgerEntry:
    """One round's privacy spend: what ran, and epsilon after it at ``delta``."""

    round: int
    noise_multiplier: float
    clip_norm: float
    sampling_rate: float
    accountant: AccountantName
    epsilon_rdp: float
    epsilon_pld: float
    delta: float
    timestamp: str

    @property
    def epsilons(self) -> Epsilons:
        """Both epsilons after this round."""
        return Epsilons(self.epsilon_rdp, self.epsilon_pld)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict; infinite epsilons become ``None``."""
        data = asdict(self)
        for key in ("epsilon_rdp", "epsilon_pld"):
            data[key] = None if math.isinf(data[key]) else data[key]
        return data

    @classmethod
    def from_dict(cls, raw: Any) -> LedgerEntry:
        """Parse one entry; raise `ArtifactError` if a field is missing or mistyped."""
        if not isinstance(raw, dict) or set(raw) != set(cls.__dataclass_fields__):
            raise ArtifactError(f"privacy ledger entry {raw!r} does not have the fields "
                                f"{', '.join(cls.__dataclass_fields__)}")
        try:
            entry = cls(
                round=_integer(raw["round"]),
                noise_multiplier=float(raw["noise_multiplier"]),
                clip_norm=float(raw["clip_norm"]),
                sampling_rate=float(raw["sampling_rate"]),
                accountant=raw["accountant"],
                epsilon_rdp=_epsilon(raw["epsilon_rdp"]),
                epsilon_pld=_epsilon(raw["epsilon_pld"]),
                delta=float(raw["delta"]),
                timestamp=str(raw["timestamp"]),
            )
        except (TypeError, ValueError) as exc:
            raise ArtifactError(f"privacy ledger entry {raw!r} is malformed ({exc})") from None
        if entry.accountant not in ACCOUNTANTS:
            raise ArtifactError(f"privacy ledger round {entry.round}: accountant "
                                f"{entry.accountant!r} is not 'rdp' or 'pld'")
        return entry


class PrivacyLedger:
    """Append-only record of every round that spent privacy, at one delta."""

    def __init__(self, delta: float, *,
                 value_discretization_interval: float = DEFAULT_PLD_INTERVAL) -> None:
        RoundAccountant(delta, value_discretization_interval=value_discretization_interval)
        self.delta = delta
        self.value_discretization_interval = value_discretization_interval
        self._entries: list[LedgerEntry] = []

    @property
    def entries(self) -> tuple[LedgerEntry, ...]:
        """The entries, oldest first."""
        return tuple(self._entries)

    @property
    def epsilons(self) -> Epsilons:
        """Epsilon spent after the last entry (zero for an empty ledger)."""
        return self._entries[-1].epsilons if self._entries else Epsilons(0.0, 0.0)

    def new_accountant(self) -> RoundAccountant:
        """An empty accountant with this ledger's delta and PLD grid."""
        return RoundAccountant(self.delta, value_discretization_interval=self
                               .value_discretization_interval)

    def record(self, accountant: RoundAccountant, *, server_round: int,
               noise_multiplier: float, clip_norm: float, sampling_rate: float,
               gate_accountant: AccountantName = "rdp",
               timestamp: str | None = None) -> LedgerEntry:
        """Record a round that ran in ``accountant`` and append it here.

        Raises:
            ServerError: the accountant is not this ledger's, or the round number
                does not follow the last entry's.
        """
        if accountant.rounds != len(self._entries) or accountant.delta != self.delta:
            raise ServerError(
                f"the accountant ({accountant.rounds} rounds, delta {accountant.delta:g})"
                f" is out of step with the privacy ledger ({len(self._entries)} entries,"
                f" delta {self.delta:g}); rebuild it with PrivacyLedger.replay()")
        self._check_round_number(server_round, ServerError)
        if not clip_norm > 0:
            raise ConfigError(f"clip_norm must be > 0, got {clip_norm}")
        spent = accountant.record(noise_multiplier, sampling_rate)
        entry = LedgerEntry(
            round=server_round, noise_multiplier=float(noise_multiplier),
            clip_norm=float(clip_norm), sampling_rate=float(sampling_rate),
            accountant=gate_accountant, epsilon_rdp=spent.rdp, epsilon_pld=spent.pld,
            delta=self.delta,
            timestamp=timestamp or datetime.now(UTC).isoformat(timespec="milliseconds"),
        )
        self.append(entry, error=ServerError)
        return entry

    def append(self, entry: LedgerEntry,
               error: type[DevicetuneError] = ServerError) -> None:
        """Append an entry, refusing one that breaks append-only consistency."""
        self._check_round_number(entry.round, error)
        where = f"privacy ledger round {entry.round}"
        if entry.delta != self.delta:
            raise error(f"{where}: delta {entry.delta:g} differs from the ledger's "
                        f"{self.delta:g}")
        if not (entry.noise_multiplier >= 0 and entry.clip_norm > 0
                and 0 < entry.sampling_rate <= 1):
            raise error(f"{where}: noise_multiplier {entry.noise_multiplier}, clip_norm "
                        f"{entry.clip_norm} or sampling_rate {entry.sampling_rate} is out "
                        "of range")
        last = self.epsilons
        if entry.epsilon_rdp < last.rdp or entry.epsilon_pld < last.pld:
            raise error(f"{where}: epsilon went down (RDP {last.rdp} -> {entry.epsilon_rdp},"
                        f" PLD {last.pld} -> {entry.epsilon_pld}); a ledger only grows")
        self._entries.append(entry)

    def replay(self) -> RoundAccountant:
        """Rebuild the accountant by recording every entry's round again.

        Costs one PLD convolution per entry (about 2.5 ms at the default grid).

        Raises:
            ArtifactError: a recomputed epsilon disagrees with the recorded one.
        """
        accountant = self.new_accountant()
        for entry in self._entries:
            spent = accountant.record(entry.noise_multiplier, entry.sampling_rate)
            for name in ACCOUNTANTS:
                recorded, computed = entry.epsilons.of(name), spent.of(name)
                if not _close(recorded, computed):
                    raise ArtifactError(
                        f"privacy ledger round {entry.round}: recorded {name.upper()} "
                        f"epsilon {recorded} but its rounds give {computed}; the ledger "
                        "was edited or written with other accounting settings")
        accountant.at_least(self.epsilons)
        return accountant

    def to_dict(self) -> dict[str, Any]:
        """The ledger as a JSON-able dict, for the server's state file."""
        return {
            "format": LEDGER_FORMAT,
            "delta": self.delta,
            "value_discretization_interval": self.value_discretization_interval,
            "entries": [entry.to_dict() for entry in self._entries],
        }

    @classmethod
    def from_dict(cls, raw: Any) -> PrivacyLedger:
        """Load a ledger written by `to_dict`.

        Raises:
            ArtifactError: the ledger is malformed or not append-only consistent.
        """
        if not isinstance(raw, dict) or raw.get("format") != LEDGER_FORMAT:
            raise ArtifactError(f"not a privacy ledger (expected format {LEDGER_FORMAT})")
        try:
            delta = float(raw["delta"])
            interval = float(raw["value_discretization_interval"])
            entries = list(raw["entries"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"privacy ledger header is malformed ({exc})") from None
        try:
            ledger = cls(delta, value_discretization_interval=interval)
        except ConfigError as exc:
            raise ArtifactError(f"privacy ledger header: {exc}") from None
        for item in entries:
            ledger.append(LedgerEntry.from_dict(item), error=ArtifactError)
        return ledger

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the ledger alone to ``path`` atomically (the server embeds it instead)."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PrivacyLedger:
        """Read a ledger written by `save`."""
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ArtifactError(f"{path}: no privacy ledger there") from None
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{path}: cannot read the privacy ledger ({exc})") from None
        return cls.from_dict(raw)

    def _check_round_number(self, server_round: int,
                            error: type[DevicetuneError]) -> None:
        if self._entries and server_round <= self._entries[-1].round:
            raise error(f"privacy ledger: round {server_round} does not come after round "
                        f"{self._entries[-1].round}; entries are append-only")


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"round must be an integer, got {value!r}")
    return value


def _epsilon(value: Any) -> float:
    if value is None:
        return math.inf
    number = float(value)
    if math.isnan(number) or number < 0:
        raise ValueError(f"epsilon must be >= 0 or null, got {value!r}")
    return number


def _close(recorded: float, computed: float) -> bool:
    if math.isinf(recorded) or math.isinf(computed):
        return recorded == computed
    return abs(recorded - computed) <= _REPLAY_RTOL * max(1.0, abs(recorded))


__all__ = ["LEDGER_FORMAT", "LedgerEntry", "PrivacyLedger"]
