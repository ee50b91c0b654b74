"""`ladder report experiment`: per-arm figures from outcomes and scores built by hand, checked exactly
against figures computed here from the same numbers, shadow calls kept out of cost per job, and the
verdict in plain words."""

from __future__ import annotations

import statistics
from decimal import Decimal

import pytest

from ladder.messages import Outcome, RouteSource, Routing, Score, ScoreSource, Status
from ladder.report import Filters, Reports
from ladder.report_experiment import ARM_COLUMNS, arm_table, experiment_json, experiment_report, summary_table
from policies.config import parse_policies
from policies.stats import mean_difference_interval, mean_interval, wilson_interval
from tests.helpers import THREE_TIERS
from tests.test_reports import outcome, score
from worker.clickhouse import ClickHouse

EXPERIMENT = "lean-default"
# The control is listed first in the policies, though "lean" comes first by name.
POLICIES_TEXT = (
    THREE_TIERS
    + f"""
[strategies."rules-v2"]
rules = {{ default_tier = "standard" }}

[[experiments]]
name = "{EXPERIMENT}"
arms = [
  {{ name = "stay", strategy = "rules-v1", share = 0.5 }},
  {{ name = "lean", strategy = "rules-v2", share = 0.5 }},
]

[verdict]
quality_margin = 0.15
"""
)
POLICIES = parse_policies(POLICIES_TEXT)
SHADOW_COST = Decimal("0.05")


def arm_data(
    arm: str, strategy: str, jobs: int, base: str, step: str
) -> tuple[list[Outcome], list[Score], list[Decimal]]:
    """`jobs` settled jobs of one arm; returns their rows, their scores, and each job's cost (shadow excluded).

    Job i answers for base + step * (i % 5); every 10th escalated first (an uncertain, billed answer),
    every 3rd was classified, every 4th shadow-evaluated (2 of those judged wrong, and every 4th + 2 a
    comparison that could not tell), every 5th has feedback (1.0 or 0.6)."""
    outcomes: list[Outcome] = []
    scores: list[Score] = []
    costs: list[Decimal] = []
    for i in range(jobs):
        job = f"{arm}-{i}"
        tag: dict[str, object] = dict(job_id=job, experiment=EXPERIMENT, arm=arm, strategy=strategy)
        rows = [outcome(event_id=f"{job}#final", cost=Decimal(base) + Decimal(step) * (i % 5), **tag)]
        if i % 10 == 0:
            rows.append(outcome(event_id=f"{job}#esc", status=Status.ESCALATED, error_class="uncertain", final=False,
                                cost=Decimal("0.002"), **tag))  # fmt: skip
        if i % 3 == 0:
            rows.append(outcome(event_id=f"{job}#cls", route_source=RouteSource.CLASSIFIER, intended_tier="classify",
                                tier="classify", final=False, cost=Decimal("0.0001"), **tag))  # fmt: skip
        costs.append(sum((r.cost for r in rows), Decimal(0)))
        if i % 4 == 0:  # status ok, no error: it would count as a passed answer if it were one
            rows.append(outcome(event_id=f"{job}#shadow", route_source=RouteSource.SHADOW, tier="premium",
                                final=False, cost=SHADOW_COST, **tag))  # fmt: skip
            routing = Routing.WRONG if i % 50 == 0 else Routing.RIGHT
            scores.append(score(job_id=job, experiment=EXPERIMENT, arm=arm, strategy=strategy, routing=routing))
        if i % 4 == 2:
            scores.append(score(job_id=job, experiment=EXPERIMENT, arm=arm, routing=Routing.UNKNOWN, score=0.5))
        if i % 5 == 0:
            scores.append(score(job_id=job, experiment=EXPERIMENT, arm=arm, source=ScoreSource.FEEDBACK,
                                score=1.0 if i % 10 == 0 else 0.6, routing=Routing.UNKNOWN))  # fmt: skip
        outcomes += rows
    return outcomes, scores, costs


@pytest.fixture
def loaded(clickhouse: ClickHouse) -> tuple[Reports, dict[str, list[Decimal]]]:
    stay = arm_data("stay", "rules-v1", 200, base="0.010", step="0.001")
    lean = arm_data("lean", "rules-v2", 200, base="0.004", step="0.0005")
    # Outside the experiment, and another experiment's rows: not counted.
    others = [outcome(), outcome(experiment="other", arm="stay", cost=Decimal(9))]
    clickhouse.insert_outcomes(stay[0] + lean[0] + others)
    clickhouse.insert_scores(stay[1] + lean[1] + [score(experiment="other", arm="stay", routing=Routing.WRONG)])
    return Reports(clickhouse, POLICIES), {"stay": stay[2], "lean": lean[2]}


