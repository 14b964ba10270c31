"""The report's HTML: one self-contained page (inline CSS, PNG data URIs, no network to open it).

A content-security policy forbids every outside fetch, so what opens offline is what was written.
All stored text is escaped: model output is shown as text, never interpreted as markup.
"""

from __future__ import annotations

import difflib
import html
import re
from collections.abc import Iterable, Sequence
from typing import Any

from charter.report.plots import Figure

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 0 24px 48px; color: #1b1b1b; }
h1 { margin-top: 28px; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 36px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
th, td { border: 1px solid #e2e2e2; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f5f5f5; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 12px 0; } figcaption { color: #555; font-size: 12px; }
img { max-width: 100%; }
.note { color: #666; font-style: italic; }
.example { border: 1px solid #e2e2e2; border-radius: 6px; margin: 16px 0; padding: 8px 12px; }
.rounds { display: grid; grid-auto-flow: column; grid-auto-columns: minmax(260px, 1fr); gap: 10px;
          overflow-x: auto; }
.version { background: #fafafa; border: 1px solid #eee; border-radius: 4px; padding: 6px 8px; }
.version h4 { margin: 0 0 4px; font-size: 12px; color: #444; }
.text { white-space: pre-wrap; word-break: break-word; }
.critique { color: #555; font-size: 12px; border-top: 1px dashed #ddd; margin-top: 6px; padding-top: 4px; }
ins { background: #d7f5dd; text-decoration: none; } del { background: #fbdada; }
nav a { margin-right: 12px; }
"""

# Marks the page rendered: the number of pictures that decoded, read by the browser test.
_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute("data-images", String(imgs.length));
  document.body.setAttribute("data-images-ok", String(ok));
});
"""

_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def esc(value: Any) -> str:
    """Any value as HTML-escaped text (None as an em dash)."""
    if value is None:
        return "&mdash;"
    return html.escape(str(value), quote=True)


def number(value: Any, digits: int = 3) -> str:
    """A number for a table cell."""
    if value is None:
        return "&mdash;"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}" if abs(value) < 1e6 else f"{value:,.0f}"
    return esc(value)


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Iterable[int] = ()) -> str:
    """An HTML table; cells in the `numeric` column positions are right-aligned numbers."""
    numeric = set(numeric)
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for i, value in enumerate(row):
            if i in numeric:
                cells.append(f'<td class="num">{number(value)}</td>')
            else:
                cells.append(f"<td>{esc(value)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def records(
    rows: Iterable[dict[str, Any]], spec: Sequence[tuple[str, str]], numeric: Iterable[str] = ()
) -> str:
    """A table of dict rows: `spec` is (heading, key) per column; `numeric` names number keys."""
    keys = [key for _, key in spec]
    numbers = set(numeric)
    return table(
        [heading for heading, _ in spec],
        ([row.get(k) for k in keys] for row in rows),
        numeric=[i for i, k in enumerate(keys) if k in numbers],
    )


def figure(fig: Figure | None, missing: str) -> str:
    """An embedded picture, or a note saying why there is none."""
    if fig is None:
        return f'<p class="note">{esc(missing)}</p>'
    return (
        f'<figure id="fig-{esc(fig.key)}"><img src="{fig.data_uri}" alt="{esc(fig.alt)}">'
        f"<figcaption>{esc(fig.alt)}</figcaption></figure>"
    )


_WORD = re.compile(r"\s+|\w+|[^\w\s]")


def word_diff(before: str, after: str) -> str:
    """`after` as HTML with words added since `before` in <ins> and removed ones in <del>."""
    a, b = _WORD.findall(before or ""), _WORD.findall(after or "")
    out: list[str] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            out.append(esc("".join(b[j1:j2])))
            continue
        if op in ("delete", "replace"):
            out.append(f"<del>{esc(''.join(a[i1:i2]))}</del>")
        if op in ("insert", "replace"):
            out.append(f"<ins>{esc(''.join(b[j1:j2]))}</ins>")
    return "".join(out)


def example_html(example: dict[str, Any]) -> str:
    """One prompt's initial response and every revision side by side, each diffed to the one before."""
    columns = [
        '<div class="version"><h4>initial response</h4>'
        f'<div class="text">{esc(example.get("init_response") or "")}</div></div>'
    ]
    previous = str(example.get("init_response") or "")
    for r in example.get("rounds") or []:
        revision = str(r.get("revision") or "")
        changed = "" if r.get("needs_revision", True) else " (critique: no change needed)"
        columns.append(
            f'<div class="version"><h4>round {esc(r["round"])}: {esc(r["principle"])}{esc(changed)}</h4>'
            f'<div class="text">{word_diff(previous, revision)}</div>'
            f'<div class="critique"><b>critique:</b> <span class="text">{esc(r.get("critique"))}</span></div></div>'
        )
        previous = revision
    return (
        f'<div class="example"><p><b>prompt</b> <code>{esc(example["prompt_id"])}</code>: '
        f'<span class="text">{esc(example.get("prompt"))}</span></p>'
        f'<div class="rounds">{"".join(columns)}</div></div>'
    )


def page(title: str, subtitle: str, sections: list[tuple[str, str, str]]) -> str:
    """The whole document from (anchor, heading, inner HTML) sections."""
    nav = "".join(f'<a href="#{esc(anchor)}">{esc(heading)}</a>' for anchor, heading, _ in sections)
    body = "".join(
        f'<section id="{esc(anchor)}"><h2>{esc(heading)}</h2>{inner}</section>'
        for anchor, heading, inner in sections
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_POLICY}">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{esc(title)}</title>'
        f"<style>{_CSS}</style><script>{_SCRIPT}</script></head><body>"
        f"<h1>{esc(title)}</h1><p>{esc(subtitle)}</p><nav>{nav}</nav>{body}</body></html>\n"
    )
