from __future__ import annotations

from pathlib import Path

import pytest

from devicetune.config import DevicetuneConfig, load_config, parse_config, to_toml
from devicetune.errors import ConfigError
from tests.conftest import run_cli

PROJECT_ROOT = Path(__file__).resolve().parents[1]

BUILD = """
name = "har"
[model]
classes = ["walk", "up", "down", "sit", "stand", "lie"]
input_shape = [128, 9]
batch_size = 8
[model.backbone]
architecture = "conv1d_small"
[model.backbone.pretrain]
dataset = "har"
subjects = "1-15"
epochs = 3
[model.head]
type = "mlp"
hidden_units = 32
[model.optimizer]
name = "sgd"
learning_rate = 0.05
momentum = 0.9
[export]
coreml = true
dp_clip_norm = 0.5
"""

FLEET = """
[fleet]
devices = 30
platform_mix = { android = 0.5, ios = 0.5 }
tiers = [{ name = "fast", share = 0.4, speed = 1.0 }, { name = "slow", share = 0.6, speed = 0.4 }]
availability = 0.9
[fleet.data]
source = "har"
subjects = "16-30"
"""

SERVER = """
[server]
rounds = 3
devices_per_round = 5
min_devices = 3
strategy = "fedtrimmedavg"
port = 9500
secagg = true
"""

PRIVACY = """
[privacy]
mode = "adaptive"
noise_multiplier = 1.1
max_epsilon = 8.0
accountant = "pld"
[privacy.device]
enabled = true
"""

EMIT = """
[emit]
enabled = true
registry = "registry"
private_key = "keys/private.pem"
max_regression = 0.01
"""


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "check"),
    [
        (BUILD, lambda c: c.model.head.type == "mlp" and c.model.backbone.pretrain.subjects
         == list(range(1, 16)) and c.export.dp_clip_norm == 0.5),
        (FLEET, lambda c: c.fleet.devices == 30 and c.fleet.data.subjects[-1] == 30
         and c.fleet.tiers[1].speed == 0.4),
        (SERVER, lambda c: c.server.strategy == "fedtrimmedavg" and c.server.secagg),
        (PRIVACY, lambda c: c.privacy.mode == "adaptive" and c.privacy.device.enabled),
        (EMIT, lambda c: c.emit.enabled and c.emit.registry.is_absolute()),
    ],
    ids=["build", "fleet", "server", "privacy", "emit"],
)
def test_valid_config_of_each_kind_loads(tmp_path: Path, text: str, check) -> None:
    config = load_config(write(tmp_path, text))
    assert isinstance(config, DevicetuneConfig)
    assert check(config)


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    config = load_config(write(tmp_path / "sub", EMIT))
    assert config.emit.registry == (tmp_path / "sub" / "registry").resolve()


def test_every_shipped_simulation_config_loads() -> None:
    configs = sorted((PROJECT_ROOT / "simulations").glob("*.toml"))
    assert configs, "simulations/ holds no configs"
    for path in configs:
        load_config(path)


def test_resolved_config_round_trips_through_toml(tmp_path: Path) -> None:
    android_fleet = FLEET.replace("android = 0.5, ios = 0.5", "android = 1.0")
    config = load_config(write(tmp_path, BUILD + android_fleet + SERVER + PRIVACY))
    again = load_config(write(tmp_path, to_toml(config), "resolved.toml"))
    assert again.model == config.model
    assert again.fleet == config.fleet
    assert again.privacy == config.privacy


MALFORMED = [
    # (config text, the field the message must name, words it must contain)
    ("[fleet]\ndevices = -3\n", "fleet.devices", "-3"),
    ("[fleet]\ndevices = 10\ncolour = 'red'\n", "fleet.colour", "allowed in [fleet]"),
    (BUILD.replace('type = "mlp"', 'type = "transformer"'), "model.head.type",
     "'linear' or 'mlp'"),
    (BUILD.replace('name = "sgd"', 'name = "rmsprop"'), "model.optimizer.name", "'adam'"),
    (BUILD.replace("learning_rate = 0.05", "learning_rate = 0"),
     "model.optimizer.learning_rate", "greater than 0"),
    (BUILD.replace('architecture = "conv1d_small"', 'architecture = "resnet"'),
     "model.backbone.architecture", "conv1d_small"),
    (BUILD.replace('architecture = "conv1d_small"', ""), "model.backbone",
     "exactly one"),
    (FLEET.replace("android = 0.5", "android = 0.9"), "fleet.platform_mix",
     "sum to 1"),
    (SERVER.replace("min_devices = 3", "min_devices = 9"), "server", "min_devices"),
    (PRIVACY.replace('accountant = "pld"', 'accountant = "moments"'),
     "privacy.accountant", "'rdp' or 'pld'"),
    ("[privacy]\ndelta = 2.0\n", "privacy.delta", "less than 1"),
    (BUILD.replace('subjects = "1-15"', 'subjects = "1-x"'),
     "model.backbone.pretrain.subjects", "1-x"),
    ("[fleet]\n", "fleet.devices", "required"),
    ('name = "Has Spaces"\n', "name", "Has Spaces"),
    ("[emit]\nenabled = true\n", "emit", "registry"),
    ("[fleet]\ndevices = 3\n[server]\nproximal_mu = 0.1\n", "(top level)", "all-android"),
    (BUILD.replace('"lie"]', '"walk"]'), "model.classes", "unique"),
]


