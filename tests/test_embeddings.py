"""Embedding routing: the provider embedders against the fake, the router's vote, the vector cache,
calibration, `ladder calibrate`, and one check of the real packaged local model."""

from __future__ import annotations

import base64
import importlib.util
import json
import math
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx2
import numpy as np
import openai
import pytest

from ladder.calibrate_cmd import add_calibrate_parser, run_calibrate
from policies.calibration import calibrate, cut_for_share, expected_quality
from policies.config import PolicyError, load_policies, parse_policies
from policies.embedding import Vectors, knn_vote, normalize
from policies.embedding_router import EmbeddingRouter, ExamplesError, parse_examples
from tests.fake_provider import EMBED_DIMS, FakeProvider, fake_embedding
from tests.helpers import THREE_TIERS
from worker.embedders import GeminiEmbedder, OpenAIEmbedder, _float_row, build_embedder
from worker.provider import BadRequest, Fatal, Overloaded, RateLimited, Transient
from worker.providers import MissingKeyError
from worker.vector_cache import cached_vectors, load_embedding_router

TIERS = ["cheap", "standard", "premium"]


EMBEDDERS = {"openai": (OpenAIEmbedder, "text-embedding-3-small"), "gemini": (GeminiEmbedder, "text-embedding-004")}


@pytest.fixture(params=list(EMBEDDERS))
async def embedder(
    request: pytest.FixtureRequest, sdk_env: dict[str, str]
) -> AsyncIterator[OpenAIEmbedder | GeminiEmbedder]:
    cls, model = EMBEDDERS[request.param]
    e = cls(model, batch_size=2)  # no key, no URL: the SDK reads its own variables
    yield e
    await e.aclose()


# ---- provider embedders against the fake -----------------------------------------------------------

TEXTS = [
    "Extract the total from this invoice",
    "extract the TOTAL from this invoice!",
    "A poem about the sea",
    "x y z",
    "w",
]


