"""Reading a small JSONL file of labelled lines whole: every bad line named (up to ten), or the rows."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
MAX_REPORTED = 10  # bad lines named in one error; a wholly wrong file should not print thousands


def parse_lines(text: str, parse: Callable[[str, int], T], error: type[ValueError], source: str, what: str) -> list[T]:
    """`parse(line, number)` for each non-blank line; it raises ValueError for a bad one. Raises
    `error` naming every bad line's number and reason, or saying there were no `what` at all."""
    rows: list[T] = []
    errors: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            rows.append(parse(raw, number))
        except ValueError as e:
            errors.append(f"line {number}: {e}")
    if errors:
        more = f" (and {len(errors) - MAX_REPORTED} more bad lines)" if len(errors) > MAX_REPORTED else ""
        raise error(f"{source}: " + "; ".join(errors[:MAX_REPORTED]) + more)
    if not rows:
        raise error(f"{source}: no {what}")
    return rows
