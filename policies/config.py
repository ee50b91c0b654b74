"""The policies file: tiers, candidates, providers, prices, rules and limits.

Loaded and validated once at start-up; everything downstream receives the frozen `Policies`.
"""

from __future__ import annotations

import os
import tomllib
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import msgspec

from policies.drift import DriftPolicy
from policies.experiments import Experiment, experiment_problem
from policies.verdict import VerdictPolicy

CLASSIFY_QUEUE = "classify"
SHADOW_QUEUE = "shadow"

ProviderKind = Literal["anthropic", "openai", "gemini"]


class PolicyError(ValueError):
    """The policies file is wrong; the message names the field."""


class ProviderConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    kind: ProviderKind
    api_key_env: str = ""  # empty: the SDK's own variable (ANTHROPIC_API_KEY, OPENAI_API_KEY, GEMINI_API_KEY)
    base_url: str = ""  # empty: the SDK's own variable or default


class Candidate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    provider: str
    model: str


class Tier(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    candidates: list[Candidate]


class Price(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """USD per million tokens."""

    input_per_mtok: Decimal
    output_per_mtok: Decimal


class ClassifyBand(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Jobs no rule decided that still look like they might need more than the cheap tier."""

    enabled: bool = True
    min_input_tokens: int = 300
    tasks: list[str] = msgspec.field(default_factory=lambda: ["generation"])


class Rules(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    premium_features: list[str] = []
    premium_tier: str = "premium"
    input_token_threshold: int = 2000
    long_input_tier: str = "standard"
    premium_keywords: list[str] = []
    keyword_tier: str = "standard"
    default_tier: str = "cheap"
    classify: ClassifyBand = ClassifyBand()


class Classifier(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    provider: str = "openai"
    model: str = "gpt-4o-mini"
    simple_confidence: float = 0.8  # simple and confidence above this: cheapest tier
    complex_confidence: float = 0.6  # complex, or confidence below this: top tier
    safe_tier: str = "premium"  # where a job goes when the classifier's answer cannot be used
    cache_ttl_s: int = 7 * 24 * 3600  # how long a prompt's classification is reused
    prompt: str = ""  # the system prompt; empty: the built-in one (worker/classifier_worker.py)


# The classes of answers that came back 200 but are not kept (policies/answer_checks.py decides).
REFUSED, EMPTY, TRUNCATED = "refused", "empty", "truncated"
INVALID_JSON, SCHEMA_MISMATCH, UNCERTAIN = "invalid_json", "schema_mismatch", "uncertain"
ANSWER_CLASSES = (REFUSED, EMPTY, TRUNCATED, INVALID_JSON, SCHEMA_MISMATCH, UNCERTAIN)

ARTICLE_UNCERTAINTY_PHRASES = [
    "I'm not sure",
    "I don't have enough information",
    "This is unclear",
    "I cannot determine",
]


class Escalation(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """When an answer that came back 200 is not kept. On the top tier there is nowhere to climb:
    the classes in keep_on_top_tier are kept (status ok, the class recorded); the rest go to the
    dead-letter stream."""

    uncertainty_phrases: list[str] = msgspec.field(default_factory=lambda: list(ARTICLE_UNCERTAINTY_PHRASES))
    on_refusal: bool = True
    on_empty: bool = True
    on_truncation: bool = True
    validate_json: bool = True
    keep_on_top_tier: list[str] = msgspec.field(default_factory=lambda: ["uncertain", "truncated"])


class EmbeddingRouting(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Embedding-similarity routing (policies/embedding_router.py) in front of the LLM classifier:
    a job in the undecided band goes to the tier of the labelled examples it resembles, or, when it
    resembles none of them closely enough, on to the classifier model."""

    enabled: bool = False
    embedder: str = "local"  # "local" (all-MiniLM-L6-v2, the `local` extra) or "PROVIDER:MODEL"
    # JSONL of {"text", "tier"} or {"text", "label": "simple"|"complex"}; a relative path is read from
    # the policies file's folder; empty: the packaged policies/examples/routing_examples.jsonl.
    examples: str = ""
    k: int = 10  # nearest examples that vote
    # Below this cosine similarity to every example a job is ambiguous and goes to the classifier.
    # 0.5 suits all-MiniLM-L6-v2, where unrelated sentences score about 0-0.2, texts on the same
    # topic about 0.4-0.6 and paraphrases 0.7 and up; other embedders need their own value.
    threshold: float = 0.5
    premium_share_target: float | None = None  # share of jobs for the top tier: the default of `ladder calibrate`
    premium_score: float | None = None  # the cut `ladder calibrate` prints; unset: the plain tier vote


def embedder_provider(spec: str, providers: dict[str, ProviderConfig]) -> tuple[str, str]:
    """("local", "") for "local", else (provider, model) for "PROVIDER:MODEL", PROVIDER a provider of
    kind openai or gemini (Anthropic has no embeddings API)."""
    if spec == "local":
        return "local", ""
    provider, sep, model = spec.partition(":")
    if not sep or not provider or not model:
        raise PolicyError(f"embedding.embedder: '{spec}' is not 'local' or 'PROVIDER:MODEL'")
    config = providers.get(provider)
    if config is None:
        raise PolicyError(f"embedding.embedder: unknown provider '{provider}' (providers: {', '.join(providers)})")
    if config.kind not in ("openai", "gemini"):
        raise PolicyError(f"embedding.embedder: provider '{provider}' is {config.kind}, which has no embeddings API")
    return provider, model


class RateLimit(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A provider's limits for one model and account; 0 means not limited. Ladder aims at
    `headroom` of each, so clock skew against the provider's own bucket does not cost 429s."""

    rpm: int = 0
    input_tpm: int = 0  # Anthropic counts input and output tokens apart
    output_tpm: int = 0
    tpm: int = 0  # OpenAI counts them together (a request reserves its input and max output tokens)
    concurrency: int = 0
    headroom: float = 0.98


class Faults(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How a failed call is retried within a tier (escalation to the next tier is separate)."""

    rate_limit_retries: int = 5  # 429s waited out on the same model before failing over
    cooldown_s: int = 30  # after 5xx, 529 or a timeout the model is skipped by every worker this long
    max_lane_wait_s: int = 60  # a job waits this long at most for a blocked lane, then fails over
    # A run that raises in Ladder's own code, or whose worker died mid-job, counts as a try; on the
    # try after this many the job is dead-lettered with the reason instead of being run again.
    max_job_tries: int = 3
    crash_retry_delay_s: float = 5.0  # a crashed run is tried again after this many seconds times its try


class Limits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    max_prompt_chars: int = 400_000
    max_output_tokens: int = 8192
    job_timeout_s: int = 300
    # arq cancels a job this long after job_timeout_s, with nothing recorded: Ladder settles first.
    # A worker killed mid-job leaves its job until job_timeout_s + settle_margin_s + 10 s have passed.
    settle_margin_s: int = 60
    result_ttl_s: int = 7 * 24 * 3600
    # Outcome events waiting for ClickHouse (the Redis Stream) at which workers stop claiming jobs,
    # and the share of it past which they warn (worker/backlog.py). Backpressure, never trimming.
    outcome_stream_max: int = 1_000_000
    outcome_stream_warn_share: float = 0.8


class BatchLane(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The batch lane (worker/batch_lane.py): jobs that can wait are collected per tier into a
    provider's batch API (Anthropic Message Batches, OpenAI Batch), answered within the provider's
    24 h window at about half the price."""

    enabled: bool = True
    # A job whose deadline is at least this far away goes through the batch lane: the provider's 24 h
    # window, then 2 h for the sync lane to answer what the batch did not.
    min_deadline_s: int = 26 * 3600
    max_wait_s: float = 300.0  # a tier's waiting jobs are submitted once the first has waited this long
    max_requests: int = 10_000  # per provider batch (the provider's own limit applies too)
    max_bytes: int = 100 * 1024 * 1024
    poll_interval_s: float = 60.0  # how often each open batch is asked whether it has ended
    # Past this long after submission an open batch is canceled (what it answered is kept; the rest
    # goes to the sync lane). Above the providers' own 24 h window, which normally ends it first.
    cancel_after_s: int = 25 * 3600
    # One lane process works at a time, holding a lease it renews before every provider action: a
    # crashed one's successor waits this long. Keep it above the slowest single upload of a batch.
    lease_s: float = 60.0
    # Share taken off the synchronous price (0.5: half price), by model. Where a model is not named
    # here, genai-prices' batch price is used; a batch model with neither stops start-up.
    discounts: dict[str, Decimal] = {}
    # Where a job whose batch answer failed the checks goes next: the next tier's sync queue, or the
    # next tier's batch. Expired, canceled and errored requests go to their own tier's sync queue.
    escalate_to: Literal["sync", "batch"] = "sync"


class Budgets(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Monthly spend limits per customer (UTC calendar months), enforced at dispatch across all
    workers. A customer's own budget and choice come from the customers file (policies/customers.py);
    these are the defaults for customers that name none."""

    enabled: bool = True
    default_monthly_usd: Decimal | None = None  # None: customers without a budget of their own are not limited
    at_limit: Literal["reject", "downgrade"] = "reject"  # downgrade: a cheaper tier whose estimate still fits


class Strategy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A named, versioned routing policy: everything that decides a job's first tier. In the file a
    strategy names only what differs from the top-level sections (or a `file` holding them)."""

    rules: Rules = Rules()
    classifier: Classifier = Classifier()
    embedding: EmbeddingRouting = EmbeddingRouting()


class Shadow(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Shadow evaluation: a sample of the jobs that finished on a lower tier is asked again on the
    shadow tier in the background and the two answers compared (policies/shadow.py)."""

    enabled: bool = False
    sample: float = 0.02  # share of eligible jobs, chosen by a hash of the job id
    tier: str = ""  # the reference tier; empty: the top tier
    from_tiers: list[str] = []  # tiers whose answers are sampled; empty: every tier below `tier`
    judge_provider: str = ""  # the judge of free-text answers; empty: the reference tier's first candidate
    judge_model: str = ""
    rubric: str = ""  # the judge's rubric; empty: the built-in one
    agree_score: float = 0.75  # a judged or field-matched score at least this means the cheap answer was enough
    bill_customer: bool = False  # shadow calls are Ladder's cost, not the customer's, unless this is set


class Learning(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What becomes a labelled example for the next strategy version (`ladder strategy build`)."""

    escalation_labels: bool = True  # an answer that failed the checks labels its job one tier up
    feedback_low_score: float = 0.5  # feedback below this on a lower tier labels the job one tier up
    text_chars: int = 2000  # the job's text kept with a label (embedding models read far less)


class Policies(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    tiers: list[Tier]
    providers: dict[str, ProviderConfig] = {}
    rules: Rules = Rules()
    classifier: Classifier = Classifier()
    prices: dict[str, Price] = {}
    limits: Limits = Limits()
    escalation: Escalation = Escalation()
    rate_limits: dict[str, RateLimit] = {}  # keyed "provider/model", e.g. "openai/gpt-4o-mini"
    faults: Faults = Faults()
    embedding: EmbeddingRouting = EmbeddingRouting()
    budgets: Budgets = Budgets()
    strategy: str = "rules-v1"  # the name of the top-level rules, classifier and embedding sections
    strategies: dict[str, Strategy] = {}  # further versions, for experiments and for switching
    default_strategy: str = ""  # what routes jobs no experiment covers; empty: `strategy` (the top-level sections)
    experiments: list[Experiment] = []
    verdict: VerdictPolicy = VerdictPolicy()
    shadow: Shadow = Shadow()
    drift: DriftPolicy = DriftPolicy()
    learning: Learning = Learning()
    batch: BatchLane = BatchLane()

    @property
    def tier_names(self) -> list[str]:
        return [t.name for t in self.tiers]

    @property
    def top_tier(self) -> Tier:
        return self.tiers[-1]

    @property
    def middle_tier(self) -> Tier:
        """The savings report's second counterfactual: the second of three tiers (of two, the top)."""
        return self.tiers[len(self.tiers) // 2]

    @property
    def routing_strategy(self) -> str:
        """The strategy of jobs outside every experiment."""
        return self.default_strategy or self.strategy

    @property
    def strategy_names(self) -> list[str]:
        return [self.strategy, *self.strategies]

    def for_strategy(self, name: str) -> Policies:
        """These policies with the named strategy's routing sections; the top-level ones for the
        default strategy. An unknown name (a task queued before the strategy was removed) raises KeyError."""
        if name == self.strategy:
            return self
        chosen = self.strategies[name]
        return msgspec.structs.replace(
            self, rules=chosen.rules, classifier=chosen.classifier, embedding=chosen.embedding, strategy=name
        )

    @property
    def shadow_tier(self) -> str:
        return self.shadow.tier or self.top_tier.name

    def shadowed_tiers(self) -> list[str]:
        """The tiers whose answers shadow evaluation samples."""
        if self.shadow.from_tiers:
            return list(self.shadow.from_tiers)
        names = self.tier_names
        return names[: names.index(self.shadow_tier)]

    def tier(self, name: str) -> Tier:
        for t in self.tiers:
            if t.name == name:
                return t
        raise KeyError(name)

    def batch_candidate(self, tier: str) -> Candidate | None:
        """The model a tier's batch-lane jobs go to: its first candidate whose provider has a batch API
        Ladder speaks (Anthropic; OpenAI and Gemini themselves, not an OpenAI-compatible server or a
        Gemini proxy at its own base_url). None: the tier answers batch-lane jobs on the sync lane."""
        for candidate in self.tier(tier).candidates:
            config = self.providers[candidate.provider]
            if config.kind == "anthropic" or (config.kind in ("openai", "gemini") and not config.base_url):
                return candidate
        return None

    def next_tier(self, name: str) -> str | None:
        names = self.tier_names
        i = names.index(name)
        return names[i + 1] if i + 1 < len(names) else None


DEFAULT_PROVIDERS = {
    "anthropic": ProviderConfig(kind="anthropic"),
    "openai": ProviderConfig(kind="openai"),
    "gemini": ProviderConfig(kind="gemini"),
}


def _check(p: Policies) -> Policies:
    if not p.tiers:
        raise PolicyError("tiers: at least one tier is required")
    names = p.tier_names
    if len(set(names)) != len(names):
        raise PolicyError(f"tiers: duplicate tier names in {names}")
    if CLASSIFY_QUEUE in names:
        raise PolicyError(f"tiers: '{CLASSIFY_QUEUE}' is reserved for the classify queue")
    for t in p.tiers:
        if not t.candidates:
            raise PolicyError(f"tiers.{t.name}.candidates: at least one candidate is required")
        for c in t.candidates:
            if c.provider not in p.providers:
                raise PolicyError(f"tiers.{t.name}.candidates: unknown provider '{c.provider}'")
    return _check_rules(p)


def _check_strategies(p: Policies) -> Policies:
    if p.strategy in p.strategies:
        raise PolicyError(f"strategies.{p.strategy}: the top-level sections already are strategy '{p.strategy}'")
    for name in p.strategy_names:
        try:
            _check_routing(p.for_strategy(name), "" if name == p.strategy else f"strategies.{name}.")
        except PolicyError as e:
            raise PolicyError(str(e)) from None
    if p.default_strategy and p.default_strategy not in p.strategy_names:
        known = ", ".join(p.strategy_names)
        raise PolicyError(f"default_strategy: unknown strategy '{p.default_strategy}' (known: {known})")
    experiment_names = [e.name for e in p.experiments]
    if len(set(experiment_names)) != len(experiment_names):
        raise PolicyError(f"experiments: duplicate names in {experiment_names}")
    for experiment in p.experiments:
        problem = experiment_problem(experiment, set(p.strategy_names))
        if problem is not None:
            raise PolicyError(problem)
    return _check_shadow(p)


def _check_shadow(p: Policies) -> Policies:
    s, names = p.shadow, p.tier_names
    if not 0.0 <= s.sample <= 1.0:
        raise PolicyError(f"shadow.sample: {s.sample} must be between 0 and 1")
    if s.tier and s.tier not in names:
        raise PolicyError(f"shadow.tier: '{s.tier}' is not a tier (tiers: {', '.join(names)})")
    for tier in s.from_tiers:
        if tier not in names or names.index(tier) >= names.index(p.shadow_tier):
            raise PolicyError(f"shadow.from_tiers: '{tier}' is not a tier below the shadow tier '{p.shadow_tier}'")
    if s.judge_provider and s.judge_provider not in p.providers:
        raise PolicyError(f"shadow.judge_provider: unknown provider '{s.judge_provider}'")
    if bool(s.judge_provider) != bool(s.judge_model):
        raise PolicyError("shadow.judge_provider and shadow.judge_model: give both or neither")
    if not 0.0 <= s.agree_score <= 1.0:
        raise PolicyError(f"shadow.agree_score: {s.agree_score} must be between 0 and 1")
    if not 0.0 <= p.learning.feedback_low_score <= 1.0:
        raise PolicyError(f"learning.feedback_low_score: {p.learning.feedback_low_score} must be between 0 and 1")
    return _check_budgets(p)


def _check_rules(p: Policies) -> Policies:
    _check_routing(p, "")
    return _check_strategies(p)


def _check_routing(p: Policies, where: str) -> None:
    """The routing sections of one strategy; `where` prefixes field names ("strategies.v2.")."""
    names = p.tier_names
    r = p.rules
    for field, value in (
        ("premium_tier", r.premium_tier),
        ("long_input_tier", r.long_input_tier),
        ("keyword_tier", r.keyword_tier),
        ("default_tier", r.default_tier),
    ):
        if value not in names:
            raise PolicyError(f"{where}rules.{field}: '{value}' is not a tier (tiers: {', '.join(names)})")
    unknown = set(p.escalation.keep_on_top_tier) - set(ANSWER_CLASSES)
    if unknown:
        raise PolicyError(f"escalation.keep_on_top_tier: {sorted(unknown)} not among {', '.join(ANSWER_CLASSES)}")
    if p.classifier.safe_tier not in names:
        raise PolicyError(f"{where}classifier.safe_tier: '{p.classifier.safe_tier}' is not a tier")
    if p.classifier.provider not in p.providers:
        raise PolicyError(f"{where}classifier.provider: unknown provider '{p.classifier.provider}'")
    _check_embedding(p, where)


def _check_embedding(p: Policies, where: str) -> None:
    e = p.embedding
    try:
        embedder_provider(e.embedder, p.providers)
    except PolicyError as err:
        raise PolicyError(f"{where}{err}") from None
    if e.k < 1:
        raise PolicyError(f"{where}embedding.k: {e.k} must be at least 1")
    if not -1.0 <= e.threshold <= 1.0:
        raise PolicyError(f"{where}embedding.threshold: {e.threshold} is not a cosine similarity (-1 to 1)")
    if e.premium_share_target is not None and not 0.0 < e.premium_share_target < 1.0:
        raise PolicyError(f"{where}embedding.premium_share_target: {e.premium_share_target} must be between 0 and 1")
    if e.premium_score is not None and not 0.0 <= e.premium_score <= 1.0:
        raise PolicyError(f"{where}embedding.premium_score: {e.premium_score} must be between 0 and 1")


def _check_budgets(p: Policies) -> Policies:
    default = p.budgets.default_monthly_usd
    if default is not None and (not default.is_finite() or default < 0):
        raise PolicyError(f"budgets.default_monthly_usd: {default} must be a non-negative amount")
    return _check_limits(p)


def _check_limits(p: Policies) -> Policies:
    at_least_one = {
        "limits.job_timeout_s": p.limits.job_timeout_s,
        "limits.settle_margin_s": p.limits.settle_margin_s,
        "limits.outcome_stream_max": p.limits.outcome_stream_max,
        "faults.max_job_tries": p.faults.max_job_tries,
    }
    for field, value in at_least_one.items():
        if value < 1:
            raise PolicyError(f"{field}: {value} must be at least 1")
    if not 0 < p.limits.outcome_stream_warn_share <= 1:
        share = p.limits.outcome_stream_warn_share
        raise PolicyError(f"limits.outcome_stream_warn_share: {share} must be above 0 and at most 1")
    if not 0 <= p.faults.crash_retry_delay_s < 3600:
        raise PolicyError(f"faults.crash_retry_delay_s: {p.faults.crash_retry_delay_s} must be between 0 and 3600")
    return _check_batch(p)


def _check_batch(p: Policies) -> Policies:
    b = p.batch
    positive = {
        "batch.min_deadline_s": b.min_deadline_s,
        "batch.max_wait_s": b.max_wait_s,
        "batch.max_requests": b.max_requests,
        "batch.max_bytes": b.max_bytes,
        "batch.poll_interval_s": b.poll_interval_s,
        "batch.cancel_after_s": b.cancel_after_s,
        "batch.lease_s": b.lease_s,
    }
    for field, value in positive.items():
        if not value > 0:
            raise PolicyError(f"{field}: {value} must be above 0")
    for model, discount in b.discounts.items():
        if not (discount.is_finite() and 0 <= discount < 1):
            raise PolicyError(f"batch.discounts.{model}: {discount} must be a share from 0 to below 1 (0.5: half off)")
    return p


PACKAGED_EXAMPLES = "examples/routing_examples.jsonl"


def examples_path(policies: Policies) -> Path:
    """The examples file of the [embedding] section: as resolved by load_policies, or the packaged one."""
    chosen = policies.embedding.examples
    return Path(chosen) if chosen else Path(str(resources.files("policies").joinpath(PACKAGED_EXAMPLES)))


def _with_examples(p: Policies, folder: Path | None) -> Policies:
    """Resolve a relative examples path against the policies file's folder; when routing by
    embeddings is on (in any strategy), check the file now, so a bad line stops start-up with its number."""
    e = p.embedding
    if e.examples and folder is not None and not Path(e.examples).is_absolute():
        p = msgspec.structs.replace(p, embedding=msgspec.structs.replace(e, examples=str(folder / e.examples)))
    for name in p.strategy_names:
        chosen = p.for_strategy(name)
        if chosen.embedding.enabled:
            _check_examples(chosen, "" if name == p.strategy else f"strategies.{name}.")
    return p


def _check_examples(p: Policies, where: str) -> None:
    from policies.embedding_router import ExamplesError, parse_examples  # numpy: only when enabled

    path = examples_path(p)
    try:
        parse_examples(path.read_text(encoding="utf-8"), p.tier_names, str(path))
    except OSError as err:
        raise PolicyError(f"{where}embedding.examples: cannot read {path}: {err.strerror}") from None
    except ExamplesError as err:
        raise PolicyError(f"{where}embedding.examples: {err}") from None


ROUTING_SECTIONS = ("rules", "classifier", "embedding")


def _merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def _strategy_raw(raw: dict[str, Any], name: str, body: Any, folder: Path | None) -> dict[str, Any]:
    """A strategy's routing sections: the top-level ones with the strategy's own changes merged in.
    `file` names a TOML file of such sections (as `ladder strategy build` writes), relative to `folder`."""
    where = f"strategies.{name}"
    if not isinstance(body, dict):
        raise PolicyError(f"{where}: expected a table")
    body = dict(body)
    own_folder = folder
    if "file" in body:
        file = Path(str(body.pop("file")))
        if not file.is_absolute() and folder is not None:
            file = folder / file
        try:
            from_file = tomllib.loads(file.read_text(encoding="utf-8"))
        except OSError as err:
            raise PolicyError(f"{where}.file: cannot read {file}: {err.strerror}") from None
        except tomllib.TOMLDecodeError as err:
            raise PolicyError(f"{where}.file: {file} is not valid TOML: {err}") from None
        body = _merged(from_file, body)
        own_folder = file.parent
    unknown = sorted(set(body) - set(ROUTING_SECTIONS))
    if unknown:
        raise PolicyError(
            f"{where}: unknown field(s) {unknown}; a strategy holds {', '.join(ROUTING_SECTIONS)} or file"
        )
    sections = {k: _merged(raw.get(k, {}), body.get(k, {})) for k in ROUTING_SECTIONS}
    examples = str(sections["embedding"].get("examples", ""))
    if examples and not Path(examples).is_absolute():
        defined_here = "examples" in body.get("embedding", {})
        base = own_folder if defined_here else folder
        if base is not None:
            sections["embedding"]["examples"] = str(base / examples)
    return sections


def parse_policies(text: str, source: str = "<policies>", folder: Path | None = None) -> Policies:
    """`folder` is where relative paths in the file (examples, strategy files) are read from."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(f"{source}: not valid TOML: {e}") from None
    strategies = raw.pop("strategies", {})
    if not isinstance(strategies, dict):
        raise PolicyError(f"{source}: strategies: expected a table of named strategies")
    try:
        raw["strategies"] = {name: _strategy_raw(raw, name, body, folder) for name, body in strategies.items()}
    except PolicyError as e:
        raise PolicyError(f"{source}: {e}") from None
    providers = dict(DEFAULT_PROVIDERS)
    try:
        user_providers = msgspec.convert(raw.pop("providers", {}), dict[str, ProviderConfig], str_keys=True)
        providers.update(user_providers)
        raw["providers"] = {k: msgspec.to_builtins(v) for k, v in providers.items()}
        policies = msgspec.convert(raw, Policies, str_keys=True)
    except msgspec.ValidationError as e:
        raise PolicyError(f"{source}: {e}") from None
    return _check(policies)


def default_policies_text() -> str:
    return resources.files("policies").joinpath("default.toml").read_text(encoding="utf-8")


def load_policies(path: str | os.PathLike[str] | None = None) -> Policies:
    """The file named by `path`, else by LADDER_POLICIES, else the packaged default."""
    chosen = path or os.environ.get("LADDER_POLICIES")
    if not chosen:
        return _with_examples(parse_policies(default_policies_text(), "policies/default.toml"), None)
    p = Path(chosen)
    if not p.is_file():
        raise PolicyError(f"policies file not found: {p}")
    return _with_examples(parse_policies(p.read_text(encoding="utf-8"), str(p), p.parent), p.parent)
