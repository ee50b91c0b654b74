"""`ladder report experiment NAME`: an A/B experiment's arms side by side, with intervals, and its verdict.

Per arm: jobs settled, cost per job, escalation and validation pass rates from the raw outcomes of
the experiment (the rollup has no arm, and cost per job needs each job's own sum: the experiment's
skip index keeps the read to its rows), then shadow agreement and feedback from the scores. Each
job's cost is summed in ClickHouse and only the count, sum and sum of squares per arm come back,
exact, for policies.stats to build the mean and its interval. Shadow evaluation calls are the cost of
measuring quality, not of answering: they are left out of cost per job and shown on their own.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import msgspec

from ladder.messages import Status
from ladder.report import Filters, Reports, Table, filter_where, money_text, scores_query
from policies.experiments import Experiment
from policies.stats import Mean, Proportion
from policies.verdict import ArmFigures, Verdict, verdict

PICO = Decimal("1e-12")  # the outcomes' cost scale
_ANSWER = "tier != {classify:String} AND route_source != {shadow:String}"  # a call that answered the job

# Per job (its cost without shadow calls, whether it settled, escalated, how its answers fared), then
# per arm. Decimal256 holds the squares of Decimal(38, 12) costs and their sum without rounding.
# Inner and outer aliases differ: ClickHouse would read an alias inside the other expressions.
ARM_JOBS = f"""
SELECT arm, any(job_strategy), countIf(settled), sumIf(job_cost, settled),
       sumIf(toDecimal256(job_cost, 12) * toDecimal256(job_cost, 12), settled),
       countIf(settled AND escalated), sumIf(passed, settled), sumIf(problems, settled),
       sum(job_shadow_cost), countIf(NOT settled)
