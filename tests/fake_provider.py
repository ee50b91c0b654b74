"""A fake LLM provider: one stdlib HTTP/1.1 server speaking the three providers' wire formats.

Routes (POST, JSON bodies with Content-Length or chunked; keep-alive; any number of connections):

- Anthropic Messages      /v1/messages
- OpenAI Chat Completions /v1/chat/completions  (response_format is accepted and ignored)
- Gemini generateContent  /v1/models/{model}:generateContent and /v1beta/models/{model}:generateContent
- OpenAI Embeddings       /v1/embeddings  (input: a string or a list of strings; encoding_format float or base64)
- Gemini embeddings       /v1[beta]/models/{model}:embedContent and :batchEmbedContents

Anything else answers 404 with a JSON body. A request without an API key (x-api-key, Authorization:
Bearer, x-goog-api-key or ?key=) answers 401 in the provider's error format. Every 401 and 403 to a
request with a key echoes that key whole in its error message (a provider or proxy at its worst);
`reject_key(model, status=401)` refuses every call of a model that way.

Deterministic token counting, the same for the three formats:

- the request text is every text in the request, system included (Anthropic `system`, OpenAI system
  messages, Gemini `systemInstruction`), joined with "\\n";
  input_tokens = max(1, ceil(len(request text) / 4));
- the reply is the text of the model's first `reply_when(model, contains, text)` rule whose substring
  occurs in one of the request's texts (system included), else the text set with `reply(model, text)`,
  else f"[{model}] " + the first 120 characters of the last user message;
  output_tokens = max(1, ceil(len(reply) / 4));
- when output_tokens exceeds the request's limit (max_tokens / max_completion_tokens /
  generationConfig.maxOutputTokens), the reply is cut to limit * 4 characters, output_tokens = limit
  and the finish reason is "max_tokens" / "length" / "MAX_TOKENS" (else "end_turn" / "stop" / "STOP").

Embeddings are deterministic and need no model: each text's words (lowercased \\w+ runs) are hashed
into EMBED_DIMS signed buckets and the counts L2-normalized, so texts sharing words are close and
texts sharing none are near orthogonal. Their calls are recorded with input_tokens = the tokens of the
inputs joined with "\\n" (the rule above) and output_tokens = 0; OpenAI's answer carries them as
usage.prompt_tokens.

Failures set with `fail()` answer with the provider's error body (429s carry `retry-after: 1`) and are
recorded with zero tokens. Every request to one of the routes is recorded as a `Call`. `fail_rate(model,
status, rate)` makes that share of the model's calls fail at random (a seeded generator per model).

Rate limits, as providers enforce them: `limit(model, rpm=..., tpm=...)` (optionally `input_tpm`,
`output_tpm`) gives the model one token bucket per limit, holding at most the per-minute figure and
refilling continuously at figure / 60 per second; the buckets start full. A request takes 1 from the
requests bucket as it arrives, and the tokens counted for its answer (input + output for `tpm`) from
the token buckets; one that does not fit answers 429 in the provider's error format with `retry-after`
= the seconds until it would fit, rounded up, and takes nothing. Answers to a limited model carry the
provider's rate-limit headers (OpenAI `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`;
Anthropic `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}`,
where input/output report the `tpm` bucket when no input_tpm/output_tpm is set; Gemini sends none and
says the wait in a RetryInfo detail of the 429 body). A call failed by `fail`/`fail_rate` still counts
as a request but gives its tokens back.

A fault storm, `storm(seed, error_rate=0.2, malformed_rate=0.1, models=None)`, answers a share of every
model's chat calls (or of `models`' calls; embeddings are spared) with a fault, recorded in
`Call.answer` ("" for an ordinary answer):

- error_rate, in equal parts: "error_500" (500), "overloaded" (529 for Anthropic, 503 for OpenAI and
  Gemini), "held" (no answer at all: the connection is held until the client hangs up or `hold_s`
  passes, then closed; recorded with status 0, what a client's timeout is for);
- malformed_rate, in equal parts, all 200s: "bad_json" (the answer's body cut in half), "missing_fields"
  (no content / choices / candidates), "wrong_types" (a usage count that is a word), "empty_answer"
  (a well-formed answer with empty text), "not_json" (prose, to a request that asked for JSON: OpenAI
  response_format, Gemini responseMimeType, an Anthropic system prompt naming JSON; to any other
  request this draw is an "empty_answer").

`faults=[...]` narrows the kinds drawn (each rate is then shared among its kinds named there), and
`hold_s` bounds how long a held call is held. Faults and unreadable bodies are recorded with zero
tokens (the client can read none); the two well-formed kinds with their tokens, as answers are. Each
draw is seeded by the seed, the model, the request body and how many times that body was sent before,
so the same requests meet the same faults whatever the order they arrive in. It runs after
`fail`/`fail_rate` and the rate limits.

Batch APIs (tests/fake_batches.py, reached as `fake.batches`): Anthropic Message Batches
(/v1/messages/batches...), OpenAI Batch with its Files (/v1/batches..., /v1/files...) and Gemini batch
mode with inline requests (/v1beta/models/{model}:batchGenerateContent, /v1beta/batches...). A batch's
requests are answered as the routes above would answer them (reply rules, token counting, truncation;
no rate limits, storm or fail/fail_rate), only when a test moves the batch: `end`, `end_partially`,
`expire`, a cancel through the API, or with `auto_end_s` set the first GET that long after its
creation. Each answered request is one `Call` with `batch` = the batch id; expired and canceled
requests are not billed, so not recorded. `fail_items(model, rate, kind)` errors a seeded share of a
model's batch requests; `submitted()` lists the batches, their requests and how often their results
were read.

Counters per model, in both modes: `stats()` and `GET /_fake/stats` answer
{model: {"ok": n, "429": n, "5xx": n, "other": n}}. Control over HTTP (what a benchmark driving the
process uses): `POST /_fake/fail` {"model", "status", "rate"[, "seed"]} and `POST /_fake/limit`
{"model", "rpm", "tpm"[, "input_tpm", "output_tpm"]}; on the command line `--limit
gpt-4o-mini:rpm=600,tpm=200000` (repeatable).

In tests: `fake = FakeProvider().start()`, then point the SDKs at `fake.env()`. For benchmarks:
`python -m tests.fake_provider --port 8765` prints "ready http://127.0.0.1:8765" and serves until killed
(that process keeps no Call records; fail/reply/reply_when/storm are in-process only, fail_rate/limit/stats
also over HTTP).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import itertools
import json
import math
import random
import re
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

REPLY_PREFIX_CHARS = 120
CHARS_PER_TOKEN = 4
# Shaped like real keys and carrying the canary marker (tests/canary.py fails a test where it shows).
DEFAULT_KEYS = {
    "ANTHROPIC_API_KEY": "sk-ant-api03-LADDERCANARY-fake-KEY-123",
    "OPENAI_API_KEY": "sk-proj-LADDERCANARY-fake-KEY-456",
    "GEMINI_API_KEY": "AIzaSyLADDERCANARY-fake-KEY-789",
}
# What reject_key() answers: the wording of the providers' own refusals, with the whole key in it,
# as some proxies (and OpenAI itself, partly masked) put it there.
KEY_IN_MESSAGE = "{api_key}"
_REJECTIONS = {
    401: f"Incorrect API key provided: {KEY_IN_MESSAGE}. You can find your API key in your account settings.",
    403: f"The API key {KEY_IN_MESSAGE} is not permitted to use this model.",
}
_GEMINI_PATH = re.compile(r"^/(?:v1|v1beta)/models/([^/]+):generateContent$")
_GEMINI_EMBED_PATH = re.compile(r"^/(?:v1|v1beta)/models/([^/]+):(embedContent|batchEmbedContents)$")
_WORD = re.compile(r"\w+")
EMBED_DIMS = 64
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Payload Too Large",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    529: "Overloaded",
}
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
    503: "overloaded_error",
}
_OPENAI_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}
_GEMINI_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


@dataclass(frozen=True)
class Call:
    provider: str  # "anthropic" | "openai" | "gemini"
    model: str
    input_tokens: int
    output_tokens: int
    status: int  # HELD (0): no answer was sent
    api_key: str = field(repr=False)  # a failing assertion that prints a Call must not show it
    answer: str = ""  # the storm's fault (STORM_FAULTS), "" for an ordinary answer
    batch: str = ""  # the provider batch id the call was answered in (tests/fake_batches.py), "" for a sync call


_Response = tuple[int, dict[str, str], bytes]

HELD = 0  # the status of a call the storm holds without an answer
STORM_ERRORS = ("error_500", "overloaded", "held")
STORM_MALFORMED = ("bad_json", "missing_fields", "wrong_types", "empty_answer", "not_json")
STORM_FAULTS = STORM_ERRORS + STORM_MALFORMED
_UNREADABLE = ("bad_json", "missing_fields", "wrong_types")
NOT_JSON_ANSWER = "Sure! Here is what you asked for, in a few words."
# Where each wire format keeps its answer, and one of its usage counts.
_ANSWER_FIELD = {"anthropic": "content", "openai": "choices", "gemini": "candidates"}
_USAGE_FIELD = {
    "anthropic": ("usage", "input_tokens"),
    "openai": ("usage", "prompt_tokens"),
    "gemini": ("usageMetadata", "promptTokenCount"),
}


@dataclass
class _Storm:
    seed: int
    error_rate: float
    malformed_rate: float
    models: frozenset[str] | None  # None: every model
    hold_s: float
    errors: tuple[str, ...]  # the kinds error_rate is shared among
    malformed: tuple[str, ...]  # the kinds malformed_rate is shared among
    sent: dict[bytes, int] = field(default_factory=dict)  # digest of (model, body) -> times seen


class _BadRequest(Exception):
    pass


class _Bucket:
    """A per-minute limit: holds at most `capacity`, refills continuously at capacity / 60 per second."""

    def __init__(self, capacity: int, now: float) -> None:
        self.capacity = capacity
        self.rate = capacity / 60.0
        self.level = float(capacity)
        self.at = now

    def refill(self, now: float) -> None:
        self.level = min(float(self.capacity), self.level + max(0.0, now - self.at) * self.rate)
        self.at = now

    def wait(self, cost: int) -> float:
        """Seconds until `cost` fits (a cost above capacity waits for a full bucket)."""
        return max(0.0, (min(cost, self.capacity) - self.level) / self.rate)

    def reset(self) -> float:
        """Seconds until the bucket is full again."""
        return (self.capacity - self.level) / self.rate


# bucket name -> (OpenAI header suffix, Anthropic header part)
_LIMIT_HEADERS = {
    "requests": ("requests", "requests"),
    "tokens": ("tokens", "tokens"),
    "input_tokens": ("", "input-tokens"),
    "output_tokens": ("", "output-tokens"),
}


def _tokens(text: str) -> int:
    return max(1, -(-len(text) // CHARS_PER_TOKEN))


def _texts(content: Any) -> list[str]:
    """Texts of an Anthropic/OpenAI content (a string or a list of blocks) or of Gemini parts."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    if isinstance(content, dict):
        content = content.get("parts", [content])
    if not isinstance(content, list):
        raise _BadRequest("content must be a string or a list of blocks")
    return [b["text"] for b in content if isinstance(b, dict) and isinstance(b.get("text"), str)]


