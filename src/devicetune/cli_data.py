"""`devicetune data`: inspect a team's file or a fleet; fetch the public datasets.

Part of the thin CLI (see `devicetune.cli`): parse, call the library, print.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from devicetune.cli_options import DataOpt

data_app = typer.Typer(help="Datasets: inspect a team's file or a fleet; fetch the public "
                       "originals of the real ones.", no_args_is_help=True,
                       suggest_commands=False)


@data_app.command("inspect")
def data_inspect(
    target: Annotated[Path, typer.Argument(
        help="A data file (.csv, .parquet, .npz) or a devicetune config (.toml).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    test_fraction: Annotated[float | None, typer.Option(
        help="Share of each user's latest rows that personalization is tested on "
        "(default: the config's, else 0.5).")] = None,
    user_column: Annotated[str, typer.Option(help="A file's user column.")] = "user",
    label_column: Annotated[str, typer.Option(help="A file's label column.")] = "label",
    time_column: Annotated[str | None, typer.Option(
        help="A file's time column (default: 'time' if present).")] = None,
    limit: Annotated[int, typer.Option(help="Describe at most this many users.")] = 1000,
    data: DataOpt = None,
) -> None:
    """Users, rows, classes, missing and constant columns, and how many people's past
    lacks classes their future has (the split that decides whether personalization can
    work)."""
    import json

    from devicetune.config import DataFileFields, resolve_data_dir
    from devicetune.data.inspect import inspect_config, inspect_file
    from devicetune.errors import ConfigError

    if test_fraction is not None and not 0 < test_fraction < 1:
        raise ConfigError(f"--test-fraction {test_fraction}: must be between 0 and 1")
    if not target.is_file():
        raise ConfigError(f"{target}: no such file")
    if target.suffix.lower() not in (".toml", ".csv", ".parquet", ".npz"):
        raise ConfigError(f"{target}: data inspect takes a .csv, .parquet or .npz data "
                          "file, or a .toml config")
    if target.suffix.lower() == ".toml":
        result = inspect_config(target, resolve_data_dir(data), test_fraction, limit)
    else:
        from pydantic import ValidationError

        from devicetune.config import describe_validation_error

        try:
            spec = DataFileFields(path=target, user_column=user_column,
                                  label_column=label_column, time_column=time_column)
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(exc, None)) from None
        result = inspect_file(spec, 0.5 if test_fraction is None else test_fraction, limit)
    if as_json:
        print(json.dumps(result.to_dict()))
        return
    from devicetune.report.console import print_inspection

    print_inspection(result)


@data_app.command("download")
def data_download(
    name: Annotated[str, typer.Argument(help="har (UCI HAR, 30 people) or fsdd (spoken "
                                        "digits, 6 speakers).")],
    to: Annotated[Path | None, typer.Option(
        "--to", help="Folder to write har.npz / fsdd.npz into (default: $DEVICETUNE_DATA, "
        "else $XDG_DATA_HOME/devicetune/datasets, i.e. ~/.local/share/devicetune/datasets)."
    )] = None,
    url: Annotated[str | None, typer.Option(
        help="Download from this mirror instead of the original URL.")] = None,
    sha256: Annotated[str | None, typer.Option(
        help="The archive's expected sha256 (default: the pinned value).")] = None,
) -> None:
    """Fetch a dataset's public original, check its sha256, convert it to .npz."""
    import re

    from devicetune.config import download_dir
    from devicetune.data.download import DATASETS, download_dataset
    from devicetune.errors import ConfigError
    from devicetune.report.transfer import transfer_progress

    if name not in DATASETS:
        raise ConfigError(f"data download {name!r}: choose one of {', '.join(DATASETS)}")
    if sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise ConfigError(f"--sha256 {sha256!r}: expected 64 hexadecimal digits")
    if url is not None and not url.startswith(("http://", "https://")):
        raise ConfigError(f"--url {url!r}: expected an http:// or https:// URL")
    download_dataset(name, download_dir(to), url=url, sha256=sha256,
                     say=lambda line: print(line, flush=True),
                     progress=transfer_progress())