def test_each_arms_figures_are_exact_with_their_intervals(loaded: tuple[Reports, dict[str, list[Decimal]]]) -> None:
    reports, costs = loaded
    report = experiment_report(reports, EXPERIMENT, Filters())
    assert [a.figures.name for a in report.arms] == ["stay", "lean"]  # the policies' order: control first
    for arm in report.arms:
        f = arm.figures
        job_costs = costs[f.name]
        assert f.strategy == {"stay": "rules-v1", "lean": "rules-v2"}[f.name] and arm.in_policies
        assert f.jobs == 200
        # cost per job: every call but the shadow call, the classifier's included
        assert arm.cost_total == sum(job_costs, Decimal(0))
        assert f.cost.n == 200 and f.cost.mean == pytest.approx(float(sum(job_costs) / 200), rel=1e-12)
        floats = [float(c) for c in job_costs]
        expected = mean_interval(200, statistics.fmean(floats), statistics.variance(floats))
        assert f.cost.interval() == pytest.approx(expected, rel=1e-9)
        assert arm.shadow_cost == 50 * SHADOW_COST
        assert (f.escalation.successes, f.escalation.trials) == (20, 200)
        assert (f.validation.successes, f.validation.trials) == (200, 220)  # 20 uncertain answers; shadow apart
        assert (f.shadow.successes, f.shadow.trials) == (48, 50)  # the 50 "could not tell" are not judged
        assert f.shadow.interval() == wilson_interval(48, 50)
        assert f.feedback.n == 40 and f.feedback.mean == pytest.approx(0.8)
        assert f.feedback.variance == pytest.approx(statistics.variance([1.0, 0.6] * 20))

    csv = arm_table(report)
    assert csv.columns == ARM_COLUMNS
    stay = dict(zip(ARM_COLUMNS, csv.rows[0], strict=True))
    assert stay["cost_per_job"] == (sum(costs["stay"], Decimal(0)) / 200).quantize(Decimal("1e-12"))
    assert (stay["escalation_rate"], stay["passed"], stay["answers"], stay["shadow_judged"]) == (0.1, 200, 220, 50)
    assert (stay["cost_per_job_low"], stay["cost_per_job_high"]) == report.arms[0].figures.cost.interval()
    assert stay["shadow_cost"] == Decimal("2.50")


def test_a_cheaper_treatment_at_equal_quality_wins_in_plain_words(
    loaded: tuple[Reports, dict[str, list[Decimal]]],
) -> None:
    reports, costs = loaded
    report = experiment_report(reports, EXPERIMENT, Filters())
    [v] = report.verdicts
    assert (v.control, v.treatment) == ("stay", "lean")
    assert v.verdict.cheaper == "lean" and v.verdict.quality == "equal"
    # 0.012 against 0.005 per answer on average; escalations and classifier calls alike in both arms
    assert v.verdict.text == "lean is cheaper by $0.0070 per job (95% CI $0.0068\u2013$0.0072, 57%) at equal quality"
    stay_costs, lean_costs = ([float(c) for c in costs[arm]] for arm in ("stay", "lean"))
    expected = mean_difference_interval(200, statistics.fmean(stay_costs), statistics.variance(stay_costs), 200,
                                        statistics.fmean(lean_costs), statistics.variance(lean_costs))  # fmt: skip
    assert v.verdict.cost_difference == pytest.approx(expected, rel=1e-9)
    assert any(d.startswith("shadow agreement: lean") for d in v.verdict.details)

    data = experiment_json(report)
    assert [a["arm"] for a in data["arms"]] == ["stay", "lean"]
    lean = data["arms"][1]
    assert lean["jobs"] == 200 and lean["shadow_cost"] == "2.500000000000"
    assert set(lean["cost_per_job"]) == {"mean", "low", "high"} and lean["cost_per_job"]["low"] > 0
    assert lean["shadow_agreement"] == {"successes": 48, "trials": 50, "rate": 0.96, "low": pytest.approx(
        wilson_interval(48, 50)[0]), "high": pytest.approx(wilson_interval(48, 50)[1])}  # fmt: skip
    assert data["verdicts"][0]["text"] == v.verdict.text and data["verdicts"][0]["cheaper"] == "lean"
    summary = summary_table(report)
    low, high = wilson_interval(20, 200)
    assert summary.columns == ["", "stay (control)", "lean"]
    assert summary.rows[3] == ("escalation", *[f"10.0% ({low * 100:.1f}\u2013{high * 100:.1f}) of 200"] * 2)
    assert summary.rows[-1] == ("shadow cost (apart)", "$2.5", "$2.5")


def test_not_enough_data_yet(clickhouse: ClickHouse) -> None:
    stay = arm_data("stay", "rules-v1", 5, base="0.010", step="0.001")
    lean = arm_data("lean", "rules-v2", 7, base="0.004", step="0.0005")
    clickhouse.insert_outcomes(stay[0] + lean[0])
    report = experiment_report(Reports(clickhouse, POLICIES), EXPERIMENT, Filters())
    [v] = report.verdicts
    assert v.verdict.text == "not enough data yet: arm stay has 5 and arm lean has 7 of the 200 jobs needed"
    assert [a.figures.jobs for a in report.arms] == [5, 7]


def test_an_experiment_gone_from_the_policies_is_ordered_by_name(
    loaded: tuple[Reports, dict[str, list[Decimal]]], clickhouse: ClickHouse
) -> None:
    report = experiment_report(Reports(clickhouse, parse_policies(THREE_TIERS)), EXPERIMENT, Filters())
    assert [a.figures.name for a in report.arms] == ["lean", "stay"]
    assert report.arms[1].figures.strategy == "rules-v1" and not report.arms[1].in_policies  # from the rows
    assert report.notes[0].startswith("the experiment is no longer in the policies: arms are ordered by name")
    assert report.verdicts[0].control == "lean"


def test_filters_and_the_name_are_parameters(
    loaded: tuple[Reports, dict[str, list[Decimal]]], clickhouse: ClickHouse
) -> None:
    reports, _ = loaded
    hostile = experiment_report(reports, "x' OR '1'='1", Filters())
    assert hostile.arms == [] and hostile.verdicts == []
    assert hostile.notes == [
        "no experiment named \"x' OR '1'='1\" in the policies, and no outcomes carry it (all outcomes)"
    ]
    nobody = experiment_report(reports, EXPERIMENT, Filters(customer="acme' OR '1'='1"))
    assert nobody.arms == [] and nobody.notes[0].startswith(f"experiment '{EXPERIMENT}': no outcomes yet (customer")
    assert experiment_report(reports, EXPERIMENT, Filters(batch="b")).arms[0].figures.jobs == 200
    assert clickhouse.query("SELECT count() FROM {db}.outcomes WHERE experiment != ''")[0][0] > 400
