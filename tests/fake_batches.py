"""The fake provider's batch APIs: Anthropic Message Batches, OpenAI Batch with the Files it reads
its input from and writes its results to, and Gemini Batch Mode with inline requests.

tests/fake_provider.py's server hands this module every path under /v1/messages/batches, /v1/batches
and /v1/files (`fake.batches`). The wire formats follow the official SDKs' types closely enough that
`client.messages.batches.*`, `client.files.*` and `client.batches.*` work against it unchanged.

Nothing runs in the background: a batch stays in progress until a test moves it with `end`,
`end_partially` or `expire`, or cancels it through the API (the cancel's answer says "canceling" /
"cancelling"; the batch has ended by the next GET). With `auto_end_s` set, a batch ends on the first
GET to a batch route that long after its creation; past `window_s` (24 h by `clock`) it expires.

A request is answered as the synchronous route would answer its body: the reply rules, token counting
and truncation of tests/fake_provider.py, but no rate limits, storm, fail or fail_rate (`fail_items`
is the batch lane's failure; its "malformed" kind answers a body with no content / choices, and
`reject_key` refuses every batch route with the key echoed). Each answered request is recorded as one `Call` with `batch` = the batch
id: a 200 with its tokens, or an errored request with its status and no tokens. Expired and canceled
requests are not billed, so not recorded; reading results again bills nothing (`results_reads` counts
the reads).

Limits are attributes, so a test can lower them: Anthropic answers 400 past `anthropic_max_requests`
and 413 past `anthropic_max_bytes`, and 400 for a custom_id that is malformed or used twice. OpenAI
fails the batch (status "failed", with `errors`) past `openai_max_requests` or `openai_max_bytes`, on
an unreadable line, a duplicate custom_id, or (`openai_one_model`) requests to more than one model.

Gemini (v1beta only, as Google serves batch mode): POST /v1beta/models/{model}:batchGenerateContent
with inline requests, GET /v1beta/batches/{id}, GET /v1beta/batches (pageSize, pageToken), POST
/v1beta/batches/{id}:cancel, answering long-running Operations as `client.aio.batches.*` reads them.
A request's custom id is the `key` of its metadata (its index without one). An ended batch carries its
responses inline, one per request in order, each with the request's metadata: a `response`, an `error`
(a google.rpc.Status: gRPC code and message), or, for a request never run (expired, cancelled), the
metadata alone; Google documents no shape for those, this is the fake's. `results_reads` counts GETs
of the ended batch, which is how its results are read. Past `gemini_max_bytes` (the create's whole
body) it answers 400, as Google does past 20 MB.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.fake_provider import (
    _ANSWER_FIELD,
    _BODIES,
    _REJECTIONS,
    CHARS_PER_TOKEN,
    KEY_IN_MESSAGE,
    REPLY_PREFIX_CHARS,
    Call,
    FakeProvider,
    _api_key,
    _BadRequest,
    _error_body,
    _json,
    _parse,
    _Response,
    _tokens,
)

ANTHROPIC_PREFIX = "/v1/messages/batches"
OPENAI_PREFIXES = ("/v1/batches", "/v1/files")
CHAT_ENDPOINT = "/v1/chat/completions"
GEMINI_PREFIX = "/v1beta/batches"
GEMINI_CREATE = re.compile(r"/v1beta/models/([^/:]+):batchGenerateContent")
WINDOW_S = 24 * 3600.0
CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
FILE_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")

SUCCEEDED, ERRORED, EXPIRED, CANCELED = "succeeded", "errored", "expired", "canceled"
# fail_items kinds -> (Anthropic status, OpenAI status); the status picks the error's type (_error_body)
ITEM_FAILURES = {
    "api_error": (500, 500),
    "invalid_request": (400, 400),
    "overloaded": (529, 503),
    "rate_limit": (429, 429),
    "authentication": (401, 401),  # its message echoes the batch's key, as _REJECTIONS do
    "malformed": (200, 200),  # succeeded, but its answer has no content / choices (the storm's missing_fields)
}
# What OpenAI's error file says of a request the batch never ran.
_NOT_RUN = {
    EXPIRED: ("batch_expired", "This request could not be executed before the completion window expired."),
    CANCELED: ("batch_cancelled", "This request was not executed because the batch was cancelled."),
}


@dataclass(frozen=True)
class SubmittedRequest:
    custom_id: str
    model: str
    body: dict[str, Any]  # Anthropic's params, OpenAI's body
    outcome: str  # "" while pending, else SUCCEEDED | ERRORED | EXPIRED | CANCELED


@dataclass(frozen=True)
class SubmittedBatch:
    """A batch as a test sees it: `status` is what a GET would show (Anthropic's processing_status,
    OpenAI's status, Gemini's state)."""

    id: str
    provider: str  # "anthropic" | "openai" | "gemini"
    status: str
    requests: tuple[SubmittedRequest, ...]
    metadata: dict[str, str]
    results_reads: int  # GETs of its results (Anthropic) or of its output and error files (OpenAI)
    api_key: str = field(repr=False)


@dataclass
class _Request:
    custom_id: str
    model: str
    body: dict[str, Any]
    outcome: str = ""
    status: int = 0  # the answer's HTTP status, once answered
    answer: dict[str, Any] | None = None  # the Message or chat completion, or the error body
    metadata: dict[str, Any] | None = None  # a Gemini request's, echoed on its response


@dataclass
class _Batch:
    id: str
    provider: str
    api_key: str = field(repr=False)
    created: float
    order: int
    requests: list[_Request]
    ended_as: str = ""  # "" in progress, else OpenAI's word: completed | expired | cancelled | failed
    ended_at: float | None = None
    cancel_at: float | None = None
    reads: int = 0
    results: bytes = b""  # Anthropic's JSONL, once ended
    input_file_id: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)  # why OpenAI failed it
    display_name: str = ""  # Gemini's
    model: str = ""  # Gemini's, from the create's path


@dataclass
class _File:
    id: str
    filename: str
    purpose: str
    data: bytes
    created: float
    batch: str = ""  # the batch whose results it holds; "" for an upload


@dataclass(frozen=True)
class _Req:
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    api_key: str


class _Refused(Exception):
    """An error answer in the provider's format."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _LineError(Exception):
    """An OpenAI input line that fails the batch's validation."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


_Handler = Callable[[str, _Req], _Response]


class FakeBatches:
    """The batch routes and their controls; thread-safe (the server runs in its own thread)."""

    def __init__(self, fake: FakeProvider) -> None:
        self._fake = fake
        self._lock = threading.RLock()
        self._numbers = itertools.count(1)  # never reset: ids stay unique across tests
        self._batches: dict[str, _Batch] = {}
        self._files: dict[str, _File] = {}
        self._item_failures: dict[str, tuple[float, str, int]] = {}  # model -> rate, kind, seed
        self._rejection: int | None = None
        self._routes: list[tuple[str, re.Pattern[str], _Handler]] = [
            ("POST", re.compile(r"/v1/messages/batches"), self._anthropic_create),
            ("GET", re.compile(r"/v1/messages/batches"), self._anthropic_list),
            ("GET", re.compile(r"/v1/messages/batches/([^/]+)"), self._anthropic_retrieve),
            ("POST", re.compile(r"/v1/messages/batches/([^/]+)/cancel"), self._anthropic_cancel),
            ("GET", re.compile(r"/v1/messages/batches/([^/]+)/results"), self._anthropic_results),
            ("POST", re.compile(r"/v1/files"), self._file_upload),
            ("GET", re.compile(r"/v1/files/([^/]+)"), self._file_retrieve),
            ("DELETE", re.compile(r"/v1/files/([^/]+)"), self._file_delete),
            ("GET", re.compile(r"/v1/files/([^/]+)/content"), self._file_content),
            ("POST", re.compile(r"/v1/batches"), self._openai_create),
            ("GET", re.compile(r"/v1/batches"), self._openai_list),
            ("GET", re.compile(r"/v1/batches/([^/]+)"), self._openai_retrieve),
            ("POST", re.compile(r"/v1/batches/([^/]+)/cancel"), self._openai_cancel),
            ("POST", GEMINI_CREATE, self._gemini_create),
            ("GET", re.compile(r"/v1beta/batches"), self._gemini_list),
            ("GET", re.compile(r"/v1beta/batches/([^/:]+)"), self._gemini_retrieve),
            ("POST", re.compile(r"/v1beta/batches/([^/:]+):cancel"), self._gemini_cancel),
        ]
        self._set_defaults()

    def _set_defaults(self) -> None:
        self.anthropic_max_requests = 100_000
        self.anthropic_max_bytes = 256 * 1024 * 1024
        self.openai_max_requests = 50_000
        self.openai_max_bytes = 200 * 1024 * 1024
        self.openai_one_model = True
        self.gemini_max_bytes = 20 * 1024 * 1024
        self.window_s = WINDOW_S
        self.auto_end_s: float | None = None
        self.clock: Callable[[], float] = time.time  # wall time: it is sent as created_at; tests may replace it

    # ---- controls ------------------------------------------------------------------------------

    def end(self, batch_id: str | None = None) -> None:
        """Answer every pending request of the batch (of every batch in progress) and end it."""
        with self._lock:
            for batch in self._chosen(batch_id):
                self._end(batch)

    def end_partially(self, batch_id: str, answered: int) -> None:
        """Answer the batch's next `answered` pending requests, in order; it stays in progress."""
        with self._lock:
            for batch in self._chosen(batch_id):
                for request in [r for r in batch.requests if not r.outcome][:answered]:
                    self._answer(batch, request)

    def expire(self, batch_id: str | None = None) -> None:
        """End the batch (every batch in progress) as expired: answered requests keep their results,
        the rest expire."""
        with self._lock:
            for batch in self._chosen(batch_id):
                self._finish(batch, "expired", EXPIRED)

    def fail_items(self, model: str, rate: float, kind: str = "api_error", *, seed: int = 0) -> None:
        """Error a share `rate` of the model's batch requests as `kind` (ITEM_FAILURES), drawn by
        seed, model and custom_id, so the same requests fail whatever the order; rate 0 stops."""
        if kind not in ITEM_FAILURES:
            raise ValueError(f"unknown kind {kind!r}: the kinds are {sorted(ITEM_FAILURES)}")
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate {rate} is not a share between 0 and 1")
        with self._lock:
            if rate == 0:
                self._item_failures.pop(model, None)
            else:
                self._item_failures[model] = (rate, kind, seed)

    def reject_key(self, status: int | None = 401) -> None:
        """Refuse every batch route as an invalid (401) or forbidden (403) key, echoing the key whole
        in the message, as tests/fake_provider.py's reject_key does; None stops."""
        if status is not None and status not in _REJECTIONS:
            raise ValueError(f"status {status} is not a key refusal (401 or 403)")
        with self._lock:
            self._rejection = status

    def submitted(self) -> list[SubmittedBatch]:
        """Every batch, oldest first."""
        with self._lock:
            return [self._snapshot(b) for b in sorted(self._batches.values(), key=lambda b: b.order)]

    def batch(self, batch_id: str) -> SubmittedBatch:
        with self._lock:
            if batch_id not in self._batches:
                raise KeyError(f"no batch {batch_id}")
            return self._snapshot(self._batches[batch_id])

    def reset(self) -> None:
        with self._lock:
            self._batches.clear()
            self._files.clear()
            self._item_failures.clear()
            self._rejection = None
            self._set_defaults()

    # ---- routing -------------------------------------------------------------------------------

    @staticmethod
    def serves(target: str) -> bool:
        """Whether the request target is a batch route (FakeProvider hands those to `handle`)."""
        path = urlsplit(target).path
        prefixes = (ANTHROPIC_PREFIX, *OPENAI_PREFIXES, GEMINI_PREFIX)
        return any(path == p or path.startswith(p + "/") for p in prefixes) or bool(GEMINI_CREATE.fullmatch(path))

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> _Response:
        path, query = urlsplit(target).path, urlsplit(target).query
        provider = "anthropic" if path.startswith(ANTHROPIC_PREFIX) else "openai"
        if path.startswith(GEMINI_PREFIX) or GEMINI_CREATE.fullmatch(path):
            provider = "gemini"
        matches = [(m, handler, found) for m, pattern, handler in self._routes if (found := pattern.fullmatch(path))]
        if not matches:
            return _refusal(provider, 404, f"no route for {method} {path}")
        chosen = next(((handler, found) for m, handler, found in matches if m == method), None)
        if chosen is None:
            allowed = ", ".join(sorted({m for m, _, _ in matches}))
            return 405, {"allow": allowed}, _json(_error_body(provider, 405, f"method {method} not allowed"))
        api_key = _api_key(headers, query)
        if not api_key:
            return _refusal(provider, 401, "missing API key")
        if self._rejection is not None:
            return _refusal(provider, self._rejection, _REJECTIONS[self._rejection].replace(KEY_IN_MESSAGE, api_key))
        handler, found = chosen
        request = _Req(parse_qs(query), headers, body, api_key)
        try:
            with self._lock:
                if method == "GET":
                    self._refresh()
                return handler(found.group(1) if found.groups() else "", request)
        except _Refused as exc:
            return _refusal(provider, exc.status, exc.message)

    def _refresh(self) -> None:
        """What time has done since the last GET: batches past their window expire, and with
        auto_end_s set, batches that old end."""
        now = self.clock()
        for batch in list(self._batches.values()):
            if batch.ended_as:
                continue
            if now - batch.created >= self.window_s:
                self._finish(batch, "expired", EXPIRED)
            elif self.auto_end_s is not None and now - batch.created >= self.auto_end_s:
                self._end(batch)

    # ---- Anthropic -----------------------------------------------------------------------------

    def _anthropic_create(self, _: str, request: _Req) -> _Response:
        if len(request.body) > self.anthropic_max_bytes:
            raise _Refused(413, f"the request is {len(request.body)} bytes, over the {self.anthropic_max_bytes} limit")
        entries = _json_object(request.body).get("requests")
        if not isinstance(entries, list) or not entries:
            raise _Refused(400, "requests: a non-empty list is required")
        if len(entries) > self.anthropic_max_requests:
            raise _Refused(400, f"requests: {len(entries)} requests, over the {self.anthropic_max_requests} limit")
        requests = [_anthropic_request(i, entry) for i, entry in enumerate(entries)]
        duplicate = _first_duplicate(r.custom_id for r in requests)
        if duplicate is not None:
            raise _Refused(400, f"custom_id {duplicate!r} is used more than once: each must be unique in the batch")
        batch = self._new_batch("anthropic", "msgbatch_", request.api_key, requests)
        return 200, {}, _json(self._anthropic_view(batch))

    def _anthropic_list(self, _: str, request: _Req) -> _Response:
        batches = self._newest_first("anthropic")
        limit = _limit(request.query, 1000)
        before, after = _param(request.query, "before_id"), _param(request.query, "after_id")
        if before:
            stop = _position(batches, before)
            start = max(0, stop - limit)
            page, more = batches[start:stop], start > 0
        else:
            start = _position(batches, after) + 1 if after else 0
            page, more = batches[start : start + limit], start + limit < len(batches)
        return 200, {}, _json(_page(page, more, self._anthropic_view))

    def _anthropic_retrieve(self, batch_id: str, _: _Req) -> _Response:
        return 200, {}, _json(self._anthropic_view(self._get(batch_id, "anthropic")))

    def _anthropic_cancel(self, batch_id: str, _: _Req) -> _Response:
        batch = self._get(batch_id, "anthropic")
        if batch.ended_as:
            raise _Refused(400, f"batch {batch_id} has ended: it cannot be canceled")
        batch.cancel_at = self.clock()
        view = {**self._anthropic_view(batch), "processing_status": "canceling"}
        self._finish(batch, "cancelled", CANCELED)
        return 200, {}, _json(view)

    def _anthropic_results(self, batch_id: str, _: _Req) -> _Response:
        batch = self._get(batch_id, "anthropic")
        if not batch.ended_as:
            raise _Refused(400, f"batch {batch_id} is still in progress: its results are not ready")
        batch.reads += 1
        return 200, {}, batch.results

    def _anthropic_view(self, batch: _Batch) -> dict[str, Any]:
        ended = bool(batch.ended_as)
        counts = dict.fromkeys((SUCCEEDED, ERRORED, CANCELED, EXPIRED), 0)
        if ended:  # as Anthropic counts: every request is processing until the batch ends
            counts.update(Counter(r.outcome for r in batch.requests))
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": "ended" if ended else "in_progress",
            "request_counts": {"processing": 0 if ended else len(batch.requests), **counts},
            "created_at": _rfc3339(batch.created),
            "expires_at": _rfc3339(batch.created + self.window_s),
            "ended_at": _rfc3339(batch.ended_at),
            "cancel_initiated_at": _rfc3339(batch.cancel_at),
            "archived_at": None,
            "results_url": f"{self._fake.url}{ANTHROPIC_PREFIX}/{batch.id}/results" if ended else None,
        }

    # ---- OpenAI files --------------------------------------------------------------------------

    def _file_upload(self, _: str, request: _Req) -> _Response:
        fields = _form(request.headers.get("content-type", ""), request.body)
        if "purpose" not in fields or "file" not in fields:
            raise _Refused(400, "purpose and file are required")
        purpose = fields["purpose"][1].decode()
        if purpose not in FILE_PURPOSES:
            raise _Refused(400, f"purpose {purpose!r} is not one of {', '.join(FILE_PURPOSES)}")
        filename, data = fields["file"]
        file = _File(f"file-{next(self._numbers):024d}", filename or "upload", purpose, data, self.clock())
        self._files[file.id] = file
        return 200, {}, _json(_file_view(file))

    def _file_retrieve(self, file_id: str, _: _Req) -> _Response:
        return 200, {}, _json(_file_view(self._file(file_id)))

    def _file_delete(self, file_id: str, _: _Req) -> _Response:
        del self._files[self._file(file_id).id]
        return 200, {}, _json({"id": file_id, "object": "file", "deleted": True})

    def _file_content(self, file_id: str, _: _Req) -> _Response:
        file = self._file(file_id)
        if file.batch in self._batches:
            self._batches[file.batch].reads += 1
        return 200, {}, file.data

    def _file(self, file_id: str) -> _File:
        file = self._files.get(file_id)
        if file is None:
            raise _Refused(404, f"No such File object: {file_id}")
        return file

    # ---- OpenAI batches ------------------------------------------------------------------------

    def _openai_create(self, _: str, request: _Req) -> _Response:
        payload = _json_object(request.body)
        file = self._file(str(payload.get("input_file_id")))
        if file.purpose != "batch":
            raise _Refused(400, f"the input file's purpose is {file.purpose!r}, not 'batch'")
        if payload.get("endpoint") != CHAT_ENDPOINT:
            raise _Refused(400, f"endpoint: the fake serves {CHAT_ENDPOINT} only")
        if payload.get("completion_window") != "24h":
            raise _Refused(400, "completion_window: only 24h is supported")
        metadata = _metadata(payload.get("metadata"))
        requests, errors = self._read_input(file.data)
        batch = self._new_batch("openai", "batch_", request.api_key, requests)
        batch.input_file_id, batch.metadata = file.id, metadata
        view = self._openai_view(batch, "validating")
        if errors:  # as OpenAI does, the batch is made and fails its validation
            batch.errors = errors
            batch.ended_as, batch.ended_at = "failed", self.clock()
        return 200, {}, _json(view)

    def _read_input(self, data: bytes) -> tuple[list[_Request], list[dict[str, Any]]]:
        """The input file's requests, or the errors that fail the batch (then no requests)."""
        if len(data) > self.openai_max_bytes:
            return [], [_batch_error("file_too_large", f"the file is over the {self.openai_max_bytes} byte limit")]
        lines = [(n, line) for n, line in enumerate(data.splitlines(), 1) if line.strip()]
        if not lines:
            return [], [_batch_error("empty_file", "the input file has no requests")]
        if len(lines) > self.openai_max_requests:
            message = f"{len(lines)} requests, over the {self.openai_max_requests} limit"
            return [], [_batch_error("too_many_requests", message)]
        requests: list[_Request] = []
        errors: list[dict[str, Any]] = []
        for number, line in lines:
            try:
                requests.append(_openai_request(line))
            except _LineError as exc:
                errors.append(_batch_error(exc.code, exc.message, number))
        duplicate = _first_duplicate(r.custom_id for r in requests)
        if duplicate is not None:
            errors.append(_batch_error("duplicate_custom_id", f"custom_id {duplicate!r} is used more than once"))
        if self.openai_one_model and len({r.model for r in requests}) > 1:
            errors.append(_batch_error("mismatched_model", "every request of a batch must use the same model"))
        return ([], errors) if errors else (requests, [])

    def _openai_list(self, _: str, request: _Req) -> _Response:
        batches = self._newest_first("openai")
        limit = _limit(request.query, 100)
        after = _param(request.query, "after")
        start = _position(batches, after) + 1 if after else 0
        page = batches[start : start + limit]
        return 200, {}, _json({"object": "list", **_page(page, start + limit < len(batches), self._openai_view)})

    def _openai_retrieve(self, batch_id: str, _: _Req) -> _Response:
        return 200, {}, _json(self._openai_view(self._get(batch_id, "openai")))

    def _openai_cancel(self, batch_id: str, _: _Req) -> _Response:
        batch = self._get(batch_id, "openai")
        if batch.ended_as:
            raise _Refused(400, f"Cannot cancel a batch with status '{batch.ended_as}'.")
        batch.cancel_at = self.clock()
        view = self._openai_view(batch, "cancelling")
        self._finish(batch, "cancelled", CANCELED)
        return 200, {}, _json(view)

    def _openai_view(self, batch: _Batch, status: str = "") -> dict[str, Any]:
        status = status or batch.ended_as or "in_progress"
        ended = int(batch.ended_at) if batch.ended_at is not None else None
        counts = Counter(r.outcome for r in batch.requests)
        return {
            "id": batch.id,
            "object": "batch",
            "endpoint": CHAT_ENDPOINT,
            "model": batch.requests[0].model if batch.requests else None,
            "errors": {"object": "list", "data": batch.errors} if batch.errors else None,
            "input_file_id": batch.input_file_id,
            "completion_window": "24h",
            "status": status,
            "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id,
            "created_at": int(batch.created),
            "in_progress_at": None if status in ("validating", "failed") else int(batch.created),
            "expires_at": int(batch.created + self.window_s),
            "finalizing_at": ended if status == "completed" else None,
            "completed_at": ended if status == "completed" else None,
            "failed_at": ended if status == "failed" else None,
            "expired_at": ended if status == "expired" else None,
            "cancelling_at": int(batch.cancel_at) if batch.cancel_at is not None else None,
            "cancelled_at": ended if status == "cancelled" else None,
            "request_counts": {
                "total": len(batch.requests),
                "completed": counts[SUCCEEDED],
                "failed": counts[ERRORED] + counts[EXPIRED] + counts[CANCELED],
            },
            "metadata": batch.metadata or None,
        }

    # ---- Gemini --------------------------------------------------------------------------------

    def _gemini_create(self, model: str, request: _Req) -> _Response:
        if len(request.body) > self.gemini_max_bytes:
            raise _Refused(400, f"Request payload size exceeds the limit: {self.gemini_max_bytes} bytes.")
        spec = _json_object(request.body).get("batch")
        if not isinstance(spec, dict):
            raise _Refused(400, "batch: an object is required")
        display_name = spec.get("displayName")
        if not isinstance(display_name, str) or not display_name:
            raise _Refused(400, "batch.displayName: a name is required")
        source = spec.get("inputConfig")
        entries = source.get("requests", {}).get("requests") if isinstance(source, dict) else None
        if not isinstance(entries, list) or not entries:
            raise _Refused(400, "batch.inputConfig.requests.requests: a non-empty list is required")
        model = unquote(model).removeprefix("models/")
        requests = [_gemini_request(i, entry, model) for i, entry in enumerate(entries)]
        batch = self._new_batch("gemini", "batches/", request.api_key, requests)
        batch.display_name, batch.model = display_name, model
        return 200, {}, _json(self._gemini_view(batch, "BATCH_STATE_PENDING"))

    def _gemini_list(self, _: str, request: _Req) -> _Response:
        batches = self._newest_first("gemini")
        size, token = _param(request.query, "pageSize") or "50", _param(request.query, "pageToken") or "0"
        if not size.isdigit() or not 1 <= int(size) <= 1000 or not token.isdigit():
            raise _Refused(400, "pageSize: an integer from 1 to 1000 is required, pageToken one the list gave")
        start, end = int(token), int(token) + int(size)
        page: dict[str, Any] = {"operations": [self._gemini_view(b) for b in batches[start:end]]}
        if end < len(batches):
            page["nextPageToken"] = str(end)
        return 200, {}, _json(page)

    def _gemini_retrieve(self, batch_id: str, _: _Req) -> _Response:
        batch = self._get(f"batches/{batch_id}", "gemini")
        if batch.ended_as:  # its results come with it
            batch.reads += 1
        return 200, {}, _json(self._gemini_view(batch))

    def _gemini_cancel(self, batch_id: str, _: _Req) -> _Response:
        batch = self._get(f"batches/{batch_id}", "gemini")
        if batch.ended_as:
            raise _Refused(400, f"Batch {batch.id} is {_GEMINI_STATES[batch.ended_as]}: it cannot be cancelled.")
        batch.cancel_at = self.clock()
        self._finish(batch, "cancelled", CANCELED)
        return 200, {}, _json({})

    def _gemini_view(self, batch: _Batch, state: str = "") -> dict[str, Any]:
        """The batch as Google answers it: a long-running Operation whose metadata is the batch."""
        counts = Counter(r.outcome for r in batch.requests)
        metadata: dict[str, Any] = {
            "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.GenerateContentBatch",
            "name": batch.id,
            "model": f"models/{batch.model}",
            "displayName": batch.display_name,
            "createTime": _rfc3339(batch.created),
            "updateTime": _rfc3339(batch.ended_at or batch.created),
            "batchStats": {
                "requestCount": str(len(batch.requests)),
                "successfulRequestCount": str(counts[SUCCEEDED]),
                "failedRequestCount": str(counts[ERRORED]),
                "pendingRequestCount": str(counts[""]),
            },
            "state": state or _GEMINI_STATES.get(batch.ended_as, "BATCH_STATE_RUNNING"),
        }
        if not batch.ended_as:
            return {"name": batch.id, "metadata": metadata}
        output = {"inlinedResponses": {"inlinedResponses": [_gemini_response(r) for r in batch.requests]}}
        metadata.update(endTime=_rfc3339(batch.ended_at), output=output)
        kind = "type.googleapis.com/google.ai.generativelanguage.v1beta.GenerateContentBatchOutput"
        return {"name": batch.id, "metadata": metadata, "done": True, "response": {"@type": kind, **output}}

    # ---- answering and ending ------------------------------------------------------------------

    def _new_batch(self, provider: str, prefix: str, api_key: str, requests: list[_Request]) -> _Batch:
        n = next(self._numbers)
        batch = _Batch(f"{prefix}{n:024d}", provider, api_key, self.clock(), n, requests)
        self._batches[batch.id] = batch
        return batch

    def _end(self, batch: _Batch) -> None:
        for request in batch.requests:
            if not request.outcome:
                self._answer(batch, request)
        self._finish(batch, "completed", EXPIRED)  # nothing is left pending to expire

    def _finish(self, batch: _Batch, ended_as: str, rest: str) -> None:
        """End the batch: requests still pending become `rest`, and its results are written."""
        for request in batch.requests:
            request.outcome = request.outcome or rest
        batch.ended_as, batch.ended_at = ended_as, self.clock()
        if batch.provider == "anthropic":
            batch.results = _jsonl(_anthropic_line(r) for r in batch.requests)
            return
        if batch.provider == "gemini":  # its results are read from the batch itself (_gemini_view)
            return
        lines = [(r.outcome == SUCCEEDED, self._openai_line(r)) for r in batch.requests]
        batch.output_file_id = self._results_file(batch, "output", [line for ok, line in lines if ok])
        batch.error_file_id = self._results_file(batch, "error", [line for ok, line in lines if not ok])

    def _answer(self, batch: _Batch, request: _Request) -> None:
        """Answer one request as the sync route would (or as fail_items says) and bill it."""
        status, answer, input_tokens, output_tokens = self._respond(batch.provider, request.body)
        kind = self._failure(request) if status == 200 else ""  # as on the sync route: a bad body is a 400 first
        if kind == "malformed":  # unreadable, so billed nothing, as the storm records it
            del answer[_ANSWER_FIELD[batch.provider]]
            input_tokens = output_tokens = 0
        elif kind:
            status = ITEM_FAILURES[kind][0 if batch.provider == "anthropic" else 1]
            message = _REJECTIONS[401].replace(KEY_IN_MESSAGE, batch.api_key) if status == 401 else "simulated failure"
            answer, input_tokens, output_tokens = _error_body(batch.provider, status, message), 0, 0
        request.outcome = SUCCEEDED if status == 200 else ERRORED
        request.status, request.answer = status, answer
        fault = "missing_fields" if kind == "malformed" else ""
        call = Call(batch.provider, request.model, input_tokens, output_tokens, status, batch.api_key, fault, batch.id)
        self._fake._record(call)

    def _failure(self, request: _Request) -> str:
        rule = self._item_failures.get(request.model)
        if rule is None:
            return ""
        rate, kind, seed = rule
        return kind if random.Random(f"{seed}:{request.model}:{request.custom_id}").random() < rate else ""

    def _respond(self, provider: str, body: dict[str, Any]) -> tuple[int, dict[str, Any], int, int]:
        """(status, answer, input tokens, output tokens): FakeProvider._handle's reply and counting."""
        try:
            model, texts, last_user, limit = _parse(provider, _json(body))
        except (ValueError, _BadRequest, AttributeError, TypeError) as exc:
            return 400, _error_body(provider, 400, f"invalid request: {exc}"), 0, 0
        model = model or str(body.get("model", "")).removeprefix("models/")  # a Gemini request's "models/..."
        fixed = self._fake._reply_for(model, texts)
        text = fixed if fixed is not None else f"[{model}] " + last_user[:REPLY_PREFIX_CHARS]
        input_tokens, output_tokens, truncated = _tokens("\n".join(texts)), _tokens(text), False
        if limit is not None and output_tokens > limit:
            text, output_tokens, truncated = text[: limit * CHARS_PER_TOKEN], limit, True
        answer = _BODIES[provider][0](next(self._fake._ids), model, text, input_tokens, output_tokens, truncated)
        return 200, answer, input_tokens, output_tokens

    def _openai_line(self, request: _Request) -> dict[str, Any]:
        n = next(self._numbers)
        line: dict[str, Any] = {"id": f"batch_req_{n:024d}", "custom_id": request.custom_id}
        if request.outcome in (SUCCEEDED, ERRORED):
            response = {"status_code": request.status, "request_id": f"req_{n:024d}", "body": request.answer}
            return {**line, "response": response, "error": None}
        code, message = _NOT_RUN[request.outcome]
        return {**line, "response": None, "error": {"code": code, "message": message}}

    def _results_file(self, batch: _Batch, kind: str, lines: list[dict[str, Any]]) -> str | None:
        if not lines:  # as OpenAI does: no file rather than an empty one
            return None
        file_id = f"file-{next(self._numbers):024d}"
        data = _jsonl(lines)
        self._files[file_id] = _File(file_id, f"{batch.id}_{kind}.jsonl", "batch_output", data, self.clock(), batch.id)
        return file_id

    # ---- lookups -------------------------------------------------------------------------------

    def _get(self, batch_id: str, provider: str = "") -> _Batch:
        batch = self._batches.get(batch_id)
        if batch is None or (provider and batch.provider != provider):
            raise _Refused(404, f"no batch {batch_id}")
        return batch

    def _chosen(self, batch_id: str | None) -> list[_Batch]:
        """The batch named (a KeyError if unknown), or every batch in progress; ended ones are left."""
        if batch_id is None:
            return [b for b in self._batches.values() if not b.ended_as]
        if batch_id not in self._batches:
            raise KeyError(f"no batch {batch_id}")
        batch = self._batches[batch_id]
        return [] if batch.ended_as else [batch]

    def _newest_first(self, provider: str) -> list[_Batch]:
        return sorted((b for b in self._batches.values() if b.provider == provider), key=lambda b: -b.order)

    def _snapshot(self, batch: _Batch) -> SubmittedBatch:
        status = batch.ended_as or "in_progress"
        if batch.provider == "anthropic":
            status = "ended" if batch.ended_as else "in_progress"
        if batch.provider == "gemini":
            status = _GEMINI_STATES.get(batch.ended_as, "BATCH_STATE_RUNNING")
        requests = tuple(SubmittedRequest(r.custom_id, r.model, r.body, r.outcome) for r in batch.requests)
        return SubmittedBatch(
            batch.id, batch.provider, status, requests, dict(batch.metadata), batch.reads, batch.api_key
        )