async def test_embedder_rows_match_the_fake_in_order_and_in_batches(
    embedder: OpenAIEmbedder, fake: FakeProvider
) -> None:
    vectors = await embedder.embed(TEXTS)

    assert vectors.dtype == np.float32 and vectors.shape == (len(TEXTS), EMBED_DIMS)
    np.testing.assert_allclose(vectors, np.array([fake_embedding(t) for t in TEXTS]), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    assert float(vectors[0] @ vectors[1]) > 0.99 > float(vectors[0] @ vectors[2])  # same words, other words
    calls = fake.calls()
    assert [c.model for c in calls] == [embedder.model] * 3  # 5 texts, batches of 2
    assert {c.provider for c in calls} == {embedder.name.split("/")[0]}
    assert [c.input_tokens for c in calls] == [math.ceil(len("\n".join(TEXTS[i : i + 2])) / 4) for i in (0, 2, 4)]


async def test_openai_embedder_counts_reported_tokens(sdk_env: dict[str, str], fake: FakeProvider) -> None:
    e = OpenAIEmbedder("text-embedding-3-small")
    await e.embed(["one two three four five"])
    await e.aclose()
    assert e.input_tokens == fake.calls()[0].input_tokens == math.ceil(len("one two three four five") / 4)


@pytest.mark.parametrize(
    ("status", "error"), [(429, RateLimited), (503, Overloaded), (500, Transient), (400, BadRequest), (401, Fatal)]
)
async def test_embedder_failures_are_mapped(
    embedder: OpenAIEmbedder, fake: FakeProvider, status: int, error: type[Exception]
) -> None:
    fake.fail(embedder.model, status, times=1)
    with pytest.raises(error) as caught:
        await embedder.embed(["a text"])
    assert len(fake.calls()) == 1  # no SDK retry
    if status == 429:
        assert caught.value.retry_after == 1.0  # type: ignore[attr-defined]
    np.testing.assert_allclose((await embedder.embed(["a text"]))[0], fake_embedding("a text"), atol=1e-6)


async def test_fake_speaks_base64_and_float_and_the_embedder_reads_both(sdk_env: dict[str, str]) -> None:
    client = openai.AsyncOpenAI(max_retries=0)
    # The SDK's default asks for base64 and decodes it; the float answer must be the same vector.
    by_sdk = await client.embeddings.create(model="m", input=["base64 please"])
    raw = await client.post(
        "/embeddings",
        body={"model": "m", "input": "base64 please", "encoding_format": "base64"},
        cast_to=httpx2.Response,
    )
    await client.close()
    encoded = raw.json()["data"][0]["embedding"]
    assert isinstance(encoded, str)
    np.testing.assert_allclose(by_sdk.data[0].embedding, fake_embedding("base64 please"), atol=1e-6)
    # a server that ignores encoding_format="float" and answers base64 is still read right
    np.testing.assert_allclose(_float_row(encoded), fake_embedding("base64 please"), atol=1e-6)
    floats = np.arange(4, dtype="<f4")
    assert _float_row(base64.b64encode(floats.tobytes()).decode()).tolist() == [0.0, 1.0, 2.0, 3.0]


def test_fake_gemini_single_embed_content(fake: FakeProvider) -> None:
    url = f"{fake.url}/v1beta/models/text-embedding-004:embedContent"
    body = {"content": {"parts": [{"text": "one"}, {"text": "two"}]}}
    answer = httpx2.post(url, json=body, headers={"x-goog-api-key": "k"})
    assert answer.status_code == 200
    np.testing.assert_allclose(answer.json()["embedding"]["values"], fake_embedding("one\ntwo"))
    assert httpx2.post(url, json=body).status_code == 401  # no key
    [ok, refused] = fake.calls()
    assert (ok.provider, ok.model, ok.input_tokens, refused.status) == ("gemini", "text-embedding-004", 2, 401)


def test_build_embedder_from_policies_specs(sdk_env: dict[str, str], fake: FakeProvider) -> None:
    policies = parse_policies(
        THREE_TIERS
        + f'\n[providers.vllm]\nkind = "openai"\nbase_url = "{fake.url}/v1"\n[providers.claude]\nkind = "anthropic"\n'
    )
    assert build_embedder("openai:text-embedding-3-small", policies, sdk_env).name == "openai/text-embedding-3-small"
    assert build_embedder("gemini:text-embedding-004", policies, sdk_env).name == "gemini/text-embedding-004"
    assert build_embedder("vllm:BAAI/bge:latest", policies, {}).name == "vllm/BAAI/bge:latest"  # no key needed
    for spec, message in [
        ("claude:x", "no embeddings API"),
        ("nope:x", "unknown provider 'nope'"),
        ("openai", "not 'local' or 'PROVIDER:MODEL'"),
    ]:
        with pytest.raises(PolicyError, match=message):
            build_embedder(spec, policies, sdk_env)
    with pytest.raises(MissingKeyError, match="OPENAI_API_KEY"):
        build_embedder("openai:text-embedding-3-small", policies, {})


async def test_build_embedder_custom_provider_reaches_its_base_url(sdk_env: dict[str, str], fake: FakeProvider) -> None:
    policies = parse_policies(THREE_TIERS + f'\n[providers.vllm]\nkind = "openai"\nbase_url = "{fake.url}/v1"\n')
    e = build_embedder("vllm:bge-small", policies, {})
    vectors = await e.embed(["hello"])
    await e.aclose()
    [call] = fake.calls()
    assert (call.model, call.api_key) == ("bge-small", "unused")
    np.testing.assert_allclose(vectors[0], fake_embedding("hello"), atol=1e-6)


# ---- the router --------------------------------------------------------------------------------------


def _unit(*rows: Sequence[float]) -> Vectors:
    return normalize(np.array(rows, dtype=np.float32))


def _at(angle_deg: float) -> list[float]:
    a = math.radians(angle_deg)
    return [math.cos(a), math.sin(a), 0.0]


def test_router_weighted_vote_and_threshold() -> None:
    # Two cheap examples 70 degrees off the query (cos 0.34 each, 0.68 in all) and one premium example
    # 10 degrees off (cos 0.98): the majority is cheap, the weight is premium.
    examples = _unit(_at(70), _at(-70), _at(10))
    router = EmbeddingRouter(examples, ["cheap", "cheap", "premium"], TIERS, k=3, threshold=0.5)
    assert router.route(_unit([1, 0, 0])) == "premium"
    votes, best = router.votes(_unit([1, 0, 0]))
    np.testing.assert_allclose(votes[0], [2 * math.cos(math.radians(70)), 0.0, math.cos(math.radians(10))], atol=1e-6)
    assert best[0] == pytest.approx(math.cos(math.radians(10)), abs=1e-6)
    # near the cheap examples only: cheap; far from all (orthogonal): ambiguous -> None
    assert router.route(_unit(_at(72))) == "cheap"
    assert router.route(_unit([0, 0, 1])) is None
    # just below / at the threshold
    assert EmbeddingRouter(_unit(_at(0)), ["cheap"], TIERS, threshold=0.5).route(_unit(_at(61))) is None
    assert EmbeddingRouter(_unit(_at(0)), ["cheap"], TIERS, threshold=0.5).route(_unit(_at(59))) == "cheap"
    assert router.route_many(_unit([1, 0, 0], [0, 0, 1], _at(72))) == ["premium", None, "cheap"]


@pytest.mark.parametrize(("low", "high"), [("cheap", "premium"), ("cheap", "standard"), ("standard", "premium")])
def test_router_tie_goes_to_the_higher_tier(low: str, high: str) -> None:
    examples = _unit(_at(30), _at(-30))  # the same similarity to the query
    for order in ([low, high], [high, low]):
        assert EmbeddingRouter(examples, order, TIERS, k=2, threshold=0.1).route(_unit([1, 0, 0])) == high


def test_router_only_the_k_nearest_vote() -> None:
    examples = _unit(_at(5), _at(40), _at(45), _at(50))
    tiers = ["cheap", "premium", "premium", "premium"]
    assert EmbeddingRouter(examples, tiers, TIERS, k=1, threshold=0.1).route(_unit(_at(0))) == "cheap"
    assert EmbeddingRouter(examples, tiers, TIERS, k=4, threshold=0.1).route(_unit(_at(0))) == "premium"


def test_complex_share_is_knn_vote_on_the_top_tier_and_the_cut_decides() -> None:
    rng = np.random.default_rng(7)
    examples, queries = normalize(rng.normal(size=(30, 8))), normalize(rng.normal(size=(20, 8)))
    tiers = [TIERS[i % 3] for i in range(30)]
    router = EmbeddingRouter(examples, tiers, TIERS, k=5, threshold=-1.0)
    share, best = router.complex_share(queries)
    expected_share, expected_best = knn_vote(queries, examples, np.array([t == "premium" for t in tiers]), 5)
    np.testing.assert_allclose(share, expected_share)
    np.testing.assert_allclose(best, expected_best)

    cut = float(np.median(share))
    routes = EmbeddingRouter(examples, tiers, TIERS, k=5, threshold=-1.0, premium_score=cut).route_many(queries)
    assert [r == "premium" for r in routes] == [s >= cut for s in share]
    assert "premium" not in [r for r, s in zip(routes, share, strict=True) if s < cut]


def test_parse_examples_labels_tiers_and_bad_lines() -> None:
    good = '{"text": "extract the date", "label": "simple"}\n\n{"text": "design a system", "label": "complex", "note": "x"}\n{"text": "summarize", "tier": "standard"}\n'
    examples = parse_examples(good, TIERS)
    assert [(e.tier, e.line) for e in examples] == [("cheap", 1), ("premium", 3), ("standard", 4)]

    bad = "\n".join(
        [
            '{"text": "ok", "tier": "cheap"}',
            '{"text": "a", "tier": "premum"}',
            "not json",
            '{"text": "b", "label": "hard"}',
            '{"text": "c"}',
            '{"text": "d", "tier": "cheap", "label": "simple"}',
            '{"text": "  ", "tier": "cheap"}',
        ]
    )
    with pytest.raises(ExamplesError) as caught:
        parse_examples(bad, TIERS, "ex.jsonl")
    message = str(caught.value)
    assert message.startswith("ex.jsonl: line 2: tier 'premum' is not a tier")
    for n in (3, 4, 5, 6, 7):
        assert f"line {n}:" in message
    assert "line 1:" not in message
    with pytest.raises(ExamplesError, match="no examples"):
        parse_examples("\n\n", TIERS)


def test_policies_embedding_section(tmp_path: Path) -> None:
    (tmp_path / "ex.jsonl").write_text('{"text": "hi", "label": "simple"}\n{"text": "bye", "tier": "gold"}\n')
    policies_file = tmp_path / "p.toml"
    policies_file.write_text(THREE_TIERS + '\n[embedding]\nenabled = true\nexamples = "ex.jsonl"\nk = 3\n')
    with pytest.raises(PolicyError, match=r"embedding.examples: .*ex.jsonl: line 2: tier 'gold' is not a tier"):
        load_policies(policies_file)

    (tmp_path / "ex.jsonl").write_text('{"text": "hi", "label": "simple"}\n')
    loaded = load_policies(policies_file).embedding
    assert (loaded.examples, loaded.k, loaded.threshold) == (str(tmp_path / "ex.jsonl"), 3, 0.5)
    assert parse_policies(THREE_TIERS).embedding.enabled is False
    for section, message in [
        ('embedder = "anthropic:x"', "no embeddings API"),
        ("k = 0", "embedding.k"),
        ("premium_share_target = 1.5", "premium_share_target"),
        ("premium_score = -0.1", "premium_score"),
        ("nope = 1", "nope"),
    ]:
        with pytest.raises(PolicyError, match=message):
            parse_policies(THREE_TIERS + f"\n[embedding]\n{section}\n")


def test_packaged_default_examples_load() -> None:
    from policies.config import examples_path

    path = examples_path(load_policies())
    examples = parse_examples(path.read_text(), TIERS, str(path))
    assert len(examples) >= 30 and {e.tier for e in examples} == {"cheap", "premium"}


# ---- the vector cache --------------------------------------------------------------------------------


class CountingEmbedder:
    def __init__(self, name: str = "count/v1") -> None:
        self.name = name
        self.calls: list[list[str]] = []

    async def embed(self, texts: Sequence[str]) -> Vectors:
        self.calls.append(list(texts))
        return normalize(np.array([fake_embedding(t) for t in texts]))

    async def aclose(self) -> None:
        return None


def _examples_policies(tmp_path: Path, lines: list[str]) -> Path:
    (tmp_path / "ex.jsonl").write_text("\n".join(lines) + "\n")
    path = tmp_path / "p.toml"
    path.write_text(THREE_TIERS + '\n[embedding]\nenabled = true\nexamples = "ex.jsonl"\nk = 2\nthreshold = 0.3\n')
    return path


async def test_cache_second_build_does_not_call_the_provider(
    tmp_path: Path, sdk_env: dict[str, str], fake: FakeProvider
) -> None:
    path = _examples_policies(
        tmp_path,
        [
            '{"text": "extract the invoice total", "label": "simple"}',
            '{"text": "design a distributed system architecture", "label": "complex"}',
        ],
    )
    policies, cache = load_policies(path), tmp_path / "cache"
    routers = []
    for _ in range(2):
        e = OpenAIEmbedder("text-embedding-3-small")
        routers.append(await load_embedding_router(policies, e, cache))
        await e.aclose()
    assert len(fake.calls()) == 1
    assert len(list(cache.glob("*.npy"))) == 1
    query = normalize(np.array([fake_embedding("please extract the invoice total")]))
    assert routers[0].route(query) == routers[1].route(query) == "cheap"
    query = normalize(np.array([fake_embedding("the architecture of a distributed system")]))
    assert routers[1].route(query) == "premium"


async def test_cache_key_follows_embedder_and_texts_not_labels(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = ['{"text": "a b", "label": "simple"}', '{"text": "c d", "label": "complex"}']
    e = CountingEmbedder()
    await load_embedding_router(load_policies(_examples_policies(tmp_path, first)), e, cache)
    await load_embedding_router(load_policies(_examples_policies(tmp_path, first)), e, cache)
    assert len(e.calls) == 1
    relabelled = ['{"text": "a b", "tier": "standard"}', '{"text": "c d", "label": "complex"}']
    router = await load_embedding_router(load_policies(_examples_policies(tmp_path, relabelled)), e, cache)
    assert len(e.calls) == 1  # the vectors do not depend on the labels
    assert router.route(normalize(np.array([fake_embedding("a b")]))) == "standard"
    edited = ['{"text": "a b e", "label": "simple"}', '{"text": "c d", "label": "complex"}']
    await load_embedding_router(load_policies(_examples_policies(tmp_path, edited)), e, cache)
    assert len(e.calls) == 2
    other = CountingEmbedder("count/v2")
    await load_embedding_router(load_policies(_examples_policies(tmp_path, edited)), other, cache)
    assert len(other.calls) == 1


async def test_cache_recomputes_a_damaged_file(tmp_path: Path) -> None:
    e = CountingEmbedder()
    await cached_vectors(e, ["a", "b"], tmp_path)
    [file] = tmp_path.glob("*.npy")
    file.write_bytes(b"garbage")
    vectors = await cached_vectors(e, ["a", "b"], tmp_path)
    assert len(e.calls) == 2 and vectors.shape == (2, EMBED_DIMS)
    await cached_vectors(e, ["a", "b"], tmp_path)
    assert len(e.calls) == 2


# ---- calibration -------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [101, 1000, 7])
@pytest.mark.parametrize("share", [0.05, 0.3, 0.5, 0.77])
def test_cut_sends_the_asked_share_within_one_row(n: int, share: float) -> None:
    scores = np.random.default_rng(n).random(n)
    cut = cut_for_share(scores, share)
    assert abs(int((scores >= cut).sum()) - share * n) <= 1


def test_calibration_expected_quality() -> None:
    scores = np.linspace(0, 1, 10, endpoint=False)  # 0.0, 0.1, ..., 0.9
    weak = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0, 0])  # the weak model fails the four hardest
    strong = np.ones(10)
    result = calibrate(scores, weak, strong, 0.3)
    assert result.cut == pytest.approx(0.7)
    assert result.premium_share == pytest.approx(0.3)
    assert result.expected_quality == pytest.approx(0.9)  # the hardest three fixed, 0.6 still wrong
    assert (result.weak_quality, result.strong_quality) == (pytest.approx(0.6), 1.0)
    assert result.recovered == pytest.approx(0.75)
    assert expected_quality(scores, 0.6, weak, strong) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="between 0 and 1"):
        cut_for_share(scores, 1.0)


