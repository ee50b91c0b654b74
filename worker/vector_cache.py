"""Vectors of fixed texts (routing examples, calibration datasets) kept on disk between starts, and
the start-up step that builds the embedding router from them.

A file is named by the embedder's name and a hash of the texts, in order: another embedder or an
edited text makes a new file, while editing only a label reuses the vectors (they do not depend on
it). Files are written whole to a temporary name and renamed, so workers starting together never
read half a file; an unreadable or mismatched file is recomputed. Old files are never removed:
each is a few hundred KB, and `rm -r $LADDER_HOME/cache/embeddings` is always safe.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from policies.config import Policies, examples_path
from policies.embedding import Embedder, Vectors
from policies.embedding_router import EmbeddingRouter, parse_examples


def cache_dir(data_dir: Path) -> Path:
    """Where vectors live under LADDER_HOME (Settings.data_dir)."""
    return data_dir / "cache" / "embeddings"


def cache_key(embedder_name: str, texts: Sequence[str]) -> str:
    digest = hashlib.sha256(embedder_name.encode())
    for text in texts:
        data = text.encode()
        digest.update(len(data).to_bytes(8, "little"))  # length-prefixed: ["ab", "c"] != ["a", "bc"]
        digest.update(data)
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '_', embedder_name)}-{digest.hexdigest()[:32]}"


def _read(path: Path, rows: int) -> Vectors | None:
    try:
        vectors: Vectors = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if vectors.ndim != 2 or len(vectors) != rows or vectors.dtype != np.float32:
        return None
    return vectors


def _write(path: Path, vectors: Vectors) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npy")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, vectors, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


async def cached_vectors(embedder: Embedder, texts: Sequence[str], directory: Path) -> Vectors:
    """The embedder's vectors of `texts`, from the cache when present, else embedded and stored."""
    path = directory / f"{cache_key(embedder.name, texts)}.npy"
    cached = _read(path, len(texts))
    if cached is not None:
        return cached
    vectors = await embedder.embed(texts)
    _write(path, vectors)
    return vectors


async def load_embedding_router(policies: Policies, embedder: Embedder, directory: Path) -> EmbeddingRouter:
    """The router of the policies' [embedding] section: its examples file parsed (ExamplesError
    names bad lines), their vectors from the cache or the embedder, its k, threshold and cut."""
    path = examples_path(policies)
    examples = parse_examples(path.read_text(encoding="utf-8"), policies.tier_names, str(path))
    vectors = await cached_vectors(embedder, [e.text for e in examples], directory)
    e = policies.embedding
    return EmbeddingRouter.from_examples(
        examples, vectors, policies.tier_names, k=e.k, threshold=e.threshold, premium_score=e.premium_score
    )
