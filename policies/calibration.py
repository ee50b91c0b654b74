"""Calibrating a routing score to a premium share, as RouteLLM calibrates its routers.

A router gives each prompt a score in [0, 1] (for the embedding router, the share of its nearest
examples' vote on the top tier); a prompt goes to the strong (top) tier when score >= cut. To send a
share s of the traffic there, the cut is the (1 - s) quantile of the scores on data like the live
traffic. With per-prompt quality of the weak and the strong model's answers on that data (e.g. 0/1
graded, as in RouteLLM's benchmark files) the expected quality at the cut is the mean, over prompts,
of the strong quality where routed strong and the weak quality elsewhere.

Tied scores move together: when many prompts share the score at the cut, the share actually sent
can differ from the target by more than one prompt; `Calibration.premium_share` reports it.
"""

from __future__ import annotations

import msgspec
import numpy as np
import numpy.typing as npt


class Calibration(msgspec.Struct, frozen=True):
    cut: float  # route to the top tier when score >= cut
    target_share: float
    premium_share: float  # share of the prompts at or above the cut
    expected_quality: float  # mean quality when routed by the cut
    weak_quality: float  # mean quality with every prompt on the weak model
    strong_quality: float  # ... and with every prompt on the strong one
    recovered: float | None  # RouteLLM's PGR: (expected - weak) / (strong - weak); None if equal
    rows: int


def cut_for_share(scores: npt.ArrayLike, share: float) -> float:
    """The cut on `scores` that sends `share` (0 < share < 1) of them to the top tier."""
    if not 0.0 < share < 1.0:
        raise ValueError(f"premium share {share} must be between 0 and 1")
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        raise ValueError("no scores to calibrate on")
    # "higher" picks an actual score, so the rows at the cut are counted, not interpolated past
    return float(np.quantile(s, 1.0 - share, method="higher"))


def expected_quality(scores: npt.ArrayLike, cut: float, weak: npt.ArrayLike, strong: npt.ArrayLike) -> float:
    s, w, g = (np.asarray(a, dtype=np.float64) for a in (scores, weak, strong))
    if not s.shape == w.shape == g.shape:
        raise ValueError(f"scores, weak and strong differ in length: {s.shape}, {w.shape}, {g.shape}")
    return float(np.where(s >= cut, g, w).mean())


def calibrate(scores: npt.ArrayLike, weak: npt.ArrayLike, strong: npt.ArrayLike, share: float) -> Calibration:
    s = np.asarray(scores, dtype=np.float64)
    cut = cut_for_share(s, share)
    w_mean = float(np.mean(np.asarray(weak, dtype=np.float64)))
    g_mean = float(np.mean(np.asarray(strong, dtype=np.float64)))
    quality = expected_quality(s, cut, weak, strong)
    return Calibration(
        cut=cut,
        target_share=share,
        premium_share=float((s >= cut).mean()),
        expected_quality=quality,
        weak_quality=w_mean,
        strong_quality=g_mean,
        recovered=(quality - w_mean) / (g_mean - w_mean) if g_mean != w_mean else None,
        rows=int(s.size),
    )
