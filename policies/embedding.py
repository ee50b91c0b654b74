"""Embedding similarity as a routing signal: the Embedder seam and the nearest-example vote.

No I/O here: embedders (local model, provider APIs) live in worker/embedders.py; this module only
decides from vectors. Vectors are float32 rows, L2-normalized, so a dot product is the cosine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]


class Embedder(Protocol):
    name: str  # names the model, e.g. "local/all-MiniLM-L6-v2"; part of every vector cache key

    async def embed(self, texts: Sequence[str]) -> Vectors:
        """One L2-normalized float32 row per text."""
        ...

    async def aclose(self) -> None: ...


def normalize(vectors: npt.ArrayLike) -> Vectors:
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return (v / np.where(norms == 0, 1, norms)).astype(np.float32)


def knn_vote(
    queries: Vectors, examples: Vectors, complex_labels: npt.NDArray[np.bool_], k: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """For each query: the similarity-weighted share of 'complex' among its k nearest examples, and
    its highest similarity to any example (how well the examples cover it at all)."""
    if len(examples) == 0:
        raise ValueError("knn_vote: no examples")
    k = min(k, len(examples))
    sims = queries @ examples.T
    nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    top = np.take_along_axis(sims, nearest, axis=1)
    weights = np.clip(top, 1e-6, None)
    share = (weights * complex_labels[nearest]).sum(axis=1) / weights.sum(axis=1)
    return share.astype(np.float64), top.max(axis=1).astype(np.float64)
