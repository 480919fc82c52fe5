"""`devicetune device` gives up on a SuperLink that does not answer, and says why.

The closed-port case runs the real SuperNode against a real port nothing listens on.
(The other case, a SuperLink that answered and then went away, exits 0 with "went away
... the federation finished, or the server stopped": checked by hand with a real
SuperLink, which costs ~20 s more.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import PROJECT_ROOT, run_cli
from tests.server.conftest import free_port


def test_a_device_stops_when_no_superlink_answers_within_its_patience(tmp_path: Path
                                                                      ) -> None:
    port = free_port()  # bound, then closed: nothing listens there
    out, err = tmp_path / "device.out", tmp_path / "device.err"
    # Files, not pipes: Flower's SuperExec inherits them and leaves a moment later.
    with out.open("w") as stdout, err.open("w") as stderr:
        code = subprocess.run(
            [sys.executable, "-m", "devicetune", "device", "simulations/serve_local.toml",
             "--superlink", f"127.0.0.1:{port}", "--device-id", "0", "--patience-s", "2"],
            cwd=PROJECT_ROOT, stdout=stdout, stderr=stderr, timeout=300,
            env={**os.environ, "FLWR_HOME": str(tmp_path / "flwr")}).returncode
    lines = err.read_text().strip().splitlines()
    assert code == 3, lines[-5:]
    assert lines[-1] == (f"device 0: no SuperLink answered at 127.0.0.1:{port} within 2 s; "
                         "exiting (start `devicetune serve` first, or wait longer with "
                         "--patience-s)")
    assert "\x1b[" not in err.read_text()  # Flower's colours, off a terminal


def test_patience_must_be_positive() -> None:
    result = run_cli("device", "simulations/serve_local.toml", "--superlink",
                     "127.0.0.1:9092", "--device-id", "0", "--patience-s", "0")
    assert result.returncode == 2
    assert "--patience-s 0: must be above 0" in result.stderr
