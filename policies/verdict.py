"""The plain-language verdict of an A/B experiment between two routing strategies.

A treatment arm wins when it is cheaper and not worse in quality. "Not worse" is non-inferiority:
on each quality measure the confidence interval of treatment minus control must stay above minus a
small margin (`VerdictPolicy.quality_margin`), so a real but negligible drop does not block a
cheaper strategy, while an interval too wide to tell leaves the verdict open rather than calling it
equal. A measure is called worse only when its interval lies entirely on the worse side of zero.

Quality measures: validation pass rate, shadow agreement and mean feedback score (higher is better)
and escalation rate (lower is better: an escalated job paid for a second answer). Measures with too
few samples in an arm are left out and named in the details; feedback in particular is often sparse
and should not hold back a verdict the other measures settle.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Literal

import msgspec

from policies.stats import Mean, Proportion

Quality = Literal["equal", "worse", "better", "unknown"]
# "unclear": enough samples, but the interval reaches past the margin without being all below zero
Outcome = Literal["better", "equal", "worse", "unclear", "unknown"]

MINUS = "\u2212"
EN_DASH = "\u2013"
_MONEY_PLACES = (4, 6)  # fewest and most decimals for an amount per job


class ArmFigures(msgspec.Struct, frozen=True):
    name: str
    strategy: str
    jobs: int
    cost: Mean  # per job
    escalation: Proportion  # jobs escalated at least once / jobs
    validation: Proportion  # answers kept / answers returned
    shadow: Proportion  # shadow comparisons that agreed / comparisons
    feedback: Mean  # scores in 0..1


class VerdictPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    confidence: float = 0.95
    min_jobs_per_arm: int = 200
    quality_margin: float = 0.02  # non-inferiority margin: 2 points of a rate, 0.02 of a feedback score
    min_quality_samples: int = 30  # a measure with fewer samples in either arm is not judged

    def __post_init__(self) -> None:
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence {self.confidence} must be between 0 and 1")
        if self.min_jobs_per_arm < 0 or self.min_quality_samples < 0:
            raise ValueError("minimum sample counts cannot be negative")
        if not self.quality_margin >= 0.0:
            raise ValueError(f"quality margin {self.quality_margin} must be 0 or more")


class MeasureComparison(msgspec.Struct, frozen=True):
    measure: str  # "shadow agreement"
    outcome: Outcome  # for the treatment, oriented so that "better" is better
    difference: float | None  # treatment - control in the measure's own units; None when unknown
    interval: tuple[float, float]  # of that difference, at the policy's confidence


class Verdict(msgspec.Struct, frozen=True):
    text: str
    cheaper: str | None  # the cheaper arm's name, when the difference is significant
    quality: Quality  # of the treatment against the control
    cost_difference: tuple[float, float]  # CI of treatment - control, per job
    details: list[str]
    measures: tuple[MeasureComparison, ...] = ()


class _Measure(msgspec.Struct, frozen=True):
    label: str
    samples_noun: str  # "fewer than 30 {samples_noun} in an arm"
    higher_is_better: bool
    is_rate: bool  # rates are shown in percentage points, means in their own units


_ESCALATION = _Measure("escalation rate", "jobs", higher_is_better=False, is_rate=True)
_VALIDATION = _Measure("validation pass rate", "validated answers", higher_is_better=True, is_rate=True)
_SHADOW = _Measure("shadow agreement", "shadow comparisons", higher_is_better=True, is_rate=True)
_FEEDBACK = _Measure("mean feedback score", "feedback scores", higher_is_better=True, is_rate=False)


def verdict(control: ArmFigures, treatment: ArmFigures, policy: VerdictPolicy) -> Verdict:
    cost_difference = control.cost.difference(treatment.cost, policy.confidence)
    short = [arm for arm in (control, treatment) if arm.jobs < policy.min_jobs_per_arm]
    if short:
        counts = " and ".join(f"arm {arm.name} has {arm.jobs}" for arm in short)
        return Verdict(
            text=f"not enough data yet: {counts} of the {policy.min_jobs_per_arm} jobs needed",
            cheaper=None,
            quality="unknown",
            cost_difference=cost_difference,
            details=[],
        )
    measures = _compare_quality(control, treatment, policy)
    quality = _overall_quality(measures)
    low, high = cost_difference
    cheaper = treatment if high < 0.0 else control if low > 0.0 else None
    cost_text = _cost_text(control, treatment, cheaper, cost_difference, policy.confidence)
    text = _sentence(cost_text, cheaper is treatment, quality, measures, treatment.name, policy.confidence)
    return Verdict(
        text=text,
        cheaper=cheaper.name if cheaper is not None else None,
        quality=quality,
        cost_difference=cost_difference,
        details=[_measure_detail(m, treatment.name, control.name, policy) for m in measures],
        measures=tuple(m for _, m in measures),
    )


def _compare_quality(
    control: ArmFigures, treatment: ArmFigures, policy: VerdictPolicy
) -> list[tuple[_Measure, MeasureComparison]]:
    return [
        (_ESCALATION, _compare_rates(_ESCALATION, control.escalation, treatment.escalation, policy)),
        (_VALIDATION, _compare_rates(_VALIDATION, control.validation, treatment.validation, policy)),
        (_SHADOW, _compare_rates(_SHADOW, control.shadow, treatment.shadow, policy)),
        (_FEEDBACK, _compare_means(_FEEDBACK, control.feedback, treatment.feedback, policy)),
    ]


def _compare_rates(
    measure: _Measure, control: Proportion, treatment: Proportion, policy: VerdictPolicy
) -> MeasureComparison:
    # an empty arm is never judged, even with a minimum of 0
    if min(control.trials, treatment.trials) < max(1, policy.min_quality_samples):
        return MeasureComparison(measure.label, "unknown", None, (-math.inf, math.inf))
    difference = treatment.successes / treatment.trials - control.successes / control.trials
    interval = control.difference(treatment, policy.confidence)
    return MeasureComparison(measure.label, _judge(measure, interval, policy), difference, interval)


def _compare_means(measure: _Measure, control: Mean, treatment: Mean, policy: VerdictPolicy) -> MeasureComparison:
    if min(control.n, treatment.n) < max(1, policy.min_quality_samples):
        return MeasureComparison(measure.label, "unknown", None, (-math.inf, math.inf))
    interval = control.difference(treatment, policy.confidence)
    return MeasureComparison(measure.label, _judge(measure, interval, policy), treatment.mean - control.mean, interval)


def _judge(measure: _Measure, interval: tuple[float, float], policy: VerdictPolicy) -> Outcome:
    low, high = interval if measure.higher_is_better else (-interval[1], -interval[0])
    if low >= -policy.quality_margin:
        return "better" if low > 0.0 else "equal"
    if high < 0.0:
        return "worse"
    return "unclear"


def _overall_quality(measures: list[tuple[_Measure, MeasureComparison]]) -> Quality:
    outcomes = {m.outcome for _, m in measures} - {"unknown"}
    if "worse" in outcomes:
        return "worse"
    if not outcomes or "unclear" in outcomes:
        return "unknown"
    return "better" if "better" in outcomes else "equal"


def _cost_text(
    control: ArmFigures,
    treatment: ArmFigures,
    cheaper: ArmFigures | None,
    difference: tuple[float, float],
    confidence: float,
) -> str:
    low, high = difference
    if not (math.isfinite(low) and math.isfinite(high)):
        return "cost cannot be compared yet (fewer than 2 jobs in an arm)"
    scale = max(control.cost.mean, treatment.cost.mean)
    if cheaper is None:
        places = _money_places(scale)
        return (
            f"no significant cost difference yet ({_percent(confidence)} CI "
            f"{_signed_money(low, places)} to {_signed_money(high, places)} per job)"
        )
    dearer = control if cheaper is treatment else treatment
    saving = dearer.cost.mean - cheaper.cost.mean
    # the interval of the saving: treatment - control when control is cheaper, its negation otherwise
    saving_low, saving_high = (low, high) if cheaper is control else (-high, -low)
    places = max(_money_places(scale), _money_places(saving))
    share = f", {_share(saving / dearer.cost.mean)}" if dearer.cost.mean > 0.0 else ""
    return (
        f"{cheaper.name} is cheaper by {_money(saving, places)} per job ({_percent(confidence)} CI "
        f"{_money(saving_low, places)}{EN_DASH}{_money(saving_high, places)}{share})"
    )


def _sentence(
    cost_text: str,
    treatment_is_cheaper: bool,
    quality: Quality,
    measures: list[tuple[_Measure, MeasureComparison]],
    treatment_name: str,
    confidence: float,
) -> str:
    if quality == "worse":
        if treatment_is_cheaper:
            return f"{treatment_name} is cheaper but {_changes(measures, 'worse', 'its', confidence)}: not a win"
        changes = _changes(measures, "worse", f"{treatment_name}'s", confidence)
        return f"{cost_text} and {changes}: {treatment_name} is not a win"
    if quality == "better":
        joiner = "and" if treatment_is_cheaper else "but"
        owner = f"{treatment_name}'s"
        return f"{cost_text}, {joiner} {_changes(measures, 'better', owner, confidence)}"
    if quality == "equal":
        return f"{cost_text} at equal quality"
    if all(m.outcome == "unknown" for _, m in measures):
        return f"{cost_text}; quality cannot be compared yet"
    return f"{cost_text}; equal quality is not shown yet"


def _changes(
    measures: list[tuple[_Measure, MeasureComparison]], outcome: Outcome, owner: str, confidence: float
) -> str:
    """'its shadow agreement is lower by 6.1 points (95% CI 2.0-10.2)' for each measure with that outcome."""
    phrases = []
    for measure, comparison in measures:
        if comparison.outcome != outcome or comparison.difference is None:
            continue
        low, high = comparison.interval
        direction, low, high = ("higher", low, high) if comparison.difference > 0.0 else ("lower", -high, -low)
        size = _amount(measure, abs(comparison.difference))
        ci = f"{_amount(measure, low, unit=False)}{EN_DASH}{_amount(measure, high, unit=False)}"
        phrases.append(f"{owner} {measure.label} is {direction} by {size} ({_percent(confidence)} CI {ci})")
    return " and ".join(phrases)


def _measure_detail(
    pair: tuple[_Measure, MeasureComparison], treatment_name: str, control_name: str, policy: VerdictPolicy
) -> str:
    measure, comparison = pair
    if comparison.difference is None:
        return (
            f"quality cannot be compared yet: fewer than {policy.min_quality_samples} {measure.samples_noun} in an arm"
        )
    low, high = comparison.interval
    margin = _amount(measure, policy.quality_margin, unit=False) + ("-point" if measure.is_rate else "")
    judgement = {
        "better": "better",
        "equal": f"not worse by more than the {margin} margin",
        "worse": "worse",
        "unclear": f"not yet shown to be within the {margin} margin",
        "unknown": "unknown",
    }[comparison.outcome]
    return (
        f"{measure.label}: {treatment_name} {_signed_amount(measure, comparison.difference)} against {control_name} "
        f"({_percent(policy.confidence)} CI {_signed_amount(measure, low, unit=False)} to "
        f"{_signed_amount(measure, high, unit=False)}): {judgement}"
    )


def _amount(measure: _Measure, value: float, unit: bool = True) -> str:
    if measure.is_rate:
        return f"{value * 100:.1f} points" if unit else f"{value * 100:.1f}"
    return f"{value:.3f}"


def _signed_amount(measure: _Measure, value: float, unit: bool = True) -> str:
    text = _amount(measure, abs(value), unit)
    shown = round(value * 100, 1) if measure.is_rate else round(value, 3)
    # no sign on what rounds to zero: "-0.0 points" reads as a measured drop
    return text if shown == 0 else f"{MINUS if value < 0 else '+'}{text}"


def _money_places(scale: float) -> int:
    """Decimals that show two significant digits of `scale`, kept between 4 and 6."""
    fewest, most = _MONEY_PLACES
    if not (math.isfinite(scale) and scale > 0.0):
        return fewest
    return min(most, max(fewest, math.floor(-math.log10(scale)) + 2))


def _money(value: float, places: int) -> str:
    return f"${_rounded(value, places)}"


def _signed_money(value: float, places: int) -> str:
    rounded = _rounded(value, places)
    if rounded == 0:
        return f"${abs(rounded)}"
    return f"{MINUS if rounded < 0 else '+'}${abs(rounded)}"


def _rounded(value: float, places: int) -> Decimal:
    # repr keeps the float's shortest decimal form, so $0.00125 does not turn into 0.00124999...
    return Decimal(repr(value)).quantize(Decimal(1).scaleb(-places))


def _percent(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def _share(fraction: float) -> str:
    return f"{fraction * 100:.0f}%" if fraction >= 0.01 else f"{fraction * 100:.1f}%"
