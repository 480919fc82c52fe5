"""The Flower App's run config (`flwr run . --run-config ...`): what it overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from devicetune.config import load_config
from devicetune.errors import ConfigError
from devicetune.server.apps import AppSettings
from devicetune.server.federation import describe_round
from tests.conftest import PROJECT_ROOT

CONFIG = PROJECT_ROOT / "simulations" / "serve_local.toml"


def test_run_config_rounds_override_the_config_and_zero_keeps_it() -> None:
    config = load_config(CONFIG)
    base = {"config": str(CONFIG), "artifacts": "out/build"}
    five = AppSettings.from_run_config(base | {"rounds": 5})
    assert five.configured(config).server.rounds == 5
    assert five.configured(config).server.port == config.server.port  # the rest kept
    kept = AppSettings.from_run_config(base | {"rounds": 0})
    assert kept.configured(config).server.rounds == config.server.rounds == 2
    assert AppSettings.from_run_config(base).rounds == 0
    assert AppSettings.from_run_config(five.to_run_config()).rounds == 5


@pytest.mark.parametrize("bad", [-1, 2.5, "3", True])
def test_run_config_rounds_must_be_a_whole_number(bad: object) -> None:
    with pytest.raises(ConfigError, match="run config rounds"):
        AppSettings.from_run_config({"config": "c.toml", "artifacts": "a", "rounds": bad})


def test_a_round_line_reads_as_serve_prints_it() -> None:
    row = {"round": 2, "sampled": 3, "completed": 2, "dropped": 1, "rejected": 0,
           "global_accuracy": 0.9123, "wall_s": 4.26, "attempts": 2}
    assert describe_round(row, 5) == ("round 2/5: 2 of 3 devices aggregated, 1 dropped, "
                                      "0 rejected, after 1 retries; global accuracy 0.912 "
                                      "(4.3 s)")


def test_a_flwr_run_with_a_missing_build_fails_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The ServerApp as `flwr run` starts it (settings from the run config): a user
    error is one line on stderr, then an exception, so Flower records the run failed."""
    from flwr.app import Context, RecordDict

    from devicetune.server.apps import make_server_app

    app = make_server_app()
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                      run_config={"config": str(CONFIG), "artifacts": str(tmp_path / "nope"),
                                  "out": str(tmp_path / "run")})
    with pytest.raises(RuntimeError, match="no manifest in this model folder"):
        app._main(None, context)  # what Flower's ServerApp.__call__ runs
    err = capsys.readouterr().err
    manifest = tmp_path / "nope" / "manifest.json"
    assert err == f"error: {manifest}: no manifest in this model folder\n"
