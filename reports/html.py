"""One static, offline ``index.html``: inline CSS, no scripts, no CDN, no web fonts.

Every piece of text put into the page goes through ``html.escape``; images are referenced by
relative path (the PNGs sit beside the page).
"""
from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from common.io import atomic_write

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:1200px;
padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.82em;margin:.6em 0}
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:right}
th{background:#f3f3f3}td.t{text-align:left}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
figure>a{display:block}.scroll{overflow-x:auto;max-width:100%}
figcaption{font-size:.85em;color:#555}.note{background:#fff7e0;border-left:4px solid #e0a800;
padding:.4em .8em;margin:.5em 0}.summary{background:#eef6ff;padding:.6em 1.2em;
border-left:4px solid #2a6fdb}
"""


@dataclass
class FigureRef:
    """A figure on the page: its PNG and CSV paths relative to the page, and a caption."""

    png: str
    csv: str
    caption: str


@dataclass
class Section:
    title: str
    figures: list[FigureRef] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    details: list[tuple[str, pd.DataFrame]] = field(default_factory=list)  # folded tables
    notes: list[str] = field(default_factory=list)
    paragraphs: list[str] = field(default_factory=list)


def format_value(v: Any) -> str:
    """Numbers compactly (4 significant digits, thousands separators for big integers)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) >= 1000):
        return f"{int(v):,}"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def table_html(frame: pd.DataFrame) -> str:
    """An escaped HTML table of ``frame`` (text cells left-aligned)."""
    head = "".join(f"<th>{escape(str(c))}</th>" for c in frame.columns)
    body = []
    for row in frame.itertuples(index=False):
        cells = []
        for v in row:
            v = v.item() if hasattr(v, "item") else v
            cls = ' class="t"' if isinstance(v, str) else ""
            cells.append(f"<td{cls}>{escape(format_value(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _section_html(s: Section) -> str:
    parts = [f"<h2>{escape(s.title)}</h2>"]
    parts += [f"<p>{escape(p)}</p>" for p in s.paragraphs]
    parts += [f'<p class="note">{escape(n)}</p>' for n in s.notes]
    for f in s.figures:
        png, csv = escape(f.png, quote=True), escape(f.csv, quote=True)
        parts.append(f'<figure><a href="{png}"><img src="{png}" '
                     f'alt="{escape(f.caption, quote=True)}"></a>'
                     f'<figcaption>{escape(f.caption)} (full size: click the figure; data: '
                     f'<a href="{csv}">{escape(f.csv)}</a>)</figcaption></figure>')
    for caption, frame in s.tables:
        parts.append(f"<h3>{escape(caption)}</h3>{table_html(frame)}")
    for caption, frame in s.details:
        parts.append(f"<details><summary>{escape(caption)}</summary>{table_html(frame)}"
                     "</details>")
    return "\n".join(parts)


def render_page(title: str, summary_lines: Sequence[str], sections: Sequence[Section],
                summary_tables: Sequence[tuple[str, pd.DataFrame]] = ()) -> str:
    """The whole page as a string (all text escaped here); ``summary_tables`` (caption,
    frame) follow the summary's lines inside its box."""
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    summary = "".join(f"<li>{escape(line)}</li>" for line in summary_lines)
    tables = "".join(f"<h3>{escape(caption)}</h3>{table_html(frame)}"
                     for caption, frame in summary_tables)
    toc = "".join(f'<li><a href="#s{i}">{escape(s.title)}</a></li>' for i, s in enumerate(sections))
    body = "\n".join(f'<section id="s{i}">{_section_html(s)}</section>'
                     for i, s in enumerate(sections))
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>\n"
            f"<h1>{escape(title)}</h1>\n<div class=\"summary\"><h2>Summary</h2><ul>{summary}</ul>"
            f"{tables}</div>\n<ul>{toc}</ul>\n{body}\n<p><small>Generated {escape(created)} "
            f"from saved tables and result CSVs by <code>report</code>.</small></p></body></html>\n")


def write_page(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))
