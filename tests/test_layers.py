"""The package's layers import downwards only: ``simulate`` is the top, the server never
imports it, and ``device/`` (what a phone runs) never climbs into ``export/`` (what
builds). Read from the source (every import, also those inside functions), so a lazy
import cannot hide a circle."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "devicetune"


def _imports(folder: str, root: Path = SRC) -> dict[str, set[str]]:
    """Module file -> the devicetune modules it imports anywhere in its body."""
    found: dict[str, set[str]] = {}
    for path in sorted((root / folder).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
                names.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
        found[str(path.relative_to(root))] = {n for n in names if n.startswith("devicetune")}
    return found


def _offenders(folder: str, forbidden: str, root: Path = SRC) -> list[str]:
    return [f"{module} imports {name}" for module, names in _imports(folder, root).items()
            for name in sorted(names) if name == forbidden or name.startswith(forbidden + ".")]


def test_the_server_never_imports_the_simulation() -> None:
    assert _offenders("server", "devicetune.fleet.simulate") == []


def test_devices_never_import_the_builders() -> None:
    assert _offenders("device", "devicetune.export") == []


def test_no_fleet_module_but_simulate_imports_the_server() -> None:
    below = [o for o in _offenders("fleet", "devicetune.server")
             if not o.startswith("fleet/simulate.py")]
    assert below == []


def test_the_check_sees_a_lazy_import(tmp_path: Path) -> None:
    """The check reads imports inside functions, where this package keeps heavy ones."""
    (tmp_path / "server").mkdir()
    (tmp_path / "server" / "apps.py").write_text(
        "def f():\n    from devicetune.fleet.simulate import open_runtimes\n")
    assert _offenders("server", "devicetune.fleet.simulate", tmp_path) == [
        "server/apps.py imports devicetune.fleet.simulate",
        "server/apps.py imports devicetune.fleet.simulate.open_runtimes"]