def _parse_anthropic(body: dict[str, Any]) -> tuple[str, list[str], str, int | None]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not isinstance(body.get("max_tokens"), int):
        raise _BadRequest("messages and max_tokens are required")
    texts = _texts(body.get("system"))
    last_user = ""
    for m in messages:
        parts = _texts(m.get("content"))
        texts += parts
        if m.get("role") == "user":
            last_user = "\n".join(parts)
    return str(body.get("model", "")), texts, last_user, body["max_tokens"]


def _parse_openai(body: dict[str, Any]) -> tuple[str, list[str], str, int | None]:
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise _BadRequest("messages is required")
    texts: list[str] = []
    last_user = ""
    for m in messages:
        parts = _texts(m.get("content"))
        texts += parts
        if m.get("role") == "user":
            last_user = "\n".join(parts)
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    return str(body.get("model", "")), texts, last_user, limit if isinstance(limit, int) else None


def _parse_gemini(body: dict[str, Any]) -> tuple[list[str], str, int | None]:
    contents = body.get("contents")
    if isinstance(contents, dict):
        contents = [contents]
    if not isinstance(contents, list):
        raise _BadRequest("contents is required")
    system = body.get("systemInstruction") or body.get("system_instruction")
    texts = _texts(system)
    last_user = ""
    for c in contents:
        parts = _texts(c)
        texts += parts
        if c.get("role", "user") == "user":
            last_user = "\n".join(parts)
    config = body.get("generationConfig") or body.get("generation_config") or {}
    limit = config.get("maxOutputTokens", config.get("max_output_tokens"))
    return texts, last_user, limit if isinstance(limit, int) else None