FROM (
    SELECT arm, job_id, anyIf(strategy, route_source != {{shadow:String}}) AS job_strategy,
           max(final) AS settled,
           sumIf(cost, route_source != {{shadow:String}}) AS job_cost,
           max(status = {{escalated:String}} AND route_source != {{shadow:String}}) AS escalated,
           countIf(status = 'ok' AND error_class = '' AND {_ANSWER}) AS passed,
           countIf(error_class IN {{answer_classes:Array(String)}} AND {_ANSWER}) AS problems,
           sumIf(cost, route_source = {{shadow:String}}) AS job_shadow_cost
    FROM {{db}}.outcomes FINAL {filter_where("toDate(finished_at)")} AND experiment = {{experiment:String}}
    GROUP BY arm, job_id
)
GROUP BY arm
"""  # noqa: S608 (fixed text: the filters and the name are parameters)

ARM_SCORES = scores_query(
    "SELECT arm, countIf(source = {shadow_scores:String} AND routing = {right:Int8}), "
    "countIf(source = {shadow_scores:String} AND routing != {unknown:Int8}), countIf(source = {feedback:String}), "
    "sumIf(score, source = {feedback:String}), sumIf(score * score, source = {feedback:String})",
    "AND experiment = {experiment:String} GROUP BY arm",
)


class ArmResult(msgspec.Struct, frozen=True):
    figures: ArmFigures
    cost_total: Decimal  # of the settled jobs, shadow calls excluded
    shadow_cost: Decimal  # shadow evaluation calls on the arm's jobs
    in_policies: bool


class ArmVerdict(msgspec.Struct, frozen=True):
    control: str
    treatment: str
    verdict: Verdict


class ExperimentReport(msgspec.Struct, frozen=True):
    name: str
    title: str
    arms: list[ArmResult]  # the control first
    verdicts: list[ArmVerdict]  # each other arm against the control
    notes: list[str]
    confidence: float


def experiment_report(reports: Reports, name: str, filters: Filters) -> ExperimentReport:
    policies = reports.policies
    defined = next((e for e in policies.experiments if e.name == name), None)
    params = {"experiment": name, "escalated": Status.ESCALATED.value}
    jobs = {str(r[0]): r[1:] for r in reports.query(ARM_JOBS, filters, **params)}
    title = f"experiment {name} ({filters.describe()})"
    confidence = policies.verdict.confidence
    if not jobs:
        return ExperimentReport(name, title, [], [], [_nothing(name, defined, filters)], confidence)
    scores = {str(r[0]): r[1:] for r in reports.query(ARM_SCORES, filters, **params)}
    strategies = {a.name: a.strategy for a in defined.arms} if defined else {}
    unknown = sorted((set(jobs) | set(scores)) - set(strategies))
    arms = [_arm(arm, strategies, jobs.get(arm), scores.get(arm)) for arm in [*strategies, *unknown]]
    control = arms[0]
    verdicts = [
        ArmVerdict(control.figures.name, t.figures.name, verdict(control.figures, t.figures, policies.verdict))
        for t in arms[1:]
    ]
    in_flight = sum(int(row[8]) for row in jobs.values())
    return ExperimentReport(name, title, arms, verdicts, _notes(defined, unknown, arms, in_flight), confidence)


def _nothing(name: str, defined: Experiment | None, filters: Filters) -> str:
    if defined is None:
        return f"no experiment named {name!r} in the policies, and no outcomes carry it ({filters.describe()})"
    return f"experiment {name!r}: no outcomes yet ({filters.describe()})"


def _arm(
    name: str, strategies: dict[str, str], jobs: tuple[Any, ...] | None, scores: tuple[Any, ...] | None
) -> ArmResult:
    strategy, settled, cost, cost_squares, escalated, passed, problems, shadow_cost, _ = jobs or ("", *[0] * 8)
    right, judged, feedback, feedback_sum, feedback_squares = scores or (0, 0, 0, 0.0, 0.0)
    figures = ArmFigures(
        name=name,
        strategy=strategies.get(name) or str(strategy),
        jobs=int(settled),
        cost=Mean.from_sums(int(settled), Decimal(cost), Decimal(cost_squares)),
        escalation=Proportion(int(escalated), int(settled)),
        validation=Proportion(int(passed), int(passed) + int(problems)),
        shadow=Proportion(int(right), int(judged)),
        feedback=Mean.from_sums(int(feedback), float(feedback_sum), float(feedback_squares)),
    )
    return ArmResult(figures, Decimal(cost), Decimal(shadow_cost), name in strategies)


def _notes(defined: Experiment | None, unknown: list[str], arms: list[ArmResult], in_flight: int) -> list[str]:
    notes = []
    if defined is None:
        notes.append(
            f"the experiment is no longer in the policies: arms are ordered by name and {arms[0].figures.name}, "
            "the first, is taken as the control"
        )
    elif unknown:
        notes.append(f"arms not in the policies' experiment, listed last: {', '.join(unknown)}")
    if in_flight:
        notes.append(
            f"{in_flight:,} jobs without a final row in the period are left out (in flight, or settled outside it)"
        )
    shadow = sum((a.shadow_cost for a in arms), Decimal(0))
    notes += [
        "jobs: settled jobs; cost per job: every call made for it, classifier and escalations included, shadow "
        f"evaluation excluded (shadow cost, {money_text(shadow)} in all, is the cost of measuring)",
        "escalation: jobs escalated at least once; validation pass: answers kept without an answer problem; "
        "shadow agreement: shadow comparisons that found the cheaper answer good enough; feedback: mean score 0..1",
    ]
    return notes


# ---- output: a summary for people (table, html), numbers for machines (csv, json)


def summary_table(report: ExperimentReport) -> Table:
    """One column per arm, the control first, one row per figure with its interval: arms are few and
    the figures many, so this reads down a terminal instead of across it."""
    c = report.confidence
    arms = report.arms
    columns = ["", *(f"{a.figures.name} (control)" if i == 0 else a.figures.name for i, a in enumerate(arms))]
    rows = [
        ("strategy", *(a.figures.strategy for a in arms)),
        ("jobs", *(a.figures.jobs for a in arms)),
        (f"cost per job ({c:.0%} CI)", *(_money_with_interval(a.cost_total, a.figures.cost, c) for a in arms)),
        ("escalation", *(_rate_with_interval(a.figures.escalation, c) for a in arms)),
        ("validation pass", *(_rate_with_interval(a.figures.validation, c) for a in arms)),
        ("shadow agreement", *(_rate_with_interval(a.figures.shadow, c) for a in arms)),
        ("feedback", *(_mean_with_interval(a.figures.feedback, c) for a in arms)),
        ("shadow cost (apart)", *(money_text(a.shadow_cost) for a in arms)),
    ]
    return Table(report.title, columns, rows, report.notes)


def verdict_lines(report: ExperimentReport) -> list[str]:
    lines = []
    for v in report.verdicts:
        lines.append(f"verdict, {v.treatment} against {v.control}: {v.verdict.text}")
        lines += [f"  {detail}" for detail in v.verdict.details]
    return lines


ARM_COLUMNS = [
    "arm", "strategy", "jobs", "cost_total", "cost_per_job", "cost_per_job_low", "cost_per_job_high",
    "escalated", "escalation_rate", "escalation_low", "escalation_high",
    "passed", "answers", "validation_pass_rate", "validation_low", "validation_high",
    "shadow_agreed", "shadow_judged", "shadow_agreement", "shadow_low", "shadow_high",
    "feedback", "feedback_mean", "feedback_low", "feedback_high", "shadow_cost",
]  # fmt: skip


def arm_table(report: ExperimentReport) -> Table:
    """Every figure and interval as a number (rates as fractions 0..1, intervals at the verdict's
    confidence), for CSV; None where a figure does not exist yet."""
    c = report.confidence
    rows = []
    for a in report.arms:
        f = a.figures
        rows.append(
            (f.name, f.strategy, f.jobs, a.cost_total, _exact_mean(a), *_bounds(f.cost.interval(c)),
             f.escalation.successes, *_rate(f.escalation, c),
             f.validation.successes, f.validation.trials, *_rate(f.validation, c),
             f.shadow.successes, f.shadow.trials, *_rate(f.shadow, c),
             *_mean(f.feedback, c), a.shadow_cost)
        )  # fmt: skip
    return Table(report.title, ARM_COLUMNS, rows, report.notes)


def experiment_json(report: ExperimentReport) -> dict[str, Any]:
    c = report.confidence
    arms = [
        {
            "arm": a.figures.name,
            "strategy": a.figures.strategy,
            "in_policies": a.in_policies,
            "jobs": a.figures.jobs,
            "cost_total": str(a.cost_total),
            "cost_per_job": _cost_json(a, c),
            "escalation": _proportion_json(a.figures.escalation, c),
            "validation": _proportion_json(a.figures.validation, c),
            "shadow_agreement": _proportion_json(a.figures.shadow, c),
            "feedback": dict(zip(("n", "mean", "low", "high"), _mean(a.figures.feedback, c), strict=True)),
            "shadow_cost": str(a.shadow_cost),
        }
        for a in report.arms
    ]
    verdicts = [
        {
            "control": v.control,
            "treatment": v.treatment,
            "text": v.verdict.text,
            "details": v.verdict.details,
            "cheaper": v.verdict.cheaper,
            "quality": v.verdict.quality,
            "cost_difference": _bounds(v.verdict.cost_difference),
        }
        for v in report.verdicts
    ]
    return {"experiment": report.name, "title": report.title, "confidence": c, "arms": arms, "verdicts": verdicts,
            "notes": report.notes}  # fmt: skip


def _exact_mean(arm: ArmResult) -> Decimal | None:
    return (arm.cost_total / arm.figures.jobs).quantize(PICO) if arm.figures.jobs else None


def _cost_json(arm: ArmResult, confidence: float) -> dict[str, Any]:
    mean = _exact_mean(arm)
    low, high = _bounds(arm.figures.cost.interval(confidence))
    return {"mean": None if mean is None else str(mean), "low": low, "high": high}


def _bounds(interval: tuple[float, float]) -> list[float | None]:
    """An interval with None for an unbounded end (too few samples), which JSON and CSV can hold."""
    return [v if math.isfinite(v) else None for v in interval]


def _rate(p: Proportion, confidence: float) -> tuple[float | None, float | None, float | None]:
    """The rate and its interval; none of them when nothing was tried."""
    if not p.trials:
        return (None, None, None)
    low, high = p.interval(confidence)
    return (p.rate, low, high)


def _proportion_json(p: Proportion, confidence: float) -> dict[str, Any]:
    rate, low, high = _rate(p, confidence)
    return {"successes": p.successes, "trials": p.trials, "rate": rate, "low": low, "high": high}


def _mean(m: Mean, confidence: float) -> tuple[Any, ...]:
    return (m.n, m.mean if m.n else None, *_bounds(m.interval(confidence)))


def _money_with_interval(total: Decimal, cost: Mean, confidence: float) -> str:
    if not cost.n:
        return "-"
    places = _places(cost.mean)
    mean = f"${(total / cost.n):.{places}f}"
    low, high = cost.interval(confidence)
    if not math.isfinite(low):
        return mean
    return f"{mean} ({low:.{places}f}\u2013{high:.{places}f})"


def _places(value: float) -> int:
    """Decimals for three significant digits of an amount per job, between 4 and 8."""
    if value <= 0.0:
        return 4
    return min(8, max(4, 2 - math.floor(math.log10(value))))


def _rate_with_interval(p: Proportion, confidence: float) -> str:
    if not p.trials:
        return "-"
    low, high = p.interval(confidence)
    return f"{p.successes / p.trials:.1%} ({low * 100:.1f}\u2013{high * 100:.1f}) of {p.trials:,}"


def _mean_with_interval(m: Mean, confidence: float) -> str:
    if not m.n:
        return "-"
    low, high = m.interval(confidence)
    interval = f" ({low:.3f}\u2013{high:.3f})" if math.isfinite(low) else ""
    return f"{m.mean:.3f}{interval} n={m.n:,}"
