"""The customers file: who pays what and may spend how much. CSV with a header row, or JSONL.

Columns (only `id` is required): id, plan, revenue_per_month, revenue_per_request (USD, exact
decimals), monthly_budget (USD; empty: the policies' default), at_limit (reject | downgrade; empty:
the policies' choice). `ladder customers load FILE` puts it into ClickHouse (margins) and Redis
(budgets enforced at dispatch).
"""

from __future__ import annotations

import csv
import io
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Literal

import msgspec

AtLimit = Literal["reject", "downgrade"]


class CustomersError(ValueError):
    """A bad customers file; the message names the line and the field."""


class Customer(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: str
    plan: str = ""
    revenue_per_month: Decimal = Decimal(0)
    revenue_per_request: Decimal = Decimal(0)
    monthly_budget: Decimal | None = None
    at_limit: AtLimit | None = None


COLUMNS = [f for f in Customer.__struct_fields__]
_decoder = msgspec.json.Decoder(Customer)


def _check(customer: Customer, where: str) -> Customer:
    if not customer.id.strip():
        raise CustomersError(f"{where}: id: must not be empty")
    for field in ("revenue_per_month", "revenue_per_request", "monthly_budget"):
        value = getattr(customer, field)
        if value is not None and (not value.is_finite() or value < 0):
            raise CustomersError(f"{where}: {field}: {value} must be a non-negative amount")
    return customer


def _from_csv_row(row: dict[str, str | None], where: str) -> Customer:
    unknown = sorted(k for k in row if k not in COLUMNS)
    if unknown:
        raise CustomersError(f"{where}: unknown column {unknown[0]!r} (columns: {', '.join(COLUMNS)})")
    values: dict[str, object] = {}
    for key, raw in row.items():
        text = (raw or "").strip()
        if key in ("revenue_per_month", "revenue_per_request", "monthly_budget"):
            if not text:
                continue
            try:
                values[key] = Decimal(text)
            except InvalidOperation:
                raise CustomersError(f"{where}: {key}: {text!r} is not an amount") from None
        elif text or key == "id":
            values[key] = text
    try:
        return msgspec.convert(values, Customer)
    except msgspec.ValidationError as e:
        raise CustomersError(f"{where}: {e}") from None


def parse_customers(text: str, source: str = "<customers>") -> list[Customer]:
    """Every customer of the file, or CustomersError naming the first bad line."""
    customers: list[Customer] = []
    if text.lstrip().startswith("{"):
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                customers.append(_check(_decoder.decode(line), f"{source} line {number}"))
            except msgspec.DecodeError as e:
                raise CustomersError(f"{source} line {number}: {e}") from None
    else:
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames is None or "id" not in reader.fieldnames:
            raise CustomersError(f"{source} line 1: a CSV header with an 'id' column is required")
        for row in reader:
            where = f"{source} line {reader.line_num}"
            if None in row:
                raise CustomersError(f"{where}: more values than header columns")
            customers.append(_check(_from_csv_row(row, where), where))
    seen: set[str] = set()
    for c in customers:
        if c.id in seen:
            raise CustomersError(f"{source}: customer {c.id!r} appears twice")
        seen.add(c.id)
    return customers


def load_customers(path: str | Path) -> list[Customer]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise CustomersError(f"{p}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise CustomersError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return parse_customers(text, str(p))
