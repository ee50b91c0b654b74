"""Embedding-similarity routing (the article's approach 3): a job goes to the tier of the labelled
examples it most resembles, or to the LLM classifier when it resembles none of them.

Examples are JSONL lines {"text": ..., "tier": "<tier name>"} or {"text": ..., "label": "simple" |
"complex"} (simple is the first tier, complex the top tier); other fields are ignored.

Scoring a job's vector q against the example vectors (all L2-normalized, so a dot product is the
cosine similarity):

1. Coverage: best = the highest similarity of q to any example. If best < `threshold`, no example
   is close enough to vouch for a tier: the job is ambiguous and `route` returns None (the caller
   sends it to the LLM classifier). Below the threshold a vote would be decided by examples that
   are not about the job at all.
2. Vote: the k nearest examples each vote for their tier with weight = their similarity to q
   (clipped at 1e-6, so a negative similarity does not vote against). The tier with the largest
   summed weight wins; a tie (within 1e-9 relative) goes to the higher tier, the safe side.
3. Calibrated cut (optional, `premium_score`, from `ladder calibrate`): the two-label score is the
   share of the vote weight on the top tier (the 'complex' share, policies.embedding.knn_vote). When
   the cut is set, a job whose share is at least the cut goes to the top tier, and any other job to
   the winner among the lower tiers. With two tiers this is RouteLLM's thresholded router: the cut
   chooses what share of jobs reaches the top tier.

Pure logic: vectors in, tier names out; reading files and embedding texts happen in the worker.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import numpy as np
import numpy.typing as npt

from policies.embedding import Vectors, knn_vote
from policies.jsonl import parse_lines

LABELS = ("simple", "complex")
_TIE = 1e-9


class ExamplesError(ValueError):
    """The examples file is wrong; the message names each bad line (up to ten)."""


class Example(msgspec.Struct, frozen=True):
    text: str
    tier: str
    line: int  # 1-based line in the examples file, for messages


class _Line(msgspec.Struct):
    text: str
    tier: str | None = None
    label: str | None = None


_line_decoder = msgspec.json.Decoder(_Line)


def _example(raw: bytes | str, number: int, tier_names: Sequence[str]) -> Example:
    try:
        line = _line_decoder.decode(raw)
    except msgspec.DecodeError as e:
        raise ValueError(str(e)) from None
    if not line.text.strip():
        raise ValueError("empty text")
    if (line.tier is None) == (line.label is None):
        raise ValueError("give exactly one of 'tier' and 'label'")
    if line.tier is not None:
        if line.tier not in tier_names:
            raise ValueError(f"tier '{line.tier}' is not a tier ({', '.join(tier_names)})")
        return Example(line.text, line.tier, number)
    if line.label not in LABELS:
        raise ValueError(f"label '{line.label}' is not one of {', '.join(LABELS)}")
    return Example(line.text, tier_names[0] if line.label == "simple" else tier_names[-1], number)


def parse_examples(text: str, tier_names: Sequence[str], source: str = "<examples>") -> list[Example]:
    """Every example of a JSONL text; ExamplesError naming the bad lines if any is wrong."""
    return parse_lines(text, lambda raw, number: _example(raw, number, tier_names), ExamplesError, source, "examples")


class EmbeddingRouter:
    def __init__(
        self,
        vectors: Vectors,
        tiers: Sequence[str],
        tier_names: Sequence[str],
        *,
        k: int = 10,
        threshold: float = 0.5,
        premium_score: float | None = None,
    ) -> None:
        """`vectors` row i is the example whose tier is `tiers[i]`; `tier_names` are the policies'
        tiers, cheapest first."""
        if len(vectors) != len(tiers) or len(tiers) == 0:
            raise ValueError(f"EmbeddingRouter: {len(vectors)} vectors for {len(tiers)} examples")
        if k < 1:
            raise ValueError("EmbeddingRouter: k must be at least 1")
        self.tier_names = list(tier_names)
        index = {name: i for i, name in enumerate(self.tier_names)}
        self._vectors = vectors
        self._tiers = np.array([index[t] for t in tiers], dtype=np.int64)  # KeyError: not a tier
        self._top = len(self.tier_names) - 1
        self.k = min(k, len(tiers))
        self.threshold = threshold
        self.premium_score = premium_score

    @classmethod
    def from_examples(
        cls,
        examples: Sequence[Example],
        vectors: Vectors,
        tier_names: Sequence[str],
        *,
        k: int = 10,
        threshold: float = 0.5,
        premium_score: float | None = None,
    ) -> EmbeddingRouter:
        tiers = [e.tier for e in examples]
        return cls(vectors, tiers, tier_names, k=k, threshold=threshold, premium_score=premium_score)

    def _nearest(self, queries: Vectors) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        sims = queries @ self._vectors.T
        nearest = np.argpartition(-sims, self.k - 1, axis=1)[:, : self.k]
        return np.take_along_axis(sims, nearest, axis=1), nearest

    def votes(self, queries: Vectors) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Per query: the similarity-weighted vote of each tier among its k nearest examples (one
        column per tier, cheapest first), and its best similarity to any example."""
        top, nearest = self._nearest(queries)
        weights = np.clip(top, 1e-6, None).astype(np.float64)
        votes = np.zeros((len(queries), len(self.tier_names)), dtype=np.float64)
        np.add.at(votes, (np.arange(len(queries))[:, None], self._tiers[nearest]), weights)
        return votes, top.max(axis=1).astype(np.float64)

    def complex_share(self, queries: Vectors) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """The two-label score per query (share of the vote on the top tier, in [0, 1]) and its best
        similarity to any example; what `ladder calibrate` thresholds."""
        return knn_vote(queries, self._vectors, self._tiers == self._top, self.k)

    def route_many(self, queries: Vectors) -> list[str | None]:
        """A tier name per query, or None when the query is ambiguous (best similarity < threshold)."""
        if len(queries) == 0:
            return []
        votes, best = self.votes(queries)
        totals = votes.sum(axis=1)
        share = votes[:, self._top] / totals
        routes: list[str | None] = []
        for row, best_sim, top_share in zip(votes, best, share, strict=True):
            if best_sim < self.threshold:
                routes.append(None)
            elif self.premium_score is not None and self._top > 0:
                cheaper = _winner(row[: self._top])
                routes.append(self.tier_names[self._top if top_share >= self.premium_score else cheaper])
            else:
                routes.append(self.tier_names[_winner(row)])
        return routes

    def route(self, query: Vectors) -> str | None:
        """One query vector (a row, or a 1 x d array) -> its tier, or None for the LLM classifier."""
        return self.route_many(np.atleast_2d(query))[0]


def _winner(votes: npt.NDArray[np.float64]) -> int:
    """The index of the largest vote; among (near-)equal largest votes, the highest index."""
    best = votes.max()
    return int(np.flatnonzero(votes >= best - _TIE * max(abs(best), 1.0))[-1])
