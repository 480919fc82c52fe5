from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from devicetune.errors import ArtifactError, ServerError
from devicetune.privacy.accounting import RoundAccountant
from devicetune.privacy.ledger import PrivacyLedger

DELTA = 1e-5


def _run(ledger: PrivacyLedger, accountant: RoundAccountant, rounds: range,
         noise: float = 1.0, q: float = 0.02) -> list[float]:
    spent = []
    for server_round in rounds:
        entry = ledger.record(accountant, server_round=server_round, noise_multiplier=noise,
                              clip_norm=0.5, sampling_rate=q, gate_accountant="pld")
        spent.append(entry.epsilon_pld)
    return spent


def _ledger_dict(rounds: int = 12) -> dict[str, Any]:
    ledger = PrivacyLedger(DELTA)
    _run(ledger, ledger.new_accountant(), range(1, rounds + 1))
    return json.loads(json.dumps(ledger.to_dict()))


def test_entries_record_what_ran_and_epsilon_after_it() -> None:
    ledger = PrivacyLedger(DELTA)
    accountant = ledger.new_accountant()
    _run(ledger, accountant, range(1, 4))
    entry = ledger.entries[-1]
    assert (entry.round, entry.noise_multiplier, entry.clip_norm, entry.sampling_rate,
            entry.accountant, entry.delta) == (3, 1.0, 0.5, 0.02, "pld", DELTA)
    assert entry.epsilons == accountant.epsilons()
    assert entry.timestamp.endswith("+00:00")


def test_a_crash_and_resume_continue_the_same_epsilon(tmp_path: Path) -> None:
    # Uninterrupted run of 30 rounds.
    straight = PrivacyLedger(DELTA)
    expected = _run(straight, straight.new_accountant(), range(1, 31))

    # The same run, "killed" after round 18: only the committed file survives.
    state = tmp_path / "state" / "privacy.json"
    first = PrivacyLedger(DELTA)
    accountant = first.new_accountant()
    for server_round in range(1, 19):
        _run(first, accountant, range(server_round, server_round + 1))
        first.save(state)  # committed atomically each round
    before_crash = accountant.epsilons()
    del first, accountant

    committed = json.loads(state.read_text())
    resumed = PrivacyLedger.load(state)
    assert resumed.to_dict() == committed
    accountant = resumed.replay()
    assert accountant.rounds == 18 and accountant.epsilons() == before_crash
    after = _run(resumed, accountant, range(19, 31))
    assert [e.epsilon_pld for e in resumed.entries[:18]] + after == expected
    assert [e.epsilons for e in resumed.entries] == [e.epsilons for e in straight.entries]
    assert accountant.epsilons() == straight.epsilons


def test_the_dict_survives_json_unchanged() -> None:
    raw = _ledger_dict()
    assert PrivacyLedger.from_dict(raw).to_dict() == raw
    assert raw["format"] == "devicetune.privacy-ledger/1" and len(raw["entries"]) == 12


def test_no_noise_is_stored_as_null_epsilon() -> None:
    ledger = PrivacyLedger(DELTA)
    _run(ledger, ledger.new_accountant(), range(1, 3), noise=0.0)
    raw = json.loads(json.dumps(ledger.to_dict(), allow_nan=False))  # strict JSON
    assert raw["entries"][-1]["epsilon_rdp"] is None
    loaded = PrivacyLedger.from_dict(raw)
    assert math.isinf(loaded.epsilons.pld) and math.isinf(loaded.replay().epsilons().rdp)


def _edit(raw: dict[str, Any], index: int, **fields: Any) -> dict[str, Any]:
    raw["entries"][index].update(fields)
    return raw


@pytest.mark.parametrize("tamper", [
    lambda raw: _edit(raw, 5, round=4),  # a round number repeated
    lambda raw: _edit(raw, 5, round=3),  # going backwards
    lambda raw: _edit(raw, 5, epsilon_rdp=raw["entries"][4]["epsilon_rdp"] - 1e-6),
    lambda raw: _edit(raw, 11, epsilon_pld=0.0),
    lambda raw: _edit(raw, 2, delta=1e-6),
    lambda raw: _edit(raw, 2, clip_norm=0),
    lambda raw: _edit(raw, 2, accountant="gdp"),
    lambda raw: _edit(raw, 2, round="3"),
    lambda raw: {**raw, "format": "something else"},
    lambda raw: {**raw, "delta": "tiny"},
    lambda raw: raw["entries"][0].pop("timestamp") and raw,
])
def test_loading_refuses_a_ledger_that_is_not_append_only_consistent(tamper) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ArtifactError):
        PrivacyLedger.from_dict(tamper(_ledger_dict()))


def test_replay_refuses_an_edited_epsilon_that_still_looks_consistent() -> None:
    raw = _ledger_dict()
    raw["entries"][-1]["epsilon_rdp"] *= 1.001  # still grows, but no longer true
    ledger = PrivacyLedger.from_dict(raw)
    with pytest.raises(ArtifactError, match="round 12"):
        ledger.replay()


def test_recording_refuses_a_stale_round_and_leaves_the_accountant_alone() -> None:
    ledger = PrivacyLedger(DELTA)
    accountant = ledger.new_accountant()
    _run(ledger, accountant, range(1, 4))
    with pytest.raises(ServerError, match="append-only"):
        _run(ledger, accountant, range(3, 4))
    assert accountant.rounds == 3 and len(ledger.entries) == 3
    with pytest.raises(ServerError, match="out of step"):
        _run(ledger, RoundAccountant(DELTA), range(4, 5))


def test_load_names_a_missing_or_corrupt_file(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="no privacy ledger"):
        PrivacyLedger.load(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{ half")
    with pytest.raises(ArtifactError, match="cannot read"):
        PrivacyLedger.load(tmp_path / "bad.json")
