"""Experiment statistics: intervals against published values (Newcombe 1998) and hand-computed ones,
each branch of the A/B verdict, and routing-drift alerts over a trailing window of days."""

from __future__ import annotations

import datetime
import math
import statistics
from decimal import Decimal

import pytest

from policies.drift import DayAccuracy, DriftPolicy, drift_alerts, latest_alert
from policies.stats import (
    Mean,
    Proportion,
    mean_difference_interval,
    mean_interval,
    proportion_difference_interval,
    wilson_interval,
    z_for,
)
from policies.verdict import ArmFigures, VerdictPolicy, verdict

CLOSE = 1e-4

# --- intervals -------------------------------------------------------------------------------------


def test_z_for_is_the_two_sided_normal_quantile() -> None:
    assert z_for(0.95) == pytest.approx(1.959964, abs=1e-6)
    assert z_for(0.90) == pytest.approx(1.644854, abs=1e-6)
    with pytest.raises(ValueError, match="between 0 and 1"):
        z_for(1.0)


@pytest.mark.parametrize(
    ("successes", "trials", "expected"),
    [
        (81, 263, (0.2553, 0.3662)),  # Newcombe 1998, Statistics in Medicine 17:857, Table I
        (15, 148, (0.0624, 0.1605)),  # ditto
        (0, 20, (0.0, 0.1611)),  # ditto
        (1, 29, (0.0061, 0.1718)),  # ditto
        (0, 10, (0.0, 0.2775)),
    ],
)
def test_wilson_interval_matches_published_values(successes: int, trials: int, expected: tuple[float, float]) -> None:
    assert wilson_interval(successes, trials) == pytest.approx(expected, abs=CLOSE)


def test_wilson_interval_edges() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 10)[0] == 0.0
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=CLOSE)
    assert wilson_interval(10, 10)[1] == 1.0
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(11, 10)


def test_newcombe_difference_matches_the_published_example() -> None:
    # Newcombe 1998, Statistics in Medicine 17:873, Table II: 56/70 - 48/80 = 0.2000, method 10 (0.0524, 0.3339).
    # Here the difference is second minus first, so listing 48/80 first gives +0.2000.
    assert proportion_difference_interval(48, 80, 56, 70) == pytest.approx((0.0524, 0.3339), abs=CLOSE)
    assert proportion_difference_interval(56, 70, 48, 80) == pytest.approx((-0.3339, -0.0524), abs=CLOSE)
    assert Proportion(48, 80).difference(Proportion(56, 70)) == pytest.approx((0.0524, 0.3339), abs=CLOSE)
    assert proportion_difference_interval(0, 0, 5, 10) == (-1.0, 1.0)


def test_mean_interval_by_hand() -> None:
    # 10 +- 1.959964 * sqrt(25 / 100) = 10 +- 0.979982
    assert mean_interval(100, 10.0, 25.0) == pytest.approx((9.020018, 10.979982), abs=CLOSE)
    assert Mean(100, 10.0, 25.0).interval() == pytest.approx((9.020018, 10.979982), abs=CLOSE)
    assert mean_interval(1, 10.0, 0.0) == (-math.inf, math.inf)


def test_welch_mean_difference_by_hand() -> None:
    # 2.5 - 2.0 +- 1.959964 * sqrt(1/50 + 4/80) = 0.5 +- 1.959964 * 0.264575 = 0.5 +- 0.518558
    assert mean_difference_interval(50, 2.0, 1.0, 80, 2.5, 4.0) == pytest.approx((-0.018558, 1.018558), abs=CLOSE)
    assert Mean(50, 2.0, 1.0).difference(Mean(80, 2.5, 4.0)) == pytest.approx((-0.018558, 1.018558), abs=CLOSE)
    assert mean_difference_interval(1, 2.0, 0.0, 80, 2.5, 4.0) == (-math.inf, math.inf)


def test_mean_from_sums_equals_the_sample_variance() -> None:
    # per-job costs: a large mean and a small spread, where sum-of-squares cancellation bites in floats
    sample = [1000.0012, 1000.0031, 1000.0007, 1000.0019, 1000.0044, 1000.0002]
    m = Mean.from_sums(len(sample), sum(sample), sum(x * x for x in sample))
    assert m.mean == pytest.approx(statistics.mean(sample), abs=1e-9)
    assert m.variance == pytest.approx(statistics.variance(sample), rel=1e-3)
    exact = [Decimal("0.0012"), Decimal("0.0031"), Decimal("0.0007")]
    from_decimals = Mean.from_sums(3, sum(exact), sum(x * x for x in exact))
    assert from_decimals.variance == pytest.approx(float(statistics.variance(exact)), abs=1e-15)


def test_mean_from_sums_edges() -> None:
    assert Mean.from_sums(0, 0.0, 0.0) == Mean(0, 0.0, 0.0)
    assert Mean.from_sums(1, 3.0, 9.0) == Mean(1, 3.0, 0.0)
    # sums of three equal values whose rounding leaves a tiny negative: clamped to 0
    assert Mean.from_sums(3, 0.3, 0.02999999999).variance == 0.0


