"""Routing drift: an alert when the share of shadow comparisons where the cheap answer was good enough
falls below the policy minimum.

Each day is judged on a trailing window of calendar days ending that day, pooled (right over judged),
so a quiet day does not swing the figure; a window with fewer judged comparisons than
`DriftPolicy.min_samples` is not judged at all. The rule is deliberately the plain one, pooled
accuracy below the minimum, so an alert can be checked by hand from the numbers in its message.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

import msgspec


class DriftPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    min_routing_accuracy: float = 0.9
    min_samples: int = 50  # judged comparisons in a window before it is judged
    window_days: int = 7

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_routing_accuracy <= 1.0:
            raise ValueError(f"minimum routing accuracy {self.min_routing_accuracy} must be between 0 and 1")
        if self.min_samples < 1 or self.window_days < 1:
            raise ValueError("min_samples and window_days must be at least 1")


class DayAccuracy(msgspec.Struct, frozen=True):
    day: datetime.date
    right: int  # shadow comparisons where the cheap answer was good enough
    judged: int  # shadow comparisons

    def __post_init__(self) -> None:
        if not 0 <= self.right <= self.judged:
            raise ValueError(f"{self.day}: {self.right} right of {self.judged} judged")


class DriftAlert(msgspec.Struct, frozen=True):
    day: datetime.date  # the last day of the window
    accuracy: float  # pooled over the window
    judged: int  # over the window
    message: str


def drift_alerts(days: Sequence[DayAccuracy], policy: DriftPolicy) -> list[DriftAlert]:
    """An alert for each day with data whose trailing window is judged and below the minimum, by day."""
    totals = _totals_by_day(days)
    alerts = (_alert_for(day, totals, policy) for day in sorted(totals) if totals[day][1] > 0)
    return [alert for alert in alerts if alert is not None]


def latest_alert(days: Sequence[DayAccuracy], policy: DriftPolicy) -> DriftAlert | None:
    """The alert for the last day with data, if its window is below the minimum: what a cron check exits on."""
    totals = _totals_by_day(days)
    with_data = [day for day, (_, judged) in totals.items() if judged > 0]
    return _alert_for(max(with_data), totals, policy) if with_data else None


def _totals_by_day(days: Sequence[DayAccuracy]) -> dict[datetime.date, tuple[int, int]]:
    # rows for the same day (e.g. one per strategy) are pooled like the days of a window
    totals: dict[datetime.date, tuple[int, int]] = {}
    for row in days:
        right, judged = totals.get(row.day, (0, 0))
        totals[row.day] = (right + row.right, judged + row.judged)
    return totals


def _alert_for(
    day: datetime.date, totals: dict[datetime.date, tuple[int, int]], policy: DriftPolicy
) -> DriftAlert | None:
    # calendar days, not rows: a day without data still uses up its place in the window
    window = [day - datetime.timedelta(days=back) for back in range(policy.window_days)]
    right = sum(totals.get(d, (0, 0))[0] for d in window)
    judged = sum(totals.get(d, (0, 0))[1] for d in window)
    if judged < policy.min_samples:
        return None
    accuracy = right / judged
    if accuracy >= policy.min_routing_accuracy:
        return None
    span = f"on {day}" if policy.window_days == 1 else f"over the {policy.window_days} days to {day}"
    message = (
        f"routing accuracy {accuracy:.1%} {span} ({right} of {judged} shadow comparisons) "
        f"is below the policy minimum of {policy.min_routing_accuracy * 100:g}%"
    )
    return DriftAlert(day=day, accuracy=accuracy, judged=judged, message=message)