def _error_body(provider: str, status: int, message: str) -> dict[str, Any]:
    if provider == "anthropic":
        kind = _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": message}}
    if provider == "openai":
        kind, code = _OPENAI_TYPES.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
        return {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return {"error": {"code": status, "message": message, "status": _GEMINI_STATUS.get(status, "UNKNOWN")}}


class FakeProvider:
    """The server and its control API; safe to drive from another thread than the server's."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._lock = threading.Lock()
        self._calls: list[Call] = []
        self._failures: dict[str, list[Any]] = {}  # model -> [status, remaining times | None, message]
        self._replies: dict[str, str] = {}
        self._reply_rules: dict[str, list[tuple[str, str]]] = {}  # model -> [(substring, reply)], in order
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._keep_calls = True  # off on the command line: nobody reads them there, memory would grow
        self._clock: Callable[[], float] = time.monotonic  # tests may replace it
        self._limits: dict[str, dict[str, _Bucket]] = {}  # model -> bucket name -> bucket
        self._fail_rates: dict[str, tuple[int, float, random.Random, str]] = {}  # model -> status, rate, rng, msg
        self._stats: dict[str, dict[str, int]] = {}
        self._storm: _Storm | None = None
        self._hold_s = 30.0  # how long a held call is held at most (storm's hold_s)
        from tests.fake_batches import FakeBatches  # here, not on top: that module imports this one

        self.batches = FakeBatches(self)

    # ---- control API -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> FakeProvider:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._listen())
            except BaseException as exc:  # surfaced to the caller of start()
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                for task in asyncio.all_tasks(loop):
                    task.cancel()
                with contextlib.suppress(BaseException):
                    loop.run_until_complete(asyncio.sleep(0))
                loop.close()

        self._thread = threading.Thread(target=run, name=f"fake-provider-{self.port}", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._close(), loop).result(timeout=5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        self._loop = self._thread = None

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def env(self, keys: dict[str, str] | None = None) -> dict[str, str]:
        values = {
            "ANTHROPIC_BASE_URL": self.url,
            "OPENAI_BASE_URL": self.url + "/v1",
            "GOOGLE_GEMINI_BASE_URL": self.url,
            **DEFAULT_KEYS,
        }
        values.update(keys or {})
        return values

    def fail(self, model: str, status: int = 500, times: int | None = None, message: str = "simulated failure") -> None:
        with self._lock:
            if times is not None and times <= 0:
                self._failures.pop(model, None)
            else:
                self._failures[model] = [status, times, message]

    def reject_key(self, model: str, status: int = 401) -> None:
        """Refuse every call to the model as an invalid (401) or forbidden (403) key, with the key
        the call carried echoed whole in the error message, as a provider or proxy at its worst."""
        if status not in _REJECTIONS:
            raise ValueError(f"status {status} is not a key refusal (401 or 403)")
        self.fail(model, status, message=_REJECTIONS[status])

    def fail_rate(
        self, model: str, status: int, rate: float, *, seed: int = 0, message: str = "simulated failure"
    ) -> None:
        """Fail a share `rate` of the model's calls with `status`, chosen at random (seeded); rate 0 stops."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate {rate} is not a share between 0 and 1")
        with self._lock:
            if rate == 0:
                self._fail_rates.pop(model, None)
            else:
                self._fail_rates[model] = (status, rate, random.Random(f"{seed}:{model}"), message)

    def storm(
        self,
        seed: int,
        error_rate: float = 0.2,
        malformed_rate: float = 0.1,
        models: Iterable[str] | None = None,
        *,
        faults: Iterable[str] = STORM_FAULTS,
        hold_s: float = 30.0,
    ) -> None:
        """A fault storm over `models` (None: all), as the module says; both rates 0 end it. Each rate is
        shared among the kinds of its group named in `faults` (all by default)."""
        wanted = set(faults)
        if wanted - set(STORM_FAULTS):
            raise ValueError(f"unknown faults {sorted(wanted - set(STORM_FAULTS))}: the faults are {STORM_FAULTS}")
        errors = tuple(f for f in STORM_ERRORS if f in wanted)
        malformed = tuple(f for f in STORM_MALFORMED if f in wanted)
        for name, rate, kinds in (("error_rate", error_rate, errors), ("malformed_rate", malformed_rate, malformed)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} {rate} is not a share between 0 and 1")
            if rate and not kinds:
                raise ValueError(f"{name} is {rate} but faults names none of its kinds")
        if error_rate + malformed_rate > 1.0:
            raise ValueError(f"error_rate + malformed_rate = {error_rate + malformed_rate} is more than 1")
        with self._lock:
            if error_rate == malformed_rate == 0:
                self._storm = None
                return
            chosen = None if models is None else frozenset(models)
            self._storm = _Storm(seed, error_rate, malformed_rate, chosen, hold_s, errors, malformed)
            self._hold_s = hold_s

    def _storm_draw(self, model: str, body: bytes) -> str:
        """The storm's fault for this call, or "" (no storm, a model it spares, or no fault drawn)."""
        with self._lock:
            storm = self._storm
            if storm is None or (storm.models is not None and model not in storm.models):
                return ""
            digest = hashlib.blake2b(model.encode() + b"\0" + body, digest_size=16).digest()
            times = storm.sent.get(digest, 0)
            storm.sent[digest] = times + 1
        draw = random.Random(f"{storm.seed}:{digest.hex()}:{times}")
        share = draw.random()
        if share < storm.error_rate:
            return draw.choice(storm.errors)
        if share < storm.error_rate + storm.malformed_rate:
            return draw.choice(storm.malformed)
        return ""

    def limit(
        self,
        model: str,
        rpm: int | None = None,
        tpm: int | None = None,
        *,
        input_tpm: int | None = None,
        output_tpm: int | None = None,
    ) -> None:
        """Enforce per-minute limits on the model (full buckets from now); all None removes them."""
        figures = {"requests": rpm, "tokens": tpm, "input_tokens": input_tpm, "output_tokens": output_tpm}
        for name, value in figures.items():
            if value is not None and value <= 0:
                raise ValueError(f"{name} limit {value} must be positive")
        with self._lock:
            now = self._clock()
            buckets = {name: _Bucket(v, now) for name, v in figures.items() if v is not None}
            if buckets:
                self._limits[model] = buckets
            else:
                self._limits.pop(model, None)

    def stats(self) -> dict[str, dict[str, int]]:
        """Answers per model: {"ok", "429", "5xx", "other"} (kept in the command-line process too)."""
        with self._lock:
            return {model: dict(counts) for model, counts in self._stats.items()}

    def reply(self, model: str, text: str) -> None:
        with self._lock:
            self._replies[model] = text

    def reply_when(self, model: str, contains: str, text: str) -> None:
        """Answer `text` when `contains` occurs in one of the request's texts; rules are tried in the
        order they were added, before the model's `reply`."""
        with self._lock:
            self._reply_rules.setdefault(model, []).append((contains, text))

    def _reply_for(self, model: str, texts: list[str]) -> str | None:
        with self._lock:
            rules = list(self._reply_rules.get(model, ()))
            fixed = self._replies.get(model)
        return next((reply for contains, reply in rules if any(contains in t for t in texts)), fixed)

    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def reset(self) -> None:
        self.batches.reset()  # outside self._lock: the batches take it while holding their own
        with self._lock:
            self._calls.clear()
            self._failures.clear()
            self._replies.clear()
            self._reply_rules.clear()
            self._limits.clear()
            self._fail_rates.clear()
            self._stats.clear()
            self._storm = None

    # ---- the server --------------------------------------------------------------------------

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._connection, self.host, self.port, backlog=2048)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    async def serve_forever(self) -> None:
        """Serve on the current event loop until cancelled (what the command line uses)."""
        await self._listen()
        print(f"ready {self.url}", flush=True)
        assert self._server is not None
        async with self._server:
            await self._server.serve_forever()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                try:
                    method, target, version = lines[0].split(" ", 2)
                except ValueError:
                    return
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    name, sep, value = line.partition(":")
                    if sep:
                        headers[name.strip().lower()] = value.strip()
                try:
                    body = await self._read_body(reader, headers)
                except (asyncio.IncompleteReadError, ConnectionError, ValueError):
                    return
                handle = self.batches.handle if self.batches.serves(target) else self._handle  # tests/fake_batches.py
                status, extra, payload = handle(method, target, headers, body)
                if status == HELD:  # no answer: what the client's timeout is for
                    with contextlib.suppress(TimeoutError, ConnectionError):
                        await asyncio.wait_for(reader.read(1), self._hold_s)  # b"" once the client hangs up
                    return
                connection = headers.get("connection", "").lower()
                keep = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
                writer.write(_response(status, extra, payload, keep))
                await writer.drain()
                if not keep:
                    return
        except ConnectionError:
            return
        finally:
            self._writers.discard(writer)
            writer.close()

    @staticmethod
    async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
                if size == 0:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":
                        pass
                    return b"".join(chunks)
                chunks.append(await reader.readexactly(size))
                await reader.readexactly(2)
        length = int(headers.get("content-length") or 0)
        return await reader.readexactly(length) if length else b""

    def _handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> _Response:
        split = urlsplit(target)
        if split.path.startswith("/_fake/"):
            return self._handle_control(method, split.path, body)
        embed_route = _embed_route(split.path)
        if embed_route is not None:
            return self._handle_embeddings(method, embed_route, headers, split.query, body)
        provider, model = _route(split.path)
        if not provider:
            message = f"no route for {method} {split.path}"
            return 404, {}, _json({"error": {"code": 404, "message": message, "status": "NOT_FOUND"}})
        if method != "POST":
            return 405, {"allow": "POST"}, _json(_error_body(provider, 405, f"method {method} not allowed"))
        api_key = _api_key(headers, split.query)
        try:
            parsed_model, texts, last_user, limit = _parse(provider, body)
        except (ValueError, _BadRequest, AttributeError, TypeError) as exc:
            return self._error(provider, model, api_key, 400, f"invalid request: {exc}")
        model = model or parsed_model
        if not api_key:
            return self._error(provider, model, api_key, 401, "missing API key")
        fixed = self._reply_for(model, texts)
        text = fixed if fixed is not None else f"[{model}] " + last_user[:REPLY_PREFIX_CHARS]
        input_tokens, output_tokens, truncated = _tokens("\n".join(texts)), _tokens(text), False
        if limit is not None and output_tokens > limit:
            text, output_tokens, truncated = text[: limit * CHARS_PER_TOKEN], limit, True
        admitted, limit_headers = self._admit(provider, model, input_tokens, output_tokens)
        if not admitted:
            return self._limited(provider, model, api_key, limit_headers)
        failure = self._take_failure(model)
        if failure is not None:
            self._give_back(model, input_tokens, output_tokens)
            return self._error(provider, model, api_key, failure[0], failure[1])
        answer = (model, text, input_tokens, output_tokens, truncated)
        return self._served(provider, api_key, body, answer, limit_headers)

    def _served(
        self, provider: str, api_key: str, body: bytes, answer: tuple[str, str, int, int, bool], headers: dict[str, str]
    ) -> _Response:
        """What a call past every check gets: the storm's fault if one is drawn, else its answer."""
        model, text, input_tokens, output_tokens, truncated = answer
        fault = self._storm_draw(model, body)
        if fault == "not_json" and not _wants_json(provider, body):
            fault = "empty_answer"
        if fault in STORM_ERRORS or fault in _UNREADABLE:  # nothing the client can read, so nothing billed
            self._give_back(model, input_tokens, output_tokens)
        if fault in STORM_ERRORS:
            return self._storm_error(provider, model, api_key, fault)
        if fault in ("empty_answer", "not_json"):
            text = NOT_JSON_ANSWER if fault == "not_json" else ""
            output_tokens, truncated = _tokens(text), False
        return self._answer(provider, api_key, (model, text, input_tokens, output_tokens, truncated), fault, headers)

    def _answer(
        self, provider: str, api_key: str, answer: tuple[str, str, int, int, bool], fault: str, headers: dict[str, str]
    ) -> _Response:
        """A 200 with the answer (model, text, input tokens, output tokens, truncated), its body broken
        when the storm's fault is one of the unreadable kinds."""
        model, _, input_tokens, output_tokens, _ = answer
        readable = fault not in _UNREADABLE
        served = (input_tokens, output_tokens) if readable else (0, 0)
        self._record(Call(provider, model, *served, 200, api_key, fault))
        n = next(self._ids)
        build, id_header = _BODIES[provider]
        extra = {id_header: f"req_fake{n:012d}"} if id_header else {}
        body = build(n, *answer)
        payload = _json(body) if readable else _unreadable(provider, fault, body)
        return 200, {**extra, **headers}, payload

    def _storm_error(self, provider: str, model: str, api_key: str, fault: str) -> _Response:
        if fault == "held":
            self._record(Call(provider, model, 0, 0, HELD, api_key, fault))
            return HELD, {}, b""
        status = 500 if fault == "error_500" else 529 if provider == "anthropic" else 503
        self._record(Call(provider, model, 0, 0, status, api_key, fault))
        message = "storm: internal error" if status == 500 else "storm: overloaded"
        return status, {}, _json(_error_body(provider, status, message))

    def _handle_embeddings(
        self, method: str, route: tuple[str, str, str], headers: dict[str, str], query: str, body: bytes
    ) -> _Response:
        """The embedding routes: same order of checks as the chat routes (method, body, key, failure)."""
        provider, model, kind = route
        if method != "POST":
            return 405, {"allow": "POST"}, _json(_error_body(provider, 405, f"method {method} not allowed"))
        api_key = _api_key(headers, query)
        try:
            request = json.loads(body or b"null")
            if not isinstance(request, dict):
                raise _BadRequest("the body must be a JSON object")
            if provider == "openai":
                model = str(request.get("model", ""))
                texts = _openai_embed_inputs(request)
            else:
                texts = _gemini_embed_inputs(request, kind)
        except (ValueError, _BadRequest, AttributeError, TypeError, KeyError) as exc:
            return self._error(provider, model, api_key, 400, f"invalid request: {exc}")
        if not api_key:
            return self._error(provider, model, api_key, 401, "missing API key")
        input_tokens = _tokens("\n".join(texts))
        admitted, limit_headers = self._admit(provider, model, input_tokens, 0)
        if not admitted:
            return self._limited(provider, model, api_key, limit_headers)
        failure = self._take_failure(model)
        if failure is not None:
            self._give_back(model, input_tokens, 0)
            return self._error(provider, model, api_key, failure[0], failure[1])
        self._record(Call(provider, model, input_tokens, 0, 200, api_key))
        vectors = [fake_embedding(t) for t in texts]
        if provider == "openai":
            as_base64 = request.get("encoding_format") == "base64"
            n = next(self._ids)
            return (
                200,
                {"x-request-id": f"req_fake{n:012d}", **limit_headers},
                _json(_openai_embeddings(model, vectors, input_tokens, as_base64)),
            )
        if kind == "embedContent":
            return 200, limit_headers, _json({"embedding": {"values": vectors[0]}})
        return 200, limit_headers, _json({"embeddings": [{"values": v} for v in vectors]})

    def _take_failure(self, model: str) -> tuple[int, str] | None:
        """The failure to answer this call with, if any: one set with fail() (counting it down), else
        a draw of the model's fail_rate."""
        with self._lock:
            failure = self._failures.get(model)
            if failure is not None:
                if failure[1] is not None:
                    failure[1] -= 1
                    if failure[1] <= 0:
                        del self._failures[model]
                return failure[0], failure[2]
            chance = self._fail_rates.get(model)
            if chance is not None and chance[2].random() < chance[1]:
                return chance[0], chance[3]
        return None

    def _admit(self, provider: str, model: str, input_tokens: int, output_tokens: int) -> tuple[bool, dict[str, str]]:
        """Take a request and its tokens from the model's buckets: (True, headers of what is left), or
        (False, the 429's headers, retry-after included) when any bucket is short; nothing is taken then."""
        with self._lock:
            buckets = self._limits.get(model)
            if not buckets:
                return True, {}
            now = self._clock()
            costs = {
                "requests": 1,
                "tokens": input_tokens + output_tokens,
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
            }
            for bucket in buckets.values():
                bucket.refill(now)
            wait = max(bucket.wait(costs[name]) for name, bucket in buckets.items())
            if wait <= 0:
                for name, bucket in buckets.items():
                    bucket.level -= min(costs[name], bucket.capacity)
            headers = _limit_headers(provider, buckets)
        if wait > 0:
            headers["retry-after"] = str(max(1, math.ceil(wait - 1e-9)))
            return False, headers
        return True, headers

    def _give_back(self, model: str, input_tokens: int, output_tokens: int) -> None:
        """A call that failed (fail/fail_rate) keeps its request but uses no tokens."""
        with self._lock:
            buckets = self._limits.get(model, {})
            back = {
                "tokens": input_tokens + output_tokens,
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
            }
            for name, tokens in back.items():
                if name in buckets:
                    b = buckets[name]
                    b.level = min(float(b.capacity), b.level + min(tokens, b.capacity))

    def _limited(self, provider: str, model: str, api_key: str, headers: dict[str, str]) -> _Response:
        wait = headers["retry-after"]
        message = f"Rate limit reached for {model}: please try again in {wait}s."
        status, _, body = self._error(provider, model, api_key, 429, message)
        if provider == "gemini":  # Gemini says the wait in a RetryInfo detail
            payload = json.loads(body)
            payload["error"]["details"] = [
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{wait}s"}
            ]
            body = _json(payload)
        return status, headers, body

    def _record(self, call: Call) -> None:
        key = "ok" if call.status == 200 else "429" if call.status == 429 else "5xx" if call.status >= 500 else "other"
        with self._lock:
            counts = self._stats.setdefault(call.model, {"ok": 0, "429": 0, "5xx": 0, "other": 0})
            counts[key] += 1
            if self._keep_calls:
                self._calls.append(call)

    def _handle_control(self, method: str, path: str, body: bytes) -> _Response:
        """The fake's own routes: GET /_fake/stats, POST /_fake/fail, POST /_fake/limit."""
        if path == "/_fake/stats":
            if method != "GET":
                return 405, {"allow": "GET"}, _json({"error": f"method {method} not allowed"})
            return 200, {}, _json(self.stats())
        if path not in ("/_fake/fail", "/_fake/limit"):
            return 404, {}, _json({"error": f"no route for {method} {path}"})
        if method != "POST":
            return 405, {"allow": "POST"}, _json({"error": f"method {method} not allowed"})
        try:
            request = json.loads(body or b"null")
            if not isinstance(request, dict) or not isinstance(request.get("model"), str):
                raise _BadRequest("the body must be a JSON object with a model")
            if path == "/_fake/fail":
                self.fail_rate(
                    request["model"], int(request["status"]), float(request["rate"]), seed=int(request.get("seed", 0))
                )
            else:
                figures = {k: request.get(k) for k in ("rpm", "tpm", "input_tpm", "output_tpm")}
                self.limit(request["model"], **{k: None if v is None else int(v) for k, v in figures.items()})
        except (ValueError, _BadRequest, KeyError, TypeError) as exc:
            return 400, {}, _json({"error": f"invalid request: {exc}"})
        return 200, {}, _json({"ok": True})

    def _error(self, provider: str, model: str, api_key: str, status: int, message: str) -> _Response:
        self._record(Call(provider, model, 0, 0, status, api_key))
        if status in (401, 403) and api_key:  # a refused key is echoed whole, in its place or at the end
            echoed = KEY_IN_MESSAGE in message
            message = message.replace(KEY_IN_MESSAGE, api_key) if echoed else f"{message}: {api_key}"
        extra = {"retry-after": "1"} if status == 429 else {}
        return status, extra, _json(_error_body(provider, status, message))


