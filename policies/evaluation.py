"""RouteLLM's figures for a two-model router, computed exactly from per-prompt labels.

A strategy scores each prompt in [0, 1] (its estimated need for the strong model); the threshold t
sends prompts with score >= t to the strong model. Sweeping t over every distinct score, from above
the highest to the lowest, moves the strong share from 0 to 1: that is the cost-quality curve.
Between two thresholds the curve is a straight line, which is what breaking ties at random gives
in expectation; so a constant scorer, and random scoring on average, draw the straight line from
all-weak to all-strong, and the figures need no sampling of thresholds:

- quality: the mean of the chosen model's score per prompt (0..1).
- PGR (performance gap recovered) = (q(router) - q(weak)) / (q(strong) - q(weak)).
- APGR: the area under PGR against the strong share, 0..1 on the x axis. Random is 0.5 exactly;
  an oracle is above it, and can exceed 1 where the weak model beats the strong one on some prompts.
- CPT(x): the smallest strong share whose PGR reaches x (first crossing, interpolated).
- at 95%: the smallest strong share whose quality reaches 0.95 * q(strong), and the cost saved
  there against sending everything to the strong model.

PGR is undefined when the strong model is not better than the weak one on the set (a small slice
can be like that): the figures that need it are None then. Pure numpy; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]

_EPS = 1e-12
QUALITY_TARGET = 0.95
USD_PLACES = Decimal("0.000001")  # money is reported to the micro-dollar; the curve itself is float64


@dataclass(frozen=True)
class Curve:
    """Operating points, strong share increasing; point 0 is all-weak, the last all-strong."""

    thresholds: Floats  # route strong when score >= threshold (inf at point 0)
    shares: Floats  # strong share, 0..1
    quality: Floats  # mean quality, 0..1
    cost: Floats  # total USD of the set at that point
    weak_quality: float
    strong_quality: float

    @property
    def pgr(self) -> Floats | None:
        gap = self.strong_quality - self.weak_quality
        return None if gap <= _EPS else (self.quality - self.weak_quality) / gap

    def sample(self, shares: npt.ArrayLike) -> list[int]:
        """Indexes of the first real operating point at or above each share (deduplicated)."""
        wanted = np.searchsorted(self.shares, np.asarray(shares, dtype=np.float64) - 1e-9, side="left")
        return sorted({int(i) for i in np.clip(wanted, 0, len(self.shares) - 1)})


def _order_and_groups(scores: Floats) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Prompts by score descending, and the exclusive end of each group of equal scores."""
    order = np.argsort(-scores, kind="stable")
    ordered = scores[order]
    ends = np.append(np.flatnonzero(np.diff(ordered) != 0) + 1, len(ordered))
    return order, ends


def _check(*arrays: Floats) -> None:
    if len({a.shape for a in arrays}) != 1 or arrays[0].ndim != 1 or arrays[0].size == 0:
        raise ValueError(f"need equal, non-empty 1-d arrays; got shapes {[a.shape for a in arrays]}")


def curve(scores: Floats, weak: Floats, strong: Floats, weak_cost: Floats, strong_cost: Floats) -> Curve:
    _check(scores, weak, strong, weak_cost, strong_cost)
    n = len(scores)
    order, ends = _order_and_groups(scores)
    gained = np.cumsum((strong - weak)[order])[ends - 1]
    extra = np.cumsum((strong_cost - weak_cost)[order])[ends - 1]
    weak_quality = float(weak.mean())
    return Curve(
        thresholds=np.concatenate(([np.inf], scores[order][ends - 1])),
        shares=np.concatenate(([0.0], ends / n)),
        quality=weak_quality + np.concatenate(([0.0], gained)) / n,
        cost=float(weak_cost.sum()) + np.concatenate(([0.0], extra)),
        weak_quality=weak_quality,
        strong_quality=float(strong.mean()),
    )


def random_curve(weak: Floats, strong: Floats, weak_cost: Floats, strong_cost: Floats) -> Curve:
    """Random routing's expected curve: the straight line from all-weak to all-strong."""
    _check(weak, strong, weak_cost, strong_cost)
    return Curve(
        thresholds=np.array([np.inf, 0.0]),
        shares=np.array([0.0, 1.0]),
        quality=np.array([weak.mean(), strong.mean()], dtype=np.float64),
        cost=np.array([weak_cost.sum(), strong_cost.sum()], dtype=np.float64),
        weak_quality=float(weak.mean()),
        strong_quality=float(strong.mean()),
    )


def oracle_scores(weak: Floats, strong: Floats) -> Floats:
    """What a router knowing the answers would score: the strong model's gain, put on 0..1."""
    return np.clip((strong - weak + 1.0) / 2.0, 0.0, 1.0)


def first_reach(xs: Floats, ys: Floats, target: float) -> tuple[int, float] | None:
    """(segment end, fraction along it) where the piecewise-linear ys first reach target."""
    hits = np.flatnonzero(ys >= target - _EPS)
    if hits.size == 0:
        return None
    j = int(hits[0])
    if j == 0:
        return 0, 1.0
    rise = ys[j] - ys[j - 1]
    return j, float((target - ys[j - 1]) / rise) if rise > 0 else 1.0


def _along(values: Floats, at: tuple[int, float]) -> float:
    j, fraction = at
    return float(values[j]) if j == 0 else float(values[j - 1] + fraction * (values[j] - values[j - 1]))


def apgr(c: Curve) -> float | None:
    pgr = c.pgr
    return None if pgr is None else float(np.trapezoid(pgr, c.shares))