def test_ladder_calibrate_command(
    tmp_path: Path, sdk_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LADDER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LADDER_POLICIES", raising=False)
    rows = [{"prompt": f"extract the total from invoice {i}", "weak_score": 1, "strong_score": 1} for i in range(6)] + [
        {"prompt": f"design and analyze a distributed architecture {i}", "weak_score": 0, "strong_score": 1}
        for i in range(4)
    ]
    rows.append({"prompt": "leaked", "weak_score": 0, "strong_score": 1, "contaminated": True})
    dataset = tmp_path / "bench.jsonl"
    dataset.write_text("\n".join(json.dumps(r) for r in rows) + "\n")

    import argparse

    parser = argparse.ArgumentParser()
    add_calibrate_parser(parser.add_subparsers(dest="command"))
    argv = ["calibrate", str(dataset), "--premium-share", "0.4", "--embedder", "openai:emb", "--format", "json"]
    assert run_calibrate(parser.parse_args(argv)) == 0
    payload = json.loads(capsys.readouterr().out)
    [row] = payload["rows"]
    assert row["rows"] == 10 and row["premium share"] == pytest.approx(0.4)
    assert row["expected quality"] == pytest.approx(1.0)  # the four design prompts are the top-scored
    assert any("1 contaminated rows dropped" in n for n in payload["notes"])
    assert any("premium_score" in n for n in payload["notes"])

    assert run_calibrate(parser.parse_args([*argv[:2], "--embedder", "openai:emb"])) == 2  # no share anywhere
    assert "--premium-share" in capsys.readouterr().err


# ---- the real local model ----------------------------------------------------------------------------

_HAS_LOCAL = importlib.util.find_spec("sentence_transformers") is not None


@pytest.mark.skipif(not _HAS_LOCAL, reason="sentence-transformers is not installed (the 'local' extra)")
async def test_local_embedder_puts_paraphrases_closer_than_unrelated_text() -> None:
    from worker.embedders import LocalEmbedder

    e = LocalEmbedder()
    v = await e.embed(
        [
            "How do I reset my password?",
            "What are the steps to change my account password?",
            "The quarterly revenue grew by twelve percent in Europe.",
        ]
    )
    assert v.shape == (3, 384) and v.dtype == np.float32
    paraphrase, unrelated = float(v[0] @ v[1]), float(v[0] @ v[2])
    assert paraphrase > 0.5 > unrelated  # the default threshold separates them
    assert paraphrase > unrelated + 0.3
