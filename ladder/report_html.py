"""`ladder report html`: every report on one self-contained page (charts inlined as PNG data)."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from datetime import UTC, datetime

from ladder.output import cell
from ladder.report import Table

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0; }
th, td { padding: 3px 10px; border-bottom: 1px solid #eee; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.total td { font-weight: bold; border-top: 1px solid #999; }
.note { color: #666; font-size: 0.9em; } img { max-width: 100%; }
.note.alert { color: #c0392b; font-weight: bold; font-size: 1em; }
"""
ALERT = "ALERT"  # a note that starts so is shown in red (drift alerts)


def table_html(table: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = []
    for row in table.rows:
        css = ' class="total"' if row and row[0] == "TOTAL" else ""
        body.append(f"<tr{css}>" + "".join(f"<td>{html.escape(cell(v))}</td>" for v in row) + "</tr>")
    if not table.rows:
        body.append(f'<tr><td colspan="{len(table.columns)}">no data</td></tr>')
    notes = "".join(
        f'<p class="note{" alert" if n.startswith(ALERT) else ""}">{html.escape(n)}</p>' for n in table.notes
    )
    return f"<h3>{html.escape(table.title)}</h3><table><tr>{head}</tr>{''.join(body)}</table>{notes}"


def image_html(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def page(title: str, sections: Sequence[tuple[str, Sequence[Table], Sequence[bytes]]]) -> str:
    """sections: (heading, tables, charts)."""
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
        f'<p class="note">generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by ladder report html</p>',
    ]
    for heading, tables, charts in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts.extend(image_html(png, heading) for png in charts)
        parts.extend(table_html(t) for t in tables)
    parts.append("</body></html>")
    return "\n".join(parts)