@pytest.mark.parametrize(("text", "field", "words"), MALFORMED,
                         ids=[m[1] + f"-{i}" for i, m in enumerate(MALFORMED)])
def test_malformed_config_fails_with_one_line_naming_file_and_field(
    tmp_path: Path, text: str, field: str, words: str
) -> None:
    path, message = _one_line_error(tmp_path, text)
    assert message.startswith(str(path))
    assert field in message
    assert words in message


UNKNOWN_FIRST = [
    # A typo'd section also makes the real one look missing: the typo is named first.
    ('[model]\nclasses = ["a", "b"]\n[fleat]\ndevices = 3\n',
     "unknown section [fleat] (did you mean 'fleet'?)"),
    ("[fleet]\ndevices = 0\ndevise = 4\n",
     "unknown key fleet.devise (did you mean 'devices'?); allowed in [fleet]: "),
    ("[fleet]\ndevices = 3\n[fleet.personalisation]\nepochs = 3\n",
     "unknown section [fleet.personalisation] (did you mean 'personalization'?)"),
    ("[server]\nzzz = 1\n", "unknown key server.zzz; allowed in [server]: "),
]


@pytest.mark.parametrize(("text", "words"), UNKNOWN_FIRST)
def test_unknown_keys_and_sections_are_reported_first_with_a_suggestion(
    tmp_path: Path, text: str, words: str
) -> None:
    path, message = _one_line_error(tmp_path, text)
    assert message.startswith(f"{path}: {words}"), message


def _one_line_error(tmp_path: Path, text: str) -> tuple[Path, str]:
    """The config file of ``text`` and the error loading it gives, checked to be one line."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    return path, message


def test_not_toml_names_the_file_and_position(tmp_path: Path) -> None:
    path = write(tmp_path, "[fleet\ndevices = 3\n")
    with pytest.raises(ConfigError, match=r"not valid TOML.*line 1"):
        load_config(path)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.toml")


def test_require_names_the_missing_section(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, SERVER))
    with pytest.raises(ConfigError, match=r"section \[fleet\] is required by devicetune sim"):
        config.require("fleet", command="devicetune simulate")


UNBOUNDED = [
    # (config text, the field the message must name, words it must contain): each was
    # accepted before, silently (inf, huge, bool or string for a number)
    ("[server]\nround_timeout_s = inf\n", "server.round_timeout_s", "finite"),
    ("[server]\nround_timeout_s = 1e308\n", "server.round_timeout_s", "less than"),
    ("[server]\nmax_update_norm = inf\n", "server.max_update_norm", "finite"),
    ("[server]\nserver_learning_rate = inf\n", "server.server_learning_rate", "finite"),
    ("[server]\nserver_learning_rate = nan\n", "server.server_learning_rate", "finite"),
    ("[privacy]\nnoise_multiplier = inf\n", "privacy.noise_multiplier", "finite"),
    ("[fleet]\ndevices = true\n", "fleet.devices", "not true/false"),
    ('[fleet]\ndevices = "5"\n', "fleet.devices", "not a string"),
    ("[fleet]\ndevices = 5.5\n", "fleet.devices", "integer"),
    ("[fleet]\ndevices = 5\navailability = true\n", "fleet.availability", "true/false"),
    ("[server]\nsecagg = 1\n", "server.secagg", "true or false"),
    ("[server]\ndevices_per_round = 1_000_000_000_000\n", "server.devices_per_round",
     "less than"),
    ("[fleet]\ndevices = 5\neval_devices = 10_000_000_000_000\n", "fleet.eval_devices",
     "less than"),
    ("[server]\nmax_retries = 1_000_000_000_000_000\n", "server.max_retries", "less than"),
    ("seed = 1e23\n", "seed", "integer"),
    ("seed = 100_000_000_000_000_000_000\n", "seed", "less than"),
]


@pytest.mark.parametrize(("text", "field", "words"), UNBOUNDED,
                         ids=[f"{m[1]}-{i}" for i, m in enumerate(UNBOUNDED)])
def test_numbers_are_finite_bounded_and_of_their_own_type(
    tmp_path: Path, text: str, field: str, words: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path))
    assert field in message and words in message, message


def test_deeply_nested_values_are_one_line_not_a_recursion_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, "seed = " + "[" * 5000 + "]" * 5000 + "\n")
    result = run_cli("fleet", str(path))
    assert result.returncode == 2, result.stderr[-500:]
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "nested too deeply" in result.stderr and str(path) in result.stderr
    # In process, whether this recurses past the limit depends on the stack already in use
    # (and on libraries that raise the limit); either way it is one ConfigError.
    with pytest.raises(ConfigError, match="nested too deeply|seed = .*must be a valid integer"):
        parse_config({"seed": nested(3000)})


def nested(depth: int) -> list:  # type: ignore[type-arg]
    value: list = []  # type: ignore[type-arg]
    for _ in range(depth):
        value = [value]
    return value
