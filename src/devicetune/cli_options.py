"""Arguments and options that several `devicetune` commands share."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ConfigArg = Annotated[Path, typer.Argument(help="A devicetune TOML config file.")]
OutOpt = Annotated[Path, typer.Option("--out", help="Output folder.")]
DataOpt = Annotated[
    Path | None,
    typer.Option("--data", help="Folder of the datasets (default: $DEVICETUNE_DATA, "
                 "else ../shared/datasets if it exists, else the folder `devicetune data "
                 "download` writes to)."),
]
