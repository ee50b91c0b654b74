"""Anthropic Messages API behind `Provider`, via the official SDK (no SDK retries: Ladder retries).

As in the OpenAI adapter, the SDK's client makes the call (`client.post`, its documented way to make
raw calls) and msgspec decodes the answer, to keep the SDK's pydantic models off the hot path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

import anthropic
import httpx2
import msgspec

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

JSON_INSTRUCTION = "Answer with a single JSON object and nothing else."


class _Block(msgspec.Struct):
    type: str
    text: str = ""


Tokens = Annotated[int, msgspec.Meta(ge=0)]


class _Usage(msgspec.Struct):
    input_tokens: Tokens = 0
    output_tokens: Tokens = 0


class _Message(msgspec.Struct):
    # Required, as the API always sends them: a 200 without them is a broken answer, not an empty
    # one, and one without usage would be billed by the provider while costing nothing here.
    content: list[_Block]
    usage: _Usage
    stop_reason: str | None = None


_decoder = msgspec.json.Decoder(_Message)
_FINISH = {
    "refusal": "refused",
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
}


class AnthropicProvider:
    name = "anthropic"

    def __init__(self, api_key: str | None = None, base_url: str | None = None, timeout: float = 60.0) -> None:
        # None lets the SDK read ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL itself.
        self._client = anthropic.AsyncAnthropic(api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout)

    async def complete(self, request: CompletionRequest) -> Completion:
        try:
            raw = await self._client.post("/v1/messages", body=message_body(request), cast_to=httpx2.Response)
        except anthropic.APIStatusError as exc:
            raise status_error(exc) from exc
        except anthropic.APIConnectionError as exc:  # APITimeoutError included
            raise Transient(f"anthropic: {exc.message}") from exc
        return completion_from(raw.content, raw.headers)

    async def aclose(self) -> None:
        await self._client.close()


def message_body(request: CompletionRequest) -> dict[str, object]:
    """The Messages API body for a request (a batch request's `params` too)."""
    system = [m.content for m in request.messages if m.role == "system"]
    if request.json_mode:  # the Messages API has no JSON switch: ask for it
        system.append(JSON_INSTRUCTION)
    body: dict[str, object] = {
        "model": request.model,
        "max_tokens": request.max_output_tokens,
        "messages": [{"role": m.role, "content": m.content} for m in request.messages if m.role != "system"],
    }
    if system:
        body["system"] = "\n\n".join(system)
    return body


def completion_from(raw: bytes | msgspec.Raw, headers: Mapping[str, str] | None = None) -> Completion:
    """A Message's JSON (a 200's body, or a succeeded batch result's message) as a Completion;
    MalformedResponse when it is not one. `headers`: the answer's, for its rate-limit figures."""
    try:
        response = _decoder.decode(raw)
    except msgspec.DecodeError as exc:  # ValidationError included: a field missing or of the wrong type
        raise MalformedResponse(f"anthropic: unreadable response: {exc}") from exc
    text = "".join(block.text for block in response.content if block.type == "text")
    headers = headers or {}
    return Completion(
        text=text,
        input_tokens=response.usage.input_tokens,
        output_tokens=response.usage.output_tokens,
        finish_reason=_FINISH.get(response.stop_reason or "", "other"),
        requests_left=header_int(headers, "anthropic-ratelimit-requests-remaining"),
        input_tokens_left=header_int(headers, "anthropic-ratelimit-input-tokens-remaining"),
        output_tokens_left=header_int(headers, "anthropic-ratelimit-output-tokens-remaining"),
    )


def status_error(exc: anthropic.APIStatusError, name: str = "anthropic") -> ProviderError:
    """An SDK error answer mapped as every adapter maps a status (the batch adapter's too)."""
    message = f"{name} {exc.status_code}: {exc.api_message or exc.message}"
    return error_for_status(exc.status_code, message, parse_retry_after(exc.response.headers.get("retry-after")))
