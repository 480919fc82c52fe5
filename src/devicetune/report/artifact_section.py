"""The report's artifact section: what the devices ran, as a release reviewer reads it.

From the run's ``artifacts/`` (the build `simulate` or `serve` made): each file with
its size and the sha256 the manifest lists, whether the folder is signed, the parity
checks against TensorFlow, and the TFLite signatures an app calls.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from devicetune.report.sections import Detail, Section

SIGNATURE_FILE = "model.sig"


def artifact_section(run_path: Path) -> Section | None:
    """The section for ``run_path/artifacts``, or None when the run has no build there
    (run with ``--artifacts`` elsewhere); a manifest that does not parse is said so."""
    folder = run_path / "artifacts"
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return Section("artifacts", "What the devices ran",
                       f"artifacts/manifest.json cannot be read ({exc}).")
    parity = _read(folder / "parity.json")
    files = manifest.get("files") or {}
    rows = tuple((name, _size(folder / name), str(digest)[:16])
                 for name, digest in sorted(files.items()))
    checks = parity.get("checks", []) if parity else []
    passed = sum(bool(c.get("passed")) for c in checks)
    worst = max(checks, key=_share_of_tolerance, default=None)
    signed = (folder / SIGNATURE_FILE).is_file()
    lead = (f"{manifest.get('name', '?')} version {manifest.get('version', '?')}: "
            f"{len(files)} files listed in manifest.json with their sha256"
            f"{', quantized ' + str(manifest['quantize']) if manifest.get('quantize') not in (None, 'none') else ''}; "  # noqa: E501
            + (f"signed ({SIGNATURE_FILE}). " if signed else
               "not signed (`devicetune sign` before shipping). ")
            + (f"Parity with TensorFlow: {passed} of {len(checks)} checks passed"
               + (f", the closest to its tolerance {worst['name']} at "
                  f"{100 * _share_of_tolerance(worst):.0f}% of it" if worst else "")
               + f", on {parity.get('inputs', 'inputs not recorded')}."
               if parity else "No parity.json: the build's parity was not recorded."))
    details = [Detail("Files (manifest.json)", ("file", "bytes", "sha256 (first 16)"), rows)]
    if checks:
        details.append(Detail(
            "Parity checks against TensorFlow", ("check", "max |diff|", "tolerance", "passed"),
            tuple((c.get("name", "?"), f"{c.get('max_abs_diff', float('nan')):.2e}",
                   f"{c.get('tolerance', float('nan')):.2e}",
                   "yes" if c.get("passed") else "NO") for c in checks),
            tuple("" if c.get("passed") else "harmed" for c in checks)))
    signatures = (manifest.get("tflite") or {}).get("signatures") or {}
    if signatures:
        details.append(Detail(
            "TFLite signatures the app calls", ("signature", "inputs", "outputs"),
            tuple((name, _tensors(sig.get("inputs")), _tensors(sig.get("outputs")))
                  for name, sig in sorted(signatures.items()))))
    return Section("artifacts", "What the devices ran", lead, None, tuple(details))


def _read(path: Path) -> dict[str, Any] | None:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def _size(path: Path) -> str:
    try:
        return f"{path.stat().st_size:,}"
    except OSError:
        return "missing"


def _share_of_tolerance(check: dict[str, Any]) -> float:
    diff, tolerance = check.get("max_abs_diff"), check.get("tolerance")
    if not isinstance(diff, int | float) or not isinstance(tolerance, int | float):
        return 0.0
    return diff / tolerance if tolerance > 0 else 0.0


def _tensors(entries: Any) -> str:
    if not isinstance(entries, list):
        return "–"
    return ", ".join(f"{e.get('name')} {e.get('dtype')}{list(e.get('shape', []))}"
                     for e in entries if isinstance(e, dict))