def _limit_headers(provider: str, buckets: dict[str, _Bucket]) -> dict[str, str]:
    """The provider's rate-limit headers for the model's buckets as they stand (Gemini sends none)."""
    headers: dict[str, str] = {}
    if provider == "openai":
        for name, bucket in buckets.items():
            suffix = _LIMIT_HEADERS[name][0] or "tokens"
            if name in ("input_tokens", "output_tokens") and "tokens" in buckets:
                continue  # OpenAI has one token limit; the combined bucket speaks for it
            headers[f"x-ratelimit-limit-{suffix}"] = str(bucket.capacity)
            headers[f"x-ratelimit-remaining-{suffix}"] = str(max(0, math.floor(bucket.level)))
            headers[f"x-ratelimit-reset-{suffix}"] = _openai_duration(bucket.reset())
    elif provider == "anthropic":
        now = time.time()
        reported = dict(buckets)
        if "tokens" in buckets:  # one combined limit: it bounds input and output alike
            reported.setdefault("input_tokens", buckets["tokens"])
            reported.setdefault("output_tokens", buckets["tokens"])
        for name, bucket in reported.items():
            part = _LIMIT_HEADERS[name][1]
            reset = datetime.fromtimestamp(now + bucket.reset(), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            headers[f"anthropic-ratelimit-{part}-limit"] = str(bucket.capacity)
            headers[f"anthropic-ratelimit-{part}-remaining"] = str(max(0, math.floor(bucket.level)))
            headers[f"anthropic-ratelimit-{part}-reset"] = reset
    return headers


def _openai_duration(seconds: float) -> str:
    """OpenAI's reset format: "17ms", "1.5s", "6m0s"."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:.0f}s" if minutes else f"{rest:.3g}s"


def _route(path: str) -> tuple[str, str]:
    """(provider, model from the path) for a known route, else ("", "")."""
    if path == "/v1/messages":
        return "anthropic", ""
    if path == "/v1/chat/completions":
        return "openai", ""
    gemini = _GEMINI_PATH.match(path)
    return ("gemini", unquote(gemini.group(1))) if gemini else ("", "")


def _embed_route(path: str) -> tuple[str, str, str] | None:
    """(provider, model from the path, Gemini method) for an embedding route, else None."""
    if path == "/v1/embeddings":
        return "openai", "", "embeddings"
    gemini = _GEMINI_EMBED_PATH.match(path)
    return ("gemini", unquote(gemini.group(1)), gemini.group(2)) if gemini else None


def fake_embedding(text: str) -> list[float]:
    """The fake's vector for a text: a signed hashed bag of its words, L2-normalized (zeros if none).
    blake2b, not hash(): the same text must get the same vector in every process."""
    counts = [0.0] * EMBED_DIMS
    for word in _WORD.findall(text.lower()):
        h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
        counts[h % EMBED_DIMS] += 1.0 if (h >> 32) & 1 else -1.0
    norm = math.sqrt(sum(c * c for c in counts)) or 1.0
    return [c / norm for c in counts]


def _openai_embed_inputs(request: dict[str, Any]) -> list[str]:
    value = request.get("input")
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise _BadRequest("input must be a string or a non-empty list of strings (token arrays are not supported)")
    return texts


def _gemini_embed_inputs(request: dict[str, Any], kind: str) -> list[str]:
    if kind == "embedContent":
        return ["\n".join(_texts(request["content"]))]
    requests = request.get("requests")
    if not isinstance(requests, list) or not requests:
        raise _BadRequest("requests must be a non-empty list")
    return ["\n".join(_texts(r["content"])) for r in requests]


def _openai_embeddings(model: str, vectors: list[list[float]], tokens: int, as_base64: bool) -> dict[str, Any]:
    def encode(v: list[float]) -> Any:
        # base64 of little-endian float32, what the SDK decodes (and asks for by default)
        return base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode() if as_base64 else v

    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _parse(provider: str, body: bytes) -> tuple[str, list[str], str, int | None]:
    """(model, all request texts, last user text, output token limit) of a request body."""
    request = json.loads(body or b"null")
    if not isinstance(request, dict):
        raise _BadRequest("the body must be a JSON object")
    if provider == "anthropic":
        return _parse_anthropic(request)
    if provider == "openai":
        return _parse_openai(request)
    return ("", *_parse_gemini(request))


def _api_key(headers: dict[str, str], query: str) -> str:
    for name in ("x-api-key", "x-goog-api-key"):
        if headers.get(name):
            return headers[name]
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return parse_qs(query).get("key", [""])[0]


def _anthropic_body(n: int, model: str, text: str, inp: int, out: int, truncated: bool) -> dict[str, Any]:
    return {
        "id": f"msg_fake{n:020d}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "max_tokens" if truncated else "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": inp, "output_tokens": out},
    }


def _openai_body(n: int, model: str, text: str, inp: int, out: int, truncated: bool) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-fake{n:016d}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": "length" if truncated else "stop",
            }
        ],
        "usage": {"prompt_tokens": inp, "completion_tokens": out, "total_tokens": inp + out},
        "system_fingerprint": "fp_fake",
    }


def _gemini_body(n: int, model: str, text: str, inp: int, out: int, truncated: bool) -> dict[str, Any]:
    return {
        "candidates": [
            {
                "content": {"role": "model", "parts": [{"text": text}]},
                "finishReason": "MAX_TOKENS" if truncated else "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {"promptTokenCount": inp, "candidatesTokenCount": out, "totalTokenCount": inp + out},
        "modelVersion": model,
        "responseId": f"fake{n:016d}",
    }


_BODIES: dict[str, tuple[Any, str]] = {
    "anthropic": (_anthropic_body, "request-id"),
    "openai": (_openai_body, "x-request-id"),
    "gemini": (_gemini_body, ""),
}


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _wants_json(provider: str, body: bytes) -> bool:
    """Whether a (parsed before, so valid) chat request asks for a JSON answer."""
    request = json.loads(body)
    if provider == "openai":
        wanted = request.get("response_format")
        return isinstance(wanted, dict) and wanted.get("type") in ("json_object", "json_schema")
    if provider == "gemini":
        config = request.get("generationConfig") or request.get("generation_config") or {}
        return (config.get("responseMimeType") or config.get("response_mime_type")) == "application/json"
    return "JSON" in "\n".join(_texts(request.get("system")))  # the Messages API has no JSON switch


def _unreadable(provider: str, fault: str, answer: dict[str, Any]) -> bytes:
    """A 200's body broken as the storm's fault says: cut in half, its answer left out, or a usage
    count that is a word."""
    if fault == "bad_json":
        whole = _json(answer)
        return whole[: len(whole) // 2]
    if fault == "missing_fields":
        del answer[_ANSWER_FIELD[provider]]
    else:
        usage, count = _USAGE_FIELD[provider]
        answer[usage][count] = "many"
    return _json(answer)


def _response(status: int, extra: dict[str, str], payload: bytes, keep: bool) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
        "content-type: application/json",
        f"content-length: {len(payload)}",
        f"connection: {'keep-alive' if keep else 'close'}",
    ]
    lines += [f"{name}: {value}" for name, value in extra.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


def main() -> None:
    parser = argparse.ArgumentParser(description="Fake Anthropic/OpenAI/Gemini HTTP server for tests and benchmarks")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument(
        "--limit",
        action="append",
        default=[],
        type=_limit_arg,
        metavar="MODEL:rpm=N,tpm=N",
        help="per-minute limits of a model (rpm, tpm, input_tpm, output_tpm); repeatable",
    )
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        fake = FakeProvider(args.host, args.port)
        fake._keep_calls = False
        for model, figures in args.limit:
            fake.limit(model, **figures)
        asyncio.run(fake.serve_forever())


def _limit_arg(value: str) -> tuple[str, dict[str, int]]:
    """ "gpt-4o-mini:rpm=600,tpm=200000" -> ("gpt-4o-mini", {"rpm": 600, "tpm": 200000})."""
    model, sep, spec = value.rpartition(":")
    figures: dict[str, int] = {}
    for part in spec.split(",") if sep else []:
        name, eq, number = part.partition("=")
        name = name.strip()
        if not eq or name not in ("rpm", "tpm", "input_tpm", "output_tpm") or not number.strip().isdigit():
            raise argparse.ArgumentTypeError(f"'{part}' is not rpm=N, tpm=N, input_tpm=N or output_tpm=N")
        figures[name] = int(number)
    if not model or not figures:
        raise argparse.ArgumentTypeError(f"'{value}' is not MODEL:rpm=N,tpm=N")
    return model, figures


if __name__ == "__main__":
    main()
