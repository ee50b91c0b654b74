"""Confidence intervals for the figures an A/B experiment compares: rates and means, and their differences.

Rates (escalation, validation pass, shadow agreement) use the Wilson score interval, which stays inside
[0, 1] and keeps its coverage near 0 and 1, where the plain normal interval collapses to a point.
The difference of two rates uses Newcombe's hybrid score interval (method 10 of Newcombe 1998), built
from the two Wilson intervals, so it inherits their behaviour at the edges.

Means (cost per job, feedback score) use the normal approximation, and the difference of two means
the Welch standard error (no equal-variance assumption) with a normal quantile instead of Student's t.
That is fine where a verdict is given at all: from 100 jobs per arm up (the verdict's default minimum
is 200) the t quantile differs from the normal one by under 1%, and cost per job, though skewed,
has a mean that is close to normal at those sizes by the central limit theorem.

Every difference is "second minus first" (treatment minus control in an experiment).
"""

from __future__ import annotations

import math
from decimal import Decimal, localcontext
from statistics import NormalDist

import msgspec

_SUM_PRECISION = 60  # digits: sums of squares of per-job costs cancel almost entirely in the variance
_UNBOUNDED = (-math.inf, math.inf)


def z_for(confidence: float) -> float:
    """The two-sided normal quantile: 1.96 for 0.95."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence {confidence} must be between 0 and 1")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for successes/trials; (0, 1) when nothing was tried."""
    _check_counts(successes, trials)
    if trials == 0:
        return (0.0, 1.0)
    z = z_for(confidence)
    z2 = z * z
    rate = successes / trials
    denominator = 1.0 + z2 / trials
    centre = (rate + z2 / (2.0 * trials)) / denominator
    half_width = z / denominator * math.sqrt(rate * (1.0 - rate) / trials + z2 / (4.0 * trials * trials))
    # At 0 or all successes the bound is exactly 0 or 1; rounding would otherwise leave it a hair off
    lower = 0.0 if successes == 0 else max(0.0, centre - half_width)
    upper = 1.0 if successes == trials else min(1.0, centre + half_width)
    return (lower, upper)


def proportion_difference_interval(s1: int, n1: int, s2: int, n2: int, confidence: float = 0.95) -> tuple[float, float]:
    """Newcombe's hybrid score interval for s2/n2 - s1/n1; (-1, 1) when either arm tried nothing."""
    _check_counts(s1, n1)
    _check_counts(s2, n2)
    if n1 == 0 or n2 == 0:
        return (-1.0, 1.0)
    p1, p2 = s1 / n1, s2 / n2
    low1, high1 = wilson_interval(s1, n1, confidence)
    low2, high2 = wilson_interval(s2, n2, confidence)
    difference = p2 - p1
    lower = difference - math.sqrt((p2 - low2) ** 2 + (high1 - p1) ** 2)
    upper = difference + math.sqrt((high2 - p2) ** 2 + (p1 - low1) ** 2)
    return (max(-1.0, lower), min(1.0, upper))


def mean_interval(n: int, mean: float, variance: float, confidence: float = 0.95) -> tuple[float, float]:
    """Normal-approximation interval for a mean; unbounded below two observations (no variance yet)."""
    if n < 2:
        return _UNBOUNDED
    half_width = z_for(confidence) * math.sqrt(variance / n)
    return (mean - half_width, mean + half_width)


def mean_difference_interval(
    n1: int, mean1: float, var1: float, n2: int, mean2: float, var2: float, confidence: float = 0.95
) -> tuple[float, float]:
    """Interval for mean2 - mean1 with the Welch standard error; unbounded when an arm has under two."""
    if n1 < 2 or n2 < 2:
        return _UNBOUNDED
    half_width = z_for(confidence) * math.sqrt(var1 / n1 + var2 / n2)
    difference = mean2 - mean1
    return (difference - half_width, difference + half_width)


class Proportion(msgspec.Struct, frozen=True):
    successes: int
    trials: int

    def __post_init__(self) -> None:
        _check_counts(self.successes, self.trials)

    @property
    def rate(self) -> float | None:
        """None when nothing was tried: a rate of 0 would read as a measured one."""
        return self.successes / self.trials if self.trials else None

    def interval(self, confidence: float = 0.95) -> tuple[float, float]:
        return wilson_interval(self.successes, self.trials, confidence)

    def difference(self, other: Proportion, confidence: float = 0.95) -> tuple[float, float]:
        """Interval for other.rate - self.rate."""
        return proportion_difference_interval(self.successes, self.trials, other.successes, other.trials, confidence)


class Mean(msgspec.Struct, frozen=True):
    n: int
    mean: float
    variance: float  # sample variance (n - 1 denominator); 0 below two observations

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError(f"count {self.n} is negative")
        if not self.variance >= 0.0:  # also rejects NaN
            raise ValueError(f"variance {self.variance} is negative")

    @classmethod
    def from_sums(cls, n: int, total: float | Decimal, total_of_squares: float | Decimal) -> Mean:
        """From a count, a sum and a sum of squares, as a database aggregates them.

        The textbook (sum of squares - sum^2 / n) cancels catastrophically in floating point when the
        spread is small next to the mean; done exactly in Decimal (a float converts exactly) the only
        error left is what the sums already carry, and a tiny negative from that is clamped to 0.
        """
        if n < 0:
            raise ValueError(f"count {n} is negative")
        if n == 0:
            return cls(0, 0.0, 0.0)
        with localcontext() as context:
            context.prec = _SUM_PRECISION
            exact_total = Decimal(total)
            mean = exact_total / n
            if n == 1:
                return cls(1, float(mean), 0.0)
            variance = (Decimal(total_of_squares) - exact_total * exact_total / n) / (n - 1)
        return cls(n, float(mean), max(0.0, float(variance)))

    @property
    def standard_error(self) -> float:
        return math.sqrt(self.variance / self.n) if self.n >= 2 else math.inf

    def interval(self, confidence: float = 0.95) -> tuple[float, float]:
        return mean_interval(self.n, self.mean, self.variance, confidence)

    def difference(self, other: Mean, confidence: float = 0.95) -> tuple[float, float]:
        """Interval for other.mean - self.mean."""
        return mean_difference_interval(
            self.n, self.mean, self.variance, other.n, other.mean, other.variance, confidence
        )


def _check_counts(successes: int, trials: int) -> None:
    if not 0 <= successes <= trials:
        raise ValueError(f"{successes} successes of {trials} trials: need 0 <= successes <= trials")
