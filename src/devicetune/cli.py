"""The `devicetune` command: parse, load config, call the library, print.

Heavy libraries (TensorFlow, coremltools, Ray, Flower's simulation) are imported inside
the commands that need them, so `devicetune --help` answers at once. A user error
prints one line and exits with code 2.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer

from devicetune.cli_data import data_app
from devicetune.cli_options import ConfigArg, DataOpt, OutOpt
from devicetune.cli_registry import registry_app
from devicetune.errors import DevicetuneError

_python_showwarning = warnings.showwarning

app = typer.Typer(
    name="devicetune",
    help="On-device personalization: build the models apps ship, simulate a fleet "
    "fine-tuning them, and serve the federated aggregation that emits new versions.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    suggest_commands=False,  # Click itself suggests; Typer's would say it twice
)
keys_app = typer.Typer(help="Key pairs that sign and verify model versions.",
                       no_args_is_help=True, suggest_commands=False)
privacy_app = typer.Typer(help="Differential privacy planning.", no_args_is_help=True,
                          suggest_commands=False)
app.add_typer(data_app, name="data")
app.add_typer(keys_app, name="keys")
app.add_typer(privacy_app, name="privacy")
app.add_typer(registry_app, name="registry")


def _quiet_tensorflow() -> None:
    """Import TensorFlow with its C++ start-up chatter (CPU features, CUDA probing,
    oneDNN notes) kept off the user's terminal; errors still surface as exceptions."""
    if "tensorflow" in sys.modules:
        return
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@app.command()
def fleet(config: ConfigArg, data: DataOpt = None,
          limit: Annotated[int | None, typer.Option(help="Summarize the first N devices.")]
          = None) -> None:
    """Summarize the fleet a config describes: sizes, label mixes, personal styles."""
    from devicetune.config import load_config, resolve_data_dir
    from devicetune.data import SyntheticFleet, open_fleet_data, summarize, summarize_synthetic
    from devicetune.report.console import print_fleet_summary

    cfg = load_config(config)
    cfg.require("fleet", command="devicetune fleet")
    assert cfg.fleet is not None
    source = open_fleet_data(cfg.fleet, cfg.seed, resolve_data_dir(data),
                             class_names=cfg.model.classes if cfg.model else None)
    ids = range(source.devices if limit is None else min(limit, source.devices))
    if isinstance(source, SyntheticFleet):
        summary = summarize_synthetic(source, ids)
    else:
        summary = summarize(((k, source.device(k)) for k in ids), len(source.class_names))
    print_fleet_summary(summary, title=f"{cfg.name}: {cfg.fleet.data.source} fleet")


@app.command()
def build(config: ConfigArg, out: OutOpt, data: DataOpt = None) -> None:
    """Build the TFLite and Core ML models an app ships, with a parity report."""
    from devicetune.config import load_config, resolve_data_dir

    cfg = load_config(config)
    _quiet_tensorflow()
    from devicetune.export.build import build as build_artifacts
    from devicetune.report.console import console, print_build

    if console.is_terminal:
        with console.status("building") as status:
            result = build_artifacts(cfg, out, resolve_data_dir(data),
                                     progress=lambda step: status.update(step))
    else:  # a log or a pipe: each step as a plain line
        result = build_artifacts(cfg, out, resolve_data_dir(data),
                                 progress=lambda step: print(step, file=sys.stderr,
                                                             flush=True))
    print_build(result)


@app.command()
def simulate(
    config: ConfigArg, out: OutOpt, data: DataOpt = None,
    engine: Annotated[str, typer.Option(
        help="inline: each device runs the artifacts in turn; vectorized: a round's "
        "devices train as one batch (same math); ray: vectorized, in shards on Ray "
        "workers; flower: Flower's Simulation Engine.")]
    = "inline",
    artifacts: Annotated[Path | None, typer.Option(
        help="Run this `devicetune build` folder instead of building one.")] = None,
    ray_address: Annotated[str | None, typer.Option(
        help="--engine ray or flower on a Ray cluster: its head's HOST:PORT (default: "
        "$RAY_ADDRESS, else a local Ray).")] = None,
    overwrite: Annotated[bool, typer.Option(
        help="Replace the run already in --out (default: refuse a non-empty folder).")]
    = False,
) -> None:
    """Simulate a fleet of phones federating and personalising the exported artifacts."""
    from devicetune.config import load_config, resolve_data_dir
    from devicetune.run_files import clear_run_folder

    cfg = load_config(config)
    clear_run_folder(out, overwrite=overwrite, keep=artifacts)
    ios = cfg.fleet is not None and cfg.fleet.platform_mix.get("ios", 0.0) > 0
    if artifacts is None or engine == "flower" or ios:
        _quiet_tensorflow()  # building, Flower's simulation, coremltools: all import TF
    from devicetune.fleet.simulate import simulate as run_simulation
    from devicetune.report.console import RichProgress, print_simulation

    with RichProgress() as progress:
        result = run_simulation(cfg, out, resolve_data_dir(data), engine=engine,
                                artifacts=artifacts, progress=progress,
                                ray_address=ray_address or os.environ.get("RAY_ADDRESS"))
    if result.summary.get("rounds_aggregated") == 0 and result.summary.get("rounds_run"):
        from devicetune.errors import ServerError

        raise ServerError(f"{out}: {result.summary['stopped']}")
    print_simulation(result)