def cpt(c: Curve, target_pgr: float) -> float | None:
    """The smallest strong share (0..1) at which PGR reaches target_pgr."""
    pgr = c.pgr
    at = None if pgr is None else first_reach(c.shares, pgr, target_pgr)
    return None if at is None else _along(c.shares, at)


@dataclass(frozen=True)
class AtQuality:
    strong_share: float  # 0..1
    cost: float  # USD of the set at that share
    savings: float  # share of the all-strong cost saved, 0..1
    savings_usd: Decimal


def at_quality(c: Curve, fraction: float = QUALITY_TARGET) -> AtQuality | None:
    """The cheapest point of the curve whose quality reaches fraction * q(strong)."""
    at = first_reach(c.shares, c.quality, fraction * c.strong_quality)
    if at is None:
        return None
    cost = _along(c.cost, at)
    all_strong = float(c.cost[-1])
    saved = all_strong - cost
    return AtQuality(
        strong_share=_along(c.shares, at),
        cost=cost,
        savings=saved / all_strong if all_strong > 0 else 0.0,
        savings_usd=Decimal(repr(saved)).quantize(USD_PLACES),
    )


@dataclass(frozen=True)
class Summary:
    """A router's figures on one set; shares and savings as fractions 0..1 (None: undefined)."""

    rows: int
    apgr: float | None
    cpt50: float | None
    cpt80: float | None
    at95: AtQuality | None
    weak_quality: float
    strong_quality: float


def summarize(c: Curve, rows: int) -> Summary:
    return Summary(
        rows=rows,
        apgr=apgr(c),
        cpt50=cpt(c, 0.5),
        cpt80=cpt(c, 0.8),
        at95=at_quality(c),
        weak_quality=c.weak_quality,
        strong_quality=c.strong_quality,
    )


def fixed_route_summary(
    all_strong: bool, weak: Floats, strong: Floats, weak_cost: Floats, strong_cost: Floats
) -> Summary:
    """All-weak or all-strong: one operating point, so no APGR or CPT; the 95% figures are that
    point's when its quality reaches the target."""
    c = random_curve(weak, strong, weak_cost, strong_cost)
    j = 1 if all_strong else 0
    reaches = c.quality[j] >= QUALITY_TARGET * c.strong_quality - _EPS
    saved = float(c.cost[1] - c.cost[j])
    at95 = AtQuality(
        strong_share=float(j),
        cost=float(c.cost[j]),
        savings=saved / float(c.cost[1]) if c.cost[1] > 0 else 0.0,
        savings_usd=Decimal(repr(saved)).quantize(USD_PLACES),
    )
    return Summary(len(weak), None, None, None, at95 if reaches else None, c.weak_quality, c.strong_quality)


# ---- bootstrap ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bootstrap:
    """APGR(strategy) - APGR(baseline, random by default), with a percentile interval over prompts resampled."""

    delta: float
    low: float
    high: float
    resamples: int  # resamples where PGR was defined

    @property
    def significant(self) -> bool:
        return self.low > 0 or self.high < 0


RANDOM_APGR = 0.5  # exact on every resample: random routing's expected curve is the straight line


def _resampled_apgr(scores: Floats, gain: Floats, counts: Floats) -> Floats:
    """APGR per resample, each row of `counts` weighting the prompts by how often a draw with
    replacement took them: the order by score stays, so no resample is sorted again. NaN where the
    resample's strong model is not better than its weak one."""
    order, ends = _order_and_groups(scores)
    weights = counts[:, order]
    gained = np.cumsum(weights * gain[order], axis=1)[:, ends - 1]
    taken = np.cumsum(weights, axis=1)[:, ends - 1] / len(scores)
    total = gained[:, -1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        pgr = np.where(total > _EPS, gained / total, np.nan)
    zeros = np.zeros((len(counts), 1))
    result: Floats = np.trapezoid(np.hstack((zeros, pgr)), np.hstack((zeros, taken)), axis=1)
    return result


def _interval(point: float | None, deltas: Floats, confidence: float) -> Bootstrap | None:
    deltas = deltas[np.isfinite(deltas)]
    if point is None or deltas.size == 0:
        return None
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(deltas, [tail, 100.0 - tail])
    return Bootstrap(point, float(low), float(high), int(deltas.size))


def _point_apgr(scores: Floats, weak: Floats, strong: Floats) -> float | None:
    free = np.zeros(len(scores))
    return apgr(curve(scores, weak, strong, free, free))


def bootstrap_apgr(
    scores: Floats,
    weak: Floats,
    strong: Floats,
    baseline: Floats | None = None,
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    chunk: int = 100,
) -> Bootstrap | None:
    """APGR(scores) - APGR(baseline) over prompts resampled, the same resamples for both (paired).
    No baseline: random routing, whose APGR is RANDOM_APGR exactly on every resample."""
    _check(scores, weak, strong)
    n = len(scores)
    gain = strong - weak
    rng = np.random.default_rng(seed)
    parts: list[Floats] = []
    for start in range(0, resamples, chunk):
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=min(chunk, resamples - start)).astype(np.float64)
        other = RANDOM_APGR if baseline is None else _resampled_apgr(baseline, gain, counts)
        parts.append(_resampled_apgr(scores, gain, counts) - other)
    mine = _point_apgr(scores, weak, strong)
    theirs = RANDOM_APGR if baseline is None else _point_apgr(baseline, weak, strong)
    point = None if mine is None or theirs is None else mine - theirs
    return _interval(point, np.concatenate(parts), confidence)
