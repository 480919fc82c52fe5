"""Every command README.md shows works as written, in order, on a fresh clone.

The extraction rule (for whoever adds commands to the README):

- Only blocks fenced with ```` ```sh ```` are commands; ```` ``` ````, ```` ```python ````,
  ```` ```toml ```` blocks (outputs, code, configs) are not run.
- One command per line; a trailing backslash continues it; ``# ...`` comments are dropped.
- ``<!-- readme-test: skip: REASON -->`` on the line right before the fence skips the
  block (a download, processes that must run at once, minutes of work); the test prints
  every skipped block with its reason.
- ``<!-- readme-test: with OLD=NEW -->`` there runs the block with OLD replaced by NEW
  in its arguments (a smaller config the README names beside the block).
- ``make ...`` is not run (it installs; the README shows the command ``make demo``
  runs, and that block is run); ``source .venv/bin/activate`` is a no-op (the test's
  ``devicetune`` is the venv's already). ``devicetune`` and ``.venv/bin/devicetune`` run
  as ``python -m devicetune`` of this interpreter, ``.venv/bin/python`` as it; any other
  command fails the test until a rule or a skip marker says what to do with it.

The blocks run in a ``git clone`` of this repository (its committed HEAD) in a temporary
folder, with ``DEVICETUNE_DATA`` set and the clone's ``src`` first on the path, and each
command must exit 0.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

MARKER = re.compile(r"^<!--\s*readme-test:\s*(skip|with)\s*:?\s*(.*?)\s*-->$")
INSTALLS = ("make is not run: it installs the venv (make demo's command runs in the "
            "simulate block; make test is this suite)")
# Start-up noise no command may print (TensorFlow's C++ logging, LiteRT's XNNPACK note).
NOISE = ("Created TensorFlow Lite XNNPACK delegate", "absl::InitializeLog", "oneDNN",
         "cuda drivers")


@dataclass
class Block:
    line: int  # 1-based line of the opening fence
    commands: list[str]
    skip: str | None = None
    replace: dict[str, str] = field(default_factory=dict)


def sh_blocks(text: str) -> list[Block]:
    """The ```sh blocks of a README, with their markers, in order."""
    blocks: list[Block] = []
    lines = text.splitlines()
    k = 0
    while k < len(lines):
        fence = lines[k].strip()
        if not fence.startswith("```"):
            k += 1
            continue
        lang, start, k = fence[3:].strip(), k, k + 1
        body: list[str] = []
        while k < len(lines) and lines[k].strip() != "```":
            body.append(lines[k])
            k += 1
        k += 1
        if lang != "sh":
            continue
        block = Block(start + 1, _commands(body))
        previous = lines[start - 1].strip() if start > 0 else ""
        if found := MARKER.match(previous):
            kind, rest = found.groups()
            if kind == "skip":
                block.skip = rest or "no reason given"
            else:
                block.replace = dict(pair.split("=", 1) for pair in rest.split())
        blocks.append(block)
    return blocks


def _commands(body: list[str]) -> list[str]:
    commands, pending = [], ""
    for raw in body:
        line = raw.rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        if text and not text.startswith("#"):
            commands.append(text)
    return commands


def argv_of(command: str, replace: dict[str, str]) -> list[str] | str:
    """The argv to run for a README command, or why it is not run (a string)."""
    words = [replace.get(w, w) for w in shlex.split(command, comments=True)]
    head = words[0]
    if head == "make":
        return INSTALLS
    if words[:2] == ["source", ".venv/bin/activate"]:
        return "activates the venv; the test runs the venv's devicetune already"
    if head in ("devicetune", ".venv/bin/devicetune"):
        return [sys.executable, "-m", "devicetune", *words[1:]]
    if head in (".venv/bin/python", "python"):
        return [sys.executable, *words[1:]]
    raise AssertionError(f"README command {command!r}: no rule runs it; add one to "
                         "tests/test_readme.py or a readme-test skip marker before its block")


def test_the_extraction_rule() -> None:
    text = "\n".join([
        "```sh", "make demo   # installs", "devicetune a \\", "    --b c  # note", "```",
        "<!-- readme-test: skip: needs the network -->", "```sh", "devicetune x", "```",
        "```", "$ devicetune not-a-command", "```",
        "<!-- readme-test: with big.toml=small.toml -->", "```sh", "devicetune s big.toml",
        "```"])
    blocks = sh_blocks(text)
    assert [b.commands for b in blocks] == [
        ["make demo   # installs", "devicetune a      --b c  # note"], ["devicetune x"],
        ["devicetune s big.toml"]]
    assert blocks[1].skip == "needs the network" and blocks[0].skip is None
    assert argv_of(blocks[0].commands[0], {}) == INSTALLS
    assert argv_of(blocks[0].commands[1], {})[3:] == ["a", "--b", "c"]  # type: ignore[index]
    assert argv_of(blocks[2].commands[0], blocks[2].replace)[-1] == "small.toml"  # type: ignore[index]
    with pytest.raises(AssertionError, match="no rule runs it"):
        argv_of("curl https://example.org", {})


def test_every_readme_command_runs_in_order_on_a_fresh_clone(tmp_path: Path,
                                                             data_dir: Path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(PROJECT_ROOT), str(clone)], check=True,
                   capture_output=True)
    env = {**os.environ, "DEVICETUNE_DATA": str(data_dir), "PYTHONPATH": str(clone / "src"),
           "FLWR_HOME": str(tmp_path / "flwr"), "COLUMNS": "120"}
    skipped, ran, seconds = [], 0, []
    for block in sh_blocks((clone / "README.md").read_text()):
        if block.skip:
            skipped.append(f"README.md:{block.line}: {block.skip}")
            continue
        for command in block.commands:
            argv = argv_of(command, block.replace)
            if isinstance(argv, str):
                skipped.append(f"README.md:{block.line}: {command!r}: {argv}")
                continue
            started = time.perf_counter()
            result = subprocess.run(argv, cwd=clone, env=env, capture_output=True, text=True,
                                    timeout=900)
            swapped = "".join(f" [{old} -> {new}]" for old, new in block.replace.items())
            seconds.append(f"{time.perf_counter() - started:5.1f} s  {command}{swapped}")
            assert result.returncode == 0, (f"README.md:{block.line}: {command!r} exited "
                                            f"{result.returncode}\n{result.stdout[-2000:]}\n"
                                            f"{result.stderr[-3000:]}")
            noise = [n for n in NOISE if n in result.stderr]
            assert not noise, f"README.md:{block.line}: {command!r} printed {noise}"
            ran += 1
    print(f"\nran {ran} README commands:\n  " + "\n  ".join(seconds)
          + "\nnot run:\n  " + "\n  ".join(skipped))
    assert ran >= 8  # the runnable part of the README is still there