@app.command()
def serve(config: ConfigArg, out: OutOpt,
          resume: Annotated[bool, typer.Option(help="Continue from the last round.")] = False,
          artifacts: Annotated[Path | None, typer.Option(
              help="Serve this `devicetune build` folder instead of building one.")] = None,
          data: DataOpt = None) -> None:
    """Run the federated aggregation server (a Flower SuperLink and ServerApp)."""
    from devicetune.config import resolve_data_dir
    from devicetune.server.serve import serve as run_serve

    if artifacts is None and not resume:
        _quiet_tensorflow()  # it builds the artifacts first
    run_serve(config, out, resolve_data_dir(data), resume=resume, artifacts=artifacts,
              say=lambda line: print(line, flush=True))


@app.command()
def device(config: ConfigArg,
           superlink: Annotated[str, typer.Option(help="HOST:PORT of the SuperLink.")],
           device_id: Annotated[int, typer.Option(help="Which simulated device to be.")],
           artifacts: Annotated[Path | None, typer.Option(
               help="The build this device runs (default: the server's).")] = None,
           data: DataOpt = None,
           auth_key: Annotated[Path | None, typer.Option(
               help="This device's private key (device-K from `devicetune keys "
               "devices`), when the server authenticates SuperNodes.")] = None,
           patience_s: Annotated[float, typer.Option(
               help="Exit once the SuperLink has not answered for this many seconds "
               "(the federation finished, or no server came).")] = 120.0) -> None:
    """Run one simulated device as a Flower SuperNode."""
    from devicetune.server.device import become_device, device_argv

    argv, env = device_argv(config, superlink, device_id, artifacts, data, auth_key,
                            patience_s)
    print(f"device {device_id}: a SuperNode of {superlink}", flush=True)
    become_device(argv, env)


@app.command()
def verify(folder: Annotated[Path, typer.Argument(help="A model folder.")],
           public_key: Annotated[Path, typer.Option(help="PEM public key.")]) -> None:
    """Verify a model folder's signature and hashes (exit 0 valid, 2 not)."""
    from devicetune.artifacts.signing import verify_folder

    manifest = verify_folder(folder, public_key)
    print(f"valid: {manifest.name} version {manifest.version}, "
          f"{len(manifest.files) + 1} files signed by {public_key}")


@app.command()
def sign(folder: Annotated[Path, typer.Argument(help="A model folder.")],
         private_key: Annotated[Path, typer.Option(help="PEM private key.")]) -> None:
    """Sign a model folder in the OpenSSF model-signing format."""
    from devicetune.artifacts.signing import sign_folder

    print(f"signed: {sign_folder(folder, private_key)}")


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="A simulate or serve run folder.")]
           ) -> None:
    """Write report.html and plots for a run folder."""
    from devicetune.report.console import print_report
    from devicetune.report.write import write_report

    print_report(write_report(run_dir))


@keys_app.command("generate")
def keys_generate(out: OutOpt) -> None:
    """Generate an EC key pair for signing model versions."""
    from devicetune.artifacts.keys import generate_key_pair

    pair = generate_key_pair(out)
    print(f"private key: {pair.private_key} (keep it secret)\npublic key:  {pair.public_key}")


@keys_app.command("devices")
def keys_devices(out: OutOpt, devices: Annotated[int, typer.Option(
        help="How many devices (0..N-1).")]) -> None:
    """Generate a SuperNode key pair per device (for server.device_keys)."""
    from devicetune.server.device_keys import generate_device_keys

    written = generate_device_keys(out, devices)
    print(f"{len(written)} device keys in {out}: device-K (private, for device K only) "
          "and device-K.pub (set server.device_keys to this folder)")


@privacy_app.command("plan")
def privacy_plan(
    epsilon: Annotated[float | None, typer.Option(help="Target epsilon.")] = None,
    delta: Annotated[float, typer.Option(help="Target delta.")] = 1e-5,
    rounds: Annotated[int | None, typer.Option(help="Federated rounds.")] = None,
    sampling_rate: Annotated[float, typer.Option(help="Devices per round / population.")]
    = 0.01,
    noise_multiplier: Annotated[float | None, typer.Option(help="Given noise.")] = None,
) -> None:
    """Noise multiplier for a privacy target, or rounds allowed for a given noise."""
    from devicetune.errors import ConfigError

    if epsilon is None:
        raise ConfigError("--epsilon is required: the target epsilon")
    if (rounds is None) == (noise_multiplier is None):
        raise ConfigError("give --rounds (to plan the noise multiplier) or "
                          "--noise-multiplier (to plan the rounds), not both or neither")
    import logging

    from devicetune.privacy.planning import format_plan, plan

    # dp-accounting logs through absl when it drops an RDP order that does not
    # converge; the bound stays valid, and the note is not for a user reading a plan.
    logging.getLogger("absl").setLevel(logging.ERROR)
    rows = plan(epsilon, delta, sampling_rate, rounds=rounds,
                noise_multiplier=noise_multiplier)
    typer.echo(format_plan(rows, epsilon, delta, sampling_rate))


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A devicetune warning is one line for the user; others keep Python's format."""
    from devicetune.errors import DevicetuneWarning

    if issubclass(category, DevicetuneWarning):
        print(f"warning: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


def main() -> None:
    """Entry point: user errors print one line and exit 2, without a traceback."""
    # TensorFlow's C++ start-up chatter (CPU features, CUDA probing) is not for users.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.showwarning = _show_warning
    try:
        app()
    except DevicetuneError as exc:
        message = " ".join(str(exc).split())
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
