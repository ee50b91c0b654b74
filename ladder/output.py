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
from rich.text import Text

FORMATS = ("table", "json", "csv")


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, Decimal):
        return f"${value:,.4f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return str(value)


def payload(
    title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], notes: Sequence[str] = ()
) -> dict[str, Any]:
    """A table as JSON-ready data: its title, one object per row, and its notes if any."""
    data: dict[str, Any] = {"title": title, "rows": [dict(zip(columns, map(_plain, r), strict=True)) for r in rows]}
    if notes:
        data["notes"] = list(notes)
    return data


def render(
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    fmt: str,
    console: Console,
    notes: Sequence[str] = (),
) -> None:
    if fmt == "json":
        console.print_json(json.dumps(payload(title, columns, rows, notes)))
        return
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(columns)
        writer.writerows([[_plain(v) for v in r] for r in rows])
        console.file.write(buf.getvalue())
        return
    # Text, not markup: a title or cell may hold a user's value, and "[/]" in a customer id is not style.
    table = Table(title=Text(title), title_justify="left")
    for i, name in enumerate(columns):
        table.add_column(Text(name), justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*(Text(cell(v)) for v in r))
    console.print(table)
    for note in notes:  # plain text: a note may quote "[section]" names or user values
        console.print(note, markup=False, highlight=False)
