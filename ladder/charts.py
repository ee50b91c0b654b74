"""Pictures of the spend, savings, routing and routing accuracy reports, as PNG bytes (matplotlib, no display
needed).

Each chart takes the report's Table, so a chart always shows exactly what the table says.
"""

from __future__ import annotations

import io
import math
from typing import Any

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from ladder.report import Table

# Titles and labels carry users' values (a customer id): "$...$" in one is text, not mathtext.
matplotlib.rcParams["text.parse_math"] = False

BLUE, ORANGE, GREY, GREEN, RED, PURPLE = "#3b6ea8", "#e08a2c", "#9a9a9a", "#4d9a5b", "#c0392b", "#8e6bb8"
MOST_BARS = 15
GROUPED_DAYS = 14


def _dollars(value: float, _pos: Any = None) -> str:
    if value == 0:
        return "$0"
    if abs(value) >= 1000:
        return f"${value:,.0f}"
    if abs(value) >= 0.1:
        return f"${value:,.2f}"
    return f"${value:.2g}"


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _column(table: Table, name: str) -> list[Any]:
    i = table.columns.index(name)
    return [r[i] for r in table.rows if r[0] != "TOTAL"]


def spend_chart(table: Table) -> bytes:
    """Horizontal bars of cost per key, the largest on top, each labelled with its share."""
    keys = [str(k) for k in _column(table, "key")][:MOST_BARS]
    costs = [float(c) for c in _column(table, "cost")][:MOST_BARS]
    shares = _column(table, "share_%")[:MOST_BARS]
    fig = Figure(figsize=(9, max(3.0, 1.2 + 0.45 * len(keys))))
    ax = fig.subplots()
    bars = ax.barh(keys[::-1], costs[::-1], color=BLUE)
    ax.bar_label(bars, labels=[f" {_dollars(c)} ({s}%)" for c, s in zip(costs[::-1], shares[::-1], strict=True)])
    ax.xaxis.set_major_formatter(FuncFormatter(_dollars))
    ax.set_xlim(0, max(costs, default=1) * 1.3 or 1)
    ax.set_title(table.title, loc="left")
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def savings_chart(table: Table) -> bytes:
    """Per day: what was spent (model calls and the classifier, stacked) against the cost of sending
    every job to the top tier, and to the middle tier."""
    days = [str(d) for d in _column(table, "day")]
    model = [float(v) for v in _column(table, "model_cost")]
    classifier = [float(v) for v in _column(table, "classifier_cost")]
    shadow = [float(v) for v in _column(table, "shadow_cost")]
    top_name = next(c for c in table.columns if c.startswith("all_"))
    top = [float(v) for v in _column(table, top_name)]
    middle_names = [c for c in table.columns if c.startswith("all_") and c != top_name]
    middle = [float(v) for v in _column(table, middle_names[0])] if middle_names else []
    fig = Figure(figsize=(max(7, 0.35 * len(days) + 3), 4.8))
    ax = fig.subplots()
    x = list(range(len(days)))
    grouped = len(days) <= GROUPED_DAYS  # a few days: bars side by side; many: counterfactuals as lines
    width = 0.27 if grouped else 0.8
    ax.bar([i - width if grouped else i for i in x], model, width, color=BLUE, label="actual: model calls")
    ax.bar([i - width if grouped else i for i in x], classifier, width, bottom=model, color=ORANGE,
           label="actual: classifier")  # fmt: skip
    if any(shadow):
        ax.bar([i - width if grouped else i for i in x], shadow, width, color=PURPLE, label="actual: shadow evaluation",
               bottom=[m + c for m, c in zip(model, classifier, strict=True)])  # fmt: skip
    top_label = top_name.replace("_", " ") + " (counterfactual)"
    if grouped:
        if middle:
            ax.bar(x, middle, width, color=GREY, label=middle_names[0].replace("_", " "))
        ax.bar([i + width for i in x], top, width, color=RED, label=top_label)
    else:
        if middle:
            ax.plot(x, middle, color=GREY, marker="s", linestyle="--", label=middle_names[0].replace("_", " "))
        ax.plot(x, top, color=RED, marker="o", label=top_label)
    ax.set_xticks(x, days, rotation=45 if len(days) > 6 else 0, ha="right" if len(days) > 6 else "center")
    ax.yaxis.set_major_formatter(FuncFormatter(_dollars))
    ax.set_ylim(bottom=0)
    total = next((r for r in table.rows if r[0] == "TOTAL"), None)
    saved_at, share_at = table.columns.index("saved"), table.columns.index("saved_%")
    saved = f": saved {_dollars(float(total[saved_at]))} ({total[share_at]}%)" if total else ""
    legend_rows = math.ceil(len(ax.get_legend_handles_labels()[0]) / 4)
    ax.set_title(table.title + saved, loc="left", pad=16 + 12 * legend_rows)
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncol=4, fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def routing_chart(split: Table) -> bytes:
    """Per tier: jobs first routed there against jobs that finished there, and dead letters."""
    tiers = [str(t) for t in _column(split, "tier")]
    intended = [int(v) for v in _column(split, "intended")]
    finished = [int(v) for v in _column(split, "finished")]
    dead = [int(v) for v in _column(split, "dead")]
    fig = Figure(figsize=(max(6, 1.6 * len(tiers) + 2), 4.5))
    ax = fig.subplots()
    width = 0.27
    x = list(range(len(tiers)))
    for offset, values, color, label in (
        (-width, intended, GREY, "intended (first route)"),
        (0.0, finished, GREEN, "finished ok"),
        (width, dead, RED, "dead-lettered"),
    ):
        bars = ax.bar([i + offset for i in x], values, width, color=color, label=label)
        ax.bar_label(bars, labels=[f"{v:,}" for v in values], fontsize=8)
    ax.set_xticks(x, tiers)
    ax.set_ylabel("jobs")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.0f}"))
    ax.set_title(split.title, loc="left")
    ax.legend(fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def accuracy_chart(table: Table, minimum: float) -> bytes:
    """Routing accuracy per day (the table of all strategies together) with its interval, against the
    drift minimum; alert days in red."""
    days = [str(d) for d in _column(table, "day")]
    accuracy = [float(v) for v in _column(table, "accuracy_%")]
    low = [float(v) for v in _column(table, "ci95_low_%")]
    high = [float(v) for v in _column(table, "ci95_high_%")]
    alerts = [v == "ALERT" for v in _column(table, "drift")]
    fig = Figure(figsize=(max(7, 0.35 * len(days) + 3), 4.5))
    ax = fig.subplots()
    x = list(range(len(days)))
    ax.fill_between(x, low, high, color=BLUE, alpha=0.2, label="95% CI")
    ax.plot(x, accuracy, color=BLUE, marker="o", label="routing accuracy")
    ax.scatter([i for i in x if alerts[i]], [a for a, alert in zip(accuracy, alerts, strict=True) if alert],
               color=RED, zorder=3, label="drift alert")  # fmt: skip
    ax.axhline(minimum * 100, color=RED, linestyle="--", label=f"drift minimum {minimum * 100:g}%")
    ax.set_xticks(x, days, rotation=45 if len(days) > 6 else 0, ha="right" if len(days) > 6 else "center")
    ax.set_ylabel("% of judged shadow comparisons")
    ax.set_ylim(0, 100)
    ax.set_title(table.title, loc="left", pad=28)
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncol=4, fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)
