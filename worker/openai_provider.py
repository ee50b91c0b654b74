"""OpenAI Chat Completions behind `Provider`, via the official SDK; also any OpenAI-compatible server
(vLLM, Ollama, ...) given its base_url. No SDK retries: Ladder retries.

The request goes through the SDK's client (auth, base URL, headers, timeouts, status errors) with
its documented `client.post` for raw calls; the answer is decoded with msgspec instead of the SDK's
pydantic models, which were a third of the worker's CPU per call at batch rates.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, TypeVar

import httpx2
import msgspec
import openai

from worker.provider import (
    Completion,
    CompletionRequest,
    MalformedResponse,
    ProviderError,
    Transient,
    error_for_status,
    header_int,
    parse_retry_after,
)

T = TypeVar("T")
_FINISH = {"stop": "stop", "length": "length", "content_filter": "refused"}


class _Message(msgspec.Struct):
    content: str | None = None
    refusal: str | None = None


class _Choice(msgspec.Struct):
    message: _Message
    finish_reason: str | None = None


Tokens = Annotated[int, msgspec.Meta(ge=0)]


class _Usage(msgspec.Struct):
    prompt_tokens: Tokens = 0
    completion_tokens: Tokens = 0


class _ChatCompletion(msgspec.Struct):
    # A 200 without a choice is a broken answer, not an empty one. Usage stays optional: some
    # OpenAI-compatible servers leave it out (their models are priced at 0 anyway).
    choices: Annotated[list[_Choice], msgspec.Meta(min_length=1)]
    usage: _Usage | None = None


_decoder = msgspec.json.Decoder(_ChatCompletion)


class OpenAIProvider:
    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float = 60.0,
        name: str = "openai",
    ) -> None:
        # None lets the SDK read OPENAI_API_KEY and OPENAI_BASE_URL itself.
        self.name = name
        self._client = openai.AsyncOpenAI(api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout)

    async def complete(self, request: CompletionRequest) -> Completion:
        response, headers = await post_json(self._client, "/chat/completions", chat_body(request), _decoder, self.name)
        return _completion(response, headers)

    async def aclose(self) -> None:
        await self._client.close()


def chat_body(request: CompletionRequest) -> dict[str, object]:
    """The Chat Completions body for a request (a batch input line's `body` too)."""
    body: dict[str, object] = {
        "model": request.model,
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        # max_tokens, not max_completion_tokens: the one OpenAI-compatible servers all understand.
        "max_tokens": request.max_output_tokens,
    }
    if request.json_mode:
        body["response_format"] = {"type": "json_object"}
    return body


def completion_from(raw: bytes | msgspec.Raw, name: str = "openai") -> Completion:
    """A chat completion's JSON (a batch output line's response body) as a Completion;
    MalformedResponse when it is not one."""
    try:
        response = _decoder.decode(raw)
    except msgspec.DecodeError as exc:  # ValidationError included: a field missing or of the wrong type
        raise MalformedResponse(f"{name}: unreadable response: {exc}") from exc
    return _completion(response, {})


def _completion(response: _ChatCompletion, headers: Mapping[str, str]) -> Completion:
    choice = response.choices[0] if response.choices else None
    usage = response.usage
    return Completion(
        text=(choice.message.content or "") if choice else "",
        input_tokens=usage.prompt_tokens if usage else 0,
        output_tokens=usage.completion_tokens if usage else 0,
        finish_reason=_finish(choice),
        requests_left=header_int(headers, "x-ratelimit-remaining-requests"),
        tokens_left=header_int(headers, "x-ratelimit-remaining-tokens"),
    )


async def post_json(
    client: openai.AsyncOpenAI, path: str, body: dict[str, object], decoder: msgspec.json.Decoder[T], name: str
) -> tuple[T, httpx2.Headers]:
    """POST through the SDK's client (auth, base URL, timeouts, status errors), decode with msgspec,
    and map every failure into Ladder's classes: shared by chat and embeddings."""
    try:
        raw = await client.post(path, body=body, cast_to=httpx2.Response)
        return decoder.decode(raw.content), raw.headers
    except openai.APIStatusError as exc:
        raise status_error(exc, name) from exc
    except openai.APIConnectionError as exc:  # APITimeoutError included
        raise Transient(f"{name}: {exc.message}") from exc
    except msgspec.DecodeError as exc:  # ValidationError included: a field missing or of the wrong type
        raise MalformedResponse(f"{name}: unreadable response: {exc}") from exc


def status_error(exc: openai.APIStatusError, name: str = "openai") -> ProviderError:
    """An SDK error answer mapped as every adapter maps a status (the batch adapter's too)."""
    message = f"{name} {exc.status_code}: {exc.message}"
    return error_for_status(exc.status_code, message, parse_retry_after(exc.response.headers.get("retry-after")))


def _finish(choice: _Choice | None) -> str:
    if choice is None:
        return "other"
    if choice.message.refusal:  # structured outputs report a refusal here, with finish_reason "stop"
        return "refused"
    return _FINISH.get(choice.finish_reason or "", "other")