def test_proportion_rate() -> None:
    assert Proportion(3, 4).rate == 0.75
    assert Proportion(0, 0).rate is None


# --- verdict ---------------------------------------------------------------------------------------


def arm(
    name: str,
    cost: float,
    *,
    cost_sd: float = 0.002,
    jobs: int = 4000,
    escalated: int = 400,
    validation: tuple[int, int] = (3800, 4000),
    shadow: tuple[int, int] = (1900, 2000),
    feedback: tuple[int, float, float] = (500, 0.8, 0.01),
) -> ArmFigures:
    return ArmFigures(
        name=name,
        strategy=f"{name}-strategy",
        jobs=jobs,
        cost=Mean(jobs, cost, cost_sd**2),
        escalation=Proportion(min(escalated, jobs), jobs),
        validation=Proportion(*validation),
        shadow=Proportion(*shadow),
        feedback=Mean(*feedback),
    )


POLICY = VerdictPolicy()
CONTROL = arm("control", 0.0067)


def test_not_enough_data_names_the_short_arm() -> None:
    v = verdict(CONTROL, arm("treatment", 0.0055, jobs=150), POLICY)
    assert v.text == "not enough data yet: arm treatment has 150 of the 200 jobs needed"
    assert (v.cheaper, v.quality, v.details) == (None, "unknown", [])
    both = verdict(arm("control", 0.0067, jobs=120), arm("treatment", 0.0055, jobs=90), POLICY)
    assert both.text == "not enough data yet: arm control has 120 and arm treatment has 90 of the 200 jobs needed"


def test_cheaper_at_equal_quality() -> None:
    v = verdict(CONTROL, arm("treatment", 0.0055), POLICY)
    # 0.0055 - 0.0067 +- 1.959964 * sqrt(2 * 0.002^2 / 4000); 0.0012 / 0.0067 = 17.9%
    assert v.text == "treatment is cheaper by $0.0012 per job (95% CI $0.0011–$0.0013, 18%) at equal quality"
    assert (v.cheaper, v.quality) == ("treatment", "equal")
    assert v.cost_difference == pytest.approx((-0.0012877, -0.0011123), abs=1e-7)
    assert all(m.outcome == "equal" for m in v.measures)
    assert v.details[2] == (
        "shadow agreement: treatment 0.0 points against control (95% CI −1.4 to +1.4): "
        "not worse by more than the 2.0-point margin"
    )


def test_cheaper_but_worse_quality_is_not_a_win() -> None:
    v = verdict(CONTROL, arm("treatment", 0.0055, shadow=(1780, 2000)), POLICY)
    assert v.text == (
        "treatment is cheaper but its shadow agreement is lower by 6.0 points (95% CI 4.3–7.7): not a win"
    )
    assert (v.cheaper, v.quality) == ("treatment", "worse")
    assert v.details[2] == "shadow agreement: treatment −6.0 points against control (95% CI −7.7 to −4.3): worse"


def test_more_escalation_counts_as_worse_quality() -> None:
    v = verdict(CONTROL, arm("treatment", 0.0055, escalated=480), POLICY)
    assert v.text == (
        "treatment is cheaper but its escalation rate is higher by 2.0 points (95% CI 0.6–3.4): not a win"
    )
    fewer = verdict(CONTROL, arm("treatment", 0.0055, escalated=300), POLICY)
    assert fewer.quality == "better"
    assert fewer.text.endswith("and treatment's escalation rate is lower by 2.5 points (95% CI 1.3–3.7)")


def test_no_significant_cost_difference() -> None:
    noisy_control = arm("control", 0.0067, cost_sd=0.004)
    v = verdict(noisy_control, arm("treatment", 0.00665, cost_sd=0.004), POLICY)
    assert v.text == "no significant cost difference yet (95% CI −$0.0002 to +$0.0001 per job) at equal quality"
    assert (v.cheaper, v.quality) == (None, "equal")


def test_control_cheaper() -> None:
    v = verdict(CONTROL, arm("treatment", 0.0080), POLICY)
    assert v.text == "control is cheaper by $0.0013 per job (95% CI $0.0012–$0.0014, 16%) at equal quality"
    assert v.cheaper == "control"
    worse = verdict(CONTROL, arm("treatment", 0.0080, shadow=(1780, 2000)), POLICY)
    assert worse.text == (
        "control is cheaper by $0.0013 per job (95% CI $0.0012–$0.0014, 16%) and treatment's shadow agreement "
        "is lower by 6.0 points (95% CI 4.3–7.7): treatment is not a win"
    )


def test_a_measure_with_too_few_samples_is_left_out_and_named() -> None:
    v = verdict(CONTROL, arm("treatment", 0.0055, shadow=(20, 20)), POLICY)
    assert v.quality == "equal"  # the other measures settle it
    assert "quality cannot be compared yet: fewer than 30 shadow comparisons in an arm" in v.details
    assert v.measures[2].outcome == "unknown"