def _refusal(provider: str, status: int, message: str) -> _Response:
    return status, {}, _json(_error_body(provider, status, message))


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body or b"null")
    except ValueError as exc:
        raise _Refused(400, f"the body is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise _Refused(400, "the body must be a JSON object")
    return value


def _anthropic_request(index: int, entry: Any) -> _Request:
    if not isinstance(entry, dict):
        raise _Refused(400, f"requests.{index}: an object is required")
    custom_id, params = entry.get("custom_id"), entry.get("params")
    if not isinstance(custom_id, str) or not CUSTOM_ID.fullmatch(custom_id):
        raise _Refused(400, f"requests.{index}.custom_id: 1 to 64 letters, digits, '-' or '_' are required")
    if not isinstance(params, dict):
        raise _Refused(400, f"requests.{index}.params: an object is required")
    return _Request(custom_id, str(params.get("model", "")), params)


def _openai_request(line: bytes) -> _Request:
    try:
        entry = json.loads(line)
    except ValueError:
        entry = None
    if not isinstance(entry, dict):
        raise _LineError("invalid_json_line", "This line is not parseable as valid JSON.")
    custom_id, body = entry.get("custom_id"), entry.get("body")
    if not isinstance(custom_id, str) or not custom_id or not isinstance(body, dict):
        raise _LineError("missing_required_parameter", "custom_id (a string) and body (an object) are required")
    if entry.get("method") != "POST":
        raise _LineError("invalid_method", "method must be POST")
    if entry.get("url") != CHAT_ENDPOINT:
        raise _LineError("mismatched_endpoint", f"url must be the batch's endpoint, {CHAT_ENDPOINT}")
    return _Request(custom_id, str(body.get("model", "")), body)


def _batch_error(code: str, message: str, line: int | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": None, "line": line}


def _first_duplicate(ids: Iterable[str]) -> str | None:
    seen: set[str] = set()
    for custom_id in ids:
        if custom_id in seen:
            return custom_id
        seen.add(custom_id)
    return None


def _metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > 16:
        raise _Refused(400, "metadata: an object of at most 16 pairs is required")
    for key, item in value.items():
        if not isinstance(item, str) or len(key) > 64 or len(item) > 512:
            raise _Refused(400, "metadata: keys of at most 64 characters, string values of at most 512")
    return dict(value)


def _param(query: dict[str, list[str]], name: str) -> str:
    return query.get(name, [""])[-1]


def _limit(query: dict[str, list[str]], most: int) -> int:
    text = _param(query, "limit") or "20"
    if not text.isdigit() or not 1 <= int(text) <= most:
        raise _Refused(400, f"limit: an integer from 1 to {most} is required")
    return int(text)


def _position(batches: list[_Batch], batch_id: str) -> int:
    for i, batch in enumerate(batches):
        if batch.id == batch_id:
            return i
    raise _Refused(400, f"no batch {batch_id} to page from")


def _page(page: list[_Batch], more: bool, view: Callable[[_Batch], dict[str, Any]]) -> dict[str, Any]:
    return {
        "data": [view(b) for b in page],
        "has_more": more,
        "first_id": page[0].id if page else None,
        "last_id": page[-1].id if page else None,
    }


def _file_view(file: _File) -> dict[str, Any]:
    return {
        "id": file.id,
        "object": "file",
        "bytes": len(file.data),
        "created_at": int(file.created),
        "filename": file.filename,
        "purpose": file.purpose,
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }


def _form(content_type: str, body: bytes) -> dict[str, tuple[str, bytes]]:
    """A multipart/form-data body's fields: name -> (filename or "", bytes)."""
    boundary = re.search(r'boundary="?([^";]+)"?', content_type)
    if not content_type.startswith("multipart/form-data") or boundary is None:
        raise _Refused(400, "a multipart/form-data body is required")
    fields: dict[str, tuple[str, bytes]] = {}
    for part in body.split(b"--" + boundary.group(1).encode())[1:-1]:
        head, _, data = part.partition(b"\r\n\r\n")
        name = re.search(rb'[;\s]name="([^"]*)"', head)
        filename = re.search(rb'filename="([^"]*)"', head)
        if name is not None:
            fields[name.group(1).decode()] = (
                filename.group(1).decode() if filename else "",
                data.removesuffix(b"\r\n"),
            )
    return fields


def _anthropic_line(request: _Request) -> dict[str, Any]:
    if request.outcome == SUCCEEDED:
        result: dict[str, Any] = {"type": SUCCEEDED, "message": request.answer}
    elif request.outcome == ERRORED:
        result = {"type": ERRORED, "error": request.answer}
    else:
        result = {"type": request.outcome}
    return {"custom_id": request.custom_id, "result": result}


def _jsonl(lines: Iterable[dict[str, Any]]) -> bytes:
    return b"".join(_json(line) + b"\n" for line in lines)


def _rfc3339(at: float | None) -> str | None:
    return None if at is None else datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


# ended_as -> Gemini's batch state
_GEMINI_STATES = {
    "completed": "BATCH_STATE_SUCCEEDED",
    "expired": "BATCH_STATE_EXPIRED",
    "cancelled": "BATCH_STATE_CANCELLED",
    "failed": "BATCH_STATE_FAILED",
}
# An errored request's HTTP status -> the gRPC code of the google.rpc.Status its response carries
_GRPC_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 408: 4, 429: 8, 500: 13, 503: 14, 504: 4}


def _gemini_request(index: int, entry: Any, model: str) -> _Request:
    where = f"batch.inputConfig.requests.requests[{index}]"
    if not isinstance(entry, dict) or not isinstance(entry.get("request"), dict):
        raise _Refused(400, f"{where}.request: an object is required")
    metadata = entry.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise _Refused(400, f"{where}.metadata: an object is required")
    body = entry["request"]
    named = str(body.get("model", "")).removeprefix("models/")
    key = (metadata or {}).get("key")
    return _Request(key if isinstance(key, str) and key else str(index), named or model, body, metadata=metadata)


def _gemini_response(request: _Request) -> dict[str, Any]:
    line: dict[str, Any] = {"metadata": request.metadata} if request.metadata is not None else {}
    if request.outcome == SUCCEEDED:
        return {"response": request.answer, **line}
    if request.outcome == ERRORED:
        message = (request.answer or {}).get("error", {}).get("message", "")
        return {"error": {"code": _GRPC_CODES.get(request.status, 2), "message": message}, **line}
    return line  # never run: expired or cancelled
