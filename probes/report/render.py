"""The report as a document (sections of text, tables, figures, code) and its two renderings:
Markdown beside ``figures/*.png``, and one self-contained HTML file (CSS inline, figures as
base64 PNG data URIs, no scripts, no external requests).

Text blocks are plain text with one piece of markup, ```code``` spans; everything else is
escaped, so numbers and names from run folders can never inject markup into either rendering.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

__all__ = [
    "Code",
    "Figure",
    "Section",
    "Table",
    "Text",
    "markdown_table",
    "render_html",
    "render_markdown",
]


@dataclass(frozen=True)
class Text:
    """A paragraph of plain text; ```code``` spans are kept as code."""

    text: str


@dataclass(frozen=True)
class Code:
    """A preformatted block (command lines, versions)."""

    text: str


@dataclass(frozen=True)
class Table:
    """A table of display strings. ``csv``: where its numbers were written, relative to the
    report folder (shown under the table)."""

    frame: pd.DataFrame
    caption: str = ""
    csv: str | None = None


@dataclass(frozen=True)
class Figure:
    """A PNG written under the report folder; ``path`` is relative to it."""

    path: str
    caption: str
    alt: str = ""


Block = Text | Code | Table | Figure


@dataclass
class Section:
    """A heading (``level`` 2 or 3) and its blocks."""

    title: str
    blocks: list[Block] = field(default_factory=list)
    level: int = 2

    def add(self, *blocks: Block) -> Section:
        self.blocks.extend(blocks)
        return self


# -- Markdown ---------------------------------------------------------------------------------


def render_markdown(title: str, sections: Sequence[Section]) -> str:
    """The report as GitHub-flavoured Markdown; figures link to their PNG files."""
    out = [f"# {_md_text(title)}", ""]
    for section in sections:
        out += [f"{'#' * section.level} {_md_text(section.title)}", ""]
        for block in section.blocks:
            out += _md_block(block) + [""]
    return "\n".join(out).rstrip() + "\n"


def _md_block(block: Block) -> list[str]:
    if isinstance(block, Text):
        return [_md_text(block.text)]
    if isinstance(block, Code):
        fence = "````" if "```" in block.text else "```"
        return [fence, block.text, fence]
    if isinstance(block, Figure):
        return [
            f"![{_md_text(block.alt or block.caption)}]({block.path})",
            "",
            _md_text(block.caption),
        ]
    lines = []
    if block.caption:
        lines += [f"**{_md_text(block.caption)}**", ""]
    lines += markdown_table(block.frame)
    if block.csv:
        lines += ["", f"Numbers: [{block.csv}]({block.csv})"]
    return lines


def markdown_table(frame: pd.DataFrame) -> list[str]:
    """A pipe table of ``frame``'s cells as text (pipes and newlines escaped).

    Hand-rolled: pandas' ``to_markdown`` needs the tabulate package for what is three lines.
    """
    header = [_md_cell(c) for c in frame.columns]
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) for c in frame.columns]
    rule = ["---:" if n else "---" for n in numeric]
    rows = [[_md_cell(v) for v in row] for row in frame.itertuples(index=False)]
    return ["| " + " | ".join(r) + " |" for r in (header, rule, *rows)]


def _md_cell(value: object) -> str:
    return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


def _md_text(text: str) -> str:
    # Keep code spans as they are; elsewhere escape what would start emphasis or raw HTML.
    # (Underscores stay: GitHub does not emphasise inside words like lin_grid16.)
    parts = re.split(r"(`[^`]*`)", text)
    return "".join(p if p.startswith("`") else re.sub(r"([\\*<>])", r"\\\1", p) for p in parts)


# -- HTML -------------------------------------------------------------------------------------

_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1b1f24;
  max-width: 1180px; margin: 2em auto; padding: 0 1.2em; }
h1 { font-size: 1.7em; border-bottom: 2px solid #d0d7de; padding-bottom: .3em; }
h2 { font-size: 1.35em; margin-top: 2em; border-bottom: 1px solid #d0d7de; padding-bottom: .2em; }
h3 { font-size: 1.1em; margin-top: 1.5em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: .9em; }
caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: .3em; }
th, td { border: 1px solid #d0d7de; padding: .25em .6em; vertical-align: top; }
th { background: #f3f5f7; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #fafbfc; }
code, pre { font: .88em/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
code { background: #f3f5f7; padding: .05em .3em; border-radius: 3px; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; white-space: pre-wrap;
  word-break: break-all; border-radius: 4px; }
figure { margin: 1em 0 1.6em; }
figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { font-size: .9em; color: #57606a; margin-top: .3em; }
.csv { font-size: .85em; color: #57606a; margin-top: -.8em; }
nav ul { columns: 2; font-size: .95em; }
"""


def render_html(title: str, sections: Sequence[Section], folder: str | Path) -> str:
    """The report as one HTML document; figures are read from ``folder`` and embedded."""
    folder = Path(folder)
    body = [f"<h1>{_html_text(title)}</h1>", _contents(sections)]
    for number, section in enumerate(sections):
        tag = f"h{section.level}"
        body.append(f'<{tag} id="s{number}">{_html_text(section.title)}</{tag}>')
        body += [_html_block(block, folder) for block in section.blocks]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def _contents(sections: Sequence[Section]) -> str:
    items = [
        f'<li><a href="#s{i}">{_html_text(s.title)}</a></li>'
        for i, s in enumerate(sections)
        if s.level == 2
    ]
    return "<nav><ul>" + "".join(items) + "</ul></nav>"


def _html_block(block: Block, folder: Path) -> str:
    if isinstance(block, Text):
        return f"<p>{_html_text(block.text)}</p>"
    if isinstance(block, Code):
        return f"<pre>{html.escape(block.text)}</pre>"
    if isinstance(block, Figure):
        data = base64.b64encode((folder / block.path).read_bytes()).decode("ascii")
        alt = html.escape(block.alt or block.caption, quote=True)
        return (
            f'<figure><img src="data:image/png;base64,{data}" alt="{alt}">'
            f"<figcaption>{_html_text(block.caption)}</figcaption></figure>"
        )
    return _html_table(block)


def _html_table(block: Table) -> str:
    frame = block.frame
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) for c in frame.columns]
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for row in frame.itertuples(index=False):
        cells = "".join(
            f'<td class="num">{html.escape(_cell(v))}</td>'
            if n
            else f"<td>{html.escape(_cell(v))}</td>"
            for v, n in zip(row, numeric, strict=True)
        )
        rows.append(f"<tr>{cells}</tr>")
    caption = f"<caption>{_html_text(block.caption)}</caption>" if block.caption else ""
    table = f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    if block.csv:
        table += f'<p class="csv">Numbers: <code>{html.escape(block.csv)}</code></p>'
    return table


def _cell(value: object) -> str:
    return "" if value is None else str(value)


def _html_text(text: str) -> str:
    parts = re.split(r"(`[^`]*`)", text)
    return "".join(
        f"<code>{html.escape(p[1:-1])}</code>" if p.startswith("`") else html.escape(p)
        for p in parts
    )
