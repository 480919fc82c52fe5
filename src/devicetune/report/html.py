"""The report as one self-contained HTML page: no script, no external file, the figures
embedded as PNG data URIs, so it can be mailed, attached to a ticket or archived as is.

Every headline number carries ``data-source`` (``summary.json:mean_gain``) and
``data-value`` (the number as read), so what the page says can be checked against the run.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from devicetune.report.headline import Cell, Table
from devicetune.report.runs import Run
from devicetune.report.sections import Detail, Section

# At most this many numbers are shown as large cards above the tables.
MAX_CARDS = 4

_CHANGE = re.compile(r"^(?:▼ )?([+-]\d+(?:\.\d+)?)$|\(([+-]\d+(?:\.\d+)?)\)$")

CSS = """
:root { --ink:#111827; --muted:#6b7280; --line:#e5e7eb; --soft:#f9fafb;
  --gain:#16a34a; --harm:#dc2626; --blue:#2563eb; --amber:#b45309; }
* { box-sizing:border-box; }
body { margin:0; background:#f3f4f6; color:var(--ink);
  font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif; }
main { max-width:1120px; margin:0 auto; padding:28px 32px 48px; background:white; }
header { border-bottom:1px solid var(--line); padding-bottom:14px; margin-bottom:20px; }
.eyebrow { margin:0; color:var(--blue); font-weight:600; text-transform:uppercase;
  letter-spacing:.06em; font-size:12px; }
h1 { margin:2px 0 4px; font-size:28px; }
h2 { font-size:20px; margin:0 0 6px; }
h3 { font-size:14px; margin:16px 0 6px; color:#374151; }
.meta { margin:0; color:var(--muted); font-size:13px; }
section { margin:28px 0 0; }
.cards { display:flex; gap:12px; flex-wrap:wrap; margin:8px 0 12px; }
.card { flex:1 1 180px; border:1px solid var(--line); border-radius:10px; padding:10px 14px;
  background:var(--soft); }
.card .value { font-size:28px; font-weight:700; line-height:1.2; }
.card .label { color:var(--muted); font-size:13px; }
.card.good .value { color:var(--gain); } .card.bad .value { color:var(--harm); }
.verdict { font-size:17px; margin:6px 0 14px; }
.tradeoff { font-size:16px; margin:6px 0 10px; padding:10px 14px; border-left:4px solid
  var(--blue); background:#eff6ff; max-width:980px; }
.tables { display:flex; gap:18px; flex-wrap:wrap; align-items:flex-start; }
table { border-collapse:collapse; font-size:13px; font-variant-numeric:tabular-nums; }
caption { text-align:left; font-weight:600; padding:0 0 4px; color:#374151; }
th, td { padding:4px 10px; border-bottom:1px solid var(--line); text-align:left; }
.num, table.headline td, table.headline thead th { text-align:right; }
thead th { color:var(--muted); font-weight:600; border-bottom:2px solid var(--line); }
tr.harmed td, tr.regressed td { background:#fef2f2; }
td.up { color:var(--gain); font-weight:600; } td.down { color:var(--harm); font-weight:600; }
tr.regressed td:last-child { color:var(--harm); font-weight:700; }
tr.refused td { color:var(--muted); }
.detail { overflow-x:auto; margin-top:10px; }
.notes { border:1px solid #fcd34d; background:#fffbeb; border-radius:10px;
  padding:12px 16px; }
.notes h2 { color:var(--amber); font-size:16px; }
.notes ul { margin:0; padding-left:20px; }
.lead { margin:0 0 8px; color:#374151; max-width:900px; }
figure { margin:8px 0 0; }
figure img { width:100%; height:auto; border:1px solid var(--line); border-radius:6px; }
nav { font-size:13px; color:var(--muted); margin-top:18px; }
nav a { color:var(--blue); text-decoration:none; margin-right:14px; }
footer { margin-top:36px; color:var(--muted); font-size:12px; }
"""


def render(run: Run, tables: Sequence[Table], sections: Sequence[Section],
           verdict: str | None = None, tradeoff: str | None = None) -> str:
    """The whole page, with each section's image read from disk and embedded."""
    e = html.escape
    parts = [
        "<!doctype html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>devicetune report: {e(run.name)}</title>", f"<style>{CSS}</style>",
        "</head>", "<body>", "<main>", "<header>",
        f'<p class="eyebrow">devicetune report · {e(run.kind)}</p>',
        f"<h1>{e(run.name)}</h1>", f'<p class="meta">{e(_describe(run))}</p>', "</header>",
        '<section id="headline">', "<h2>Headline</h2>", _cards(tables),
    ]
    if tradeoff:
        parts.append(f'<p class="tradeoff">{e(tradeoff)}</p>')
    if verdict:
        parts.append(f'<p class="verdict">{e(verdict)}</p>')
    parts += ['<div class="tables">', *(_headline_table(t) for t in tables), "</div>",
              "</section>"]
    if run.notes:
        parts += ['<section id="notes" class="notes">', "<h2>Notes: missing or incomplete</h2>",
                  "<ul>", *(f"<li>{e(note)}</li>" for note in run.notes), "</ul>", "</section>"]
    if sections:
        parts.append("<nav>" + "".join(f'<a href="#{s.id}">{e(s.title)}</a>'
                                       for s in sections) + "</nav>")
    parts += [_section(s) for s in sections]
    parts += [f"<footer>Written by devicetune report from {e(str(run.path))} on "
              f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC.</footer>",
              "</main>", "</body>", "</html>"]
    return "\n".join(parts) + "\n"


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _describe(run: Run) -> str:
    config = run.config
    fleet = getattr(config, "fleet", None)
    bits = []
    if fleet is not None:
        mix = ", ".join(f"{name} {100 * share:.0f}%"
                        for name, share in fleet.platform_mix.items() if share)
        bits.append(f"{fleet.devices:,} devices ({mix})")
    if config is not None:
        bits.append(f"{config.server.rounds} rounds of {config.server.strategy}, "
                    f"{config.server.devices_per_round} devices per round")
        privacy = config.privacy
        bits.append("central DP off" if privacy.mode == "off" else
                    f"DP-FedAvg ({privacy.mode} clipping), noise {privacy.noise_multiplier:g}")
    bits.append(f"run folder {run.path}")
    return " · ".join(bits)


def _cell_attrs(cell: Cell) -> str:
    value = "" if cell.value is None else f' data-value="{cell.value!r}"'
    if cell.interval is not None:
        value += f' data-interval="{cell.interval[0]!r} {cell.interval[1]!r}"'
    return f'data-source="{html.escape(cell.source)}"{value}'


def _cards(tables: Sequence[Table]) -> str:
    cards = []
    rows = [r for t in tables for r in t.rows if r.card]
    # Numbers with a good and a bad direction (gain, harm, regressions) lead.
    for row in sorted(rows, key=lambda r: not r.tone):
        cell = row.cells[0]
        if cell.value is None:
            continue
        cards.append(f'<div class="card {_tone(row.tone, cell.value)}">'
                     f'<div class="value" {_cell_attrs(cell)}>{html.escape(cell.text)}</div>'
                     f'<div class="label">{html.escape(row.card)}</div></div>')
    return f'<div class="cards">{"".join(cards[:MAX_CARDS])}</div>' if cards else ""


def _tone(kind: str, value: float) -> str:
    if kind == "gain":
        return "good" if value > 0 else "bad" if value < 0 else ""
    if kind == "harm":
        return "bad" if value > 0 else "good"
    return ""


def _headline_table(table: Table) -> str:
    e = html.escape
    head = "".join(f"<th>{e(c)}</th>" for c in table.columns)
    rows = "".join(
        f"<tr><th scope=\"row\">{e(row.label)}</th>"
        + "".join(f"<td {_cell_attrs(c)}>{e(c.text)}</td>" for c in row.cells) + "</tr>"
        for row in table.rows)
    header = f"<thead><tr><th></th>{head}</tr></thead>" if any(table.columns) else ""
    return f'<table class="headline"><caption>{e(table.title)}</caption>{header}' \
           f"<tbody>{rows}</tbody></table>"


def _detail(detail: Detail) -> str:
    e = html.escape
    classes: Sequence[Any] = detail.row_classes or [""] * len(detail.rows)
    # A column of numbers is right-aligned, header included; words stay left.
    numeric = [all(_is_number(row[i]) for row in detail.rows)
               for i in range(len(detail.columns))]
    rows = "".join(
        (f'<tr class="{e(cls)}">' if cls else "<tr>")
        + "".join(f"<td{_cell_class(cell, numeric[i])}>{e(cell)}</td>"
                  for i, cell in enumerate(row)) + "</tr>"
        for row, cls in zip(detail.rows, classes, strict=True))
    head = "".join(f"<th{_cell_class('', n)}>{e(c)}</th>"
                   for c, n in zip(detail.columns, numeric, strict=True))
    return (f'<div class="detail"><table><caption>{e(detail.caption)}</caption>'
            f"<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>")


def _cell_class(text: str, numeric: bool) -> str:
    """Right-align numbers; a signed change is green up, red down (zero stays plain)."""
    classes = ["num"] if numeric else []
    # "+2.4", "-5.8", or a change in brackets after an accuracy: "91.0% (-2.5)".
    change = _CHANGE.search(text)
    value = float(change.group(1) or change.group(2)) if change else 0.0
    if value:
        classes.append("up" if value > 0 else "down")
    return f' class="{" ".join(classes)}"' if classes else ""


def _is_number(text: str) -> bool:
    return text[:1] in set("0123456789+-–▼")


def _section(section: Section) -> str:
    e = html.escape
    parts = [f'<section id="{e(section.id)}">', f"<h2>{e(section.title)}</h2>",
             f'<p class="lead">{e(section.lead)}</p>']
    if section.image is not None:
        parts.append(f'<figure><img src="{data_uri(section.image)}" '
                     f'alt="{e(section.title)}" data-file="{e(section.image.name)}"></figure>')
    parts += [_detail(d) for d in section.details]
    parts.append("</section>")
    return "\n".join(parts)