def test_quality_unknown_with_too_few_samples_everywhere() -> None:
    v = verdict(CONTROL, arm("treatment", 0.0055), VerdictPolicy(min_quality_samples=10_000))
    assert v.quality == "unknown"
    assert v.text == (
        "treatment is cheaper by $0.0012 per job (95% CI $0.0011–$0.0013, 18%); quality cannot be compared yet"
    )
    assert len(v.details) == 4 and all(d.startswith("quality cannot be compared yet") for d in v.details)


def test_quality_unknown_when_an_interval_reaches_past_the_margin() -> None:
    v = verdict(CONTROL, arm("treatment", 0.0055, shadow=(1880, 2000)), POLICY)
    assert v.quality == "unknown"
    assert v.text.endswith("; equal quality is not shown yet")
    assert v.details[2].endswith("(95% CI −2.4 to +0.4): not yet shown to be within the 2.0-point margin")


def test_money_takes_more_decimals_for_cheap_jobs() -> None:
    v = verdict(arm("control", 0.000067, cost_sd=0.00002), arm("treatment", 0.000055, cost_sd=0.00002), POLICY)
    assert v.text.startswith("treatment is cheaper by $0.000012 per job (95% CI $0.000011–$0.000013, 18%)")


# --- drift -----------------------------------------------------------------------------------------

START = datetime.date(2026, 11, 1)


def days(*counts: tuple[int, int]) -> list[DayAccuracy]:
    return [DayAccuracy(START + datetime.timedelta(days=i), right, judged) for i, (right, judged) in enumerate(counts)]


def test_the_window_pools_days_and_the_message_shows_the_counts() -> None:
    # 7 days to 2026-11-20: 164 of 200 pooled, though no single day has the 50 needed
    rows = [DayAccuracy(datetime.date(2026, 11, 14 + i), 23 if i < 4 else 24, 28 if i < 3 else 29) for i in range(7)]
    assert sum(r.right for r in rows) == 164 and sum(r.judged for r in rows) == 200
    alerts = drift_alerts(rows, DriftPolicy())
    # the first day alone has 28 judged; from the second day on the window holds enough
    assert [a.day.day for a in alerts] == [15, 16, 17, 18, 19, 20]
    assert (alerts[0].judged, alerts[1].judged) == (56, 84)
    alert = alerts[-1]
    assert alert.day == datetime.date(2026, 11, 20)
    assert alert.accuracy == pytest.approx(0.82, abs=CLOSE) and alert.judged == 200
    assert alert.message == (
        "routing accuracy 82.0% over the 7 days to 2026-11-20 (164 of 200 shadow comparisons) "
        "is below the policy minimum of 90%"
    )


def test_no_alert_below_min_samples() -> None:
    assert drift_alerts(days((5, 10), (5, 10), (5, 10), (5, 10)), DriftPolicy()) == []
    assert latest_alert(days((5, 10), (5, 10), (5, 10), (5, 10)), DriftPolicy()) is None


def test_a_drop_fires_on_the_day_the_window_falls_below() -> None:
    # window on day 8: (6 * 95 + 70) / 700 = 91.4%; on day 9: (5 * 95 + 2 * 70) / 700 = 87.9%
    rows = days(*[(95, 100)] * 7, *[(70, 100)] * 3)
    alerts = drift_alerts(rows, DriftPolicy())
    assert [a.day for a in alerts] == [START + datetime.timedelta(days=8), START + datetime.timedelta(days=9)]
    assert alerts[0].accuracy == pytest.approx(615 / 700, abs=CLOSE)


def test_the_window_is_calendar_days_and_days_are_pooled() -> None:
    # a bad day 10 days back is outside the window; two rows for one day count together
    rows = [
        DayAccuracy(datetime.date(2026, 11, 1), 0, 100),
        DayAccuracy(datetime.date(2026, 11, 11), 30, 30),
        DayAccuracy(datetime.date(2026, 11, 11), 28, 30),
    ]
    alerts = drift_alerts(rows, DriftPolicy())
    assert [a.day for a in alerts] == [datetime.date(2026, 11, 1)]
    one_day = drift_alerts(rows, DriftPolicy(window_days=1, min_samples=10, min_routing_accuracy=0.99))
    assert one_day[-1].message.startswith("routing accuracy 96.7% on 2026-11-11 (58 of 60")


def test_latest_alert_is_for_the_last_day_with_data() -> None:
    dropped = days(*[(95, 100)] * 7, *[(70, 100)] * 3)
    latest = latest_alert(dropped, DriftPolicy())
    assert latest is not None and latest.day == START + datetime.timedelta(days=9)
    # a later row with nothing judged is not "data"; a recovered window clears the alert
    assert latest_alert([*dropped, DayAccuracy(START + datetime.timedelta(days=10), 0, 0)], DriftPolicy()) == latest
    recovered = days(*[(70, 100)] * 3, *[(99, 100)] * 7)
    assert drift_alerts(recovered, DriftPolicy()) != []
    assert latest_alert(recovered, DriftPolicy()) is None
    assert latest_alert([], DriftPolicy()) is None
