"""Printing figures: a table for people, JSON and CSV for machines. One renderer for every command."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from rich.console import Console
from rich.table import Table

FORMATS = ("table", "json", "csv")


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def _cell(value: Any) -> str:
    if isinstance(value, Decimal):
        return f"${value:,.4f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return str(value)


def render(
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    fmt: str,
    console: Console,
    notes: Sequence[str] = (),
) -> None:
    if fmt == "json":
        payload = {"title": title, "rows": [dict(zip(columns, map(_plain, r), strict=True)) for r in rows]}
        if notes:
            payload["notes"] = list(notes)
        console.print_json(json.dumps(payload))
        return
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(columns)
        writer.writerows([[_plain(v) for v in r] for r in rows])
        console.file.write(buf.getvalue())
        return
    table = Table(title=title, title_justify="left")
    for i, name in enumerate(columns):
        table.add_column(name, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*(_cell(v) for v in r))
    console.print(table)
    for note in notes:
        console.print(note)
