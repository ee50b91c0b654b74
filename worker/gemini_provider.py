"""Gemini generateContent behind `Provider`, via google-genai (no SDK retries: Ladder retries)."""

from __future__ import annotations

import json
import re

import httpx2
import pydantic
from google import genai
from google.genai import errors, types

from worker.provider import (
    Completion,
    CompletionRequest,
    MalformedResponse,
    ProviderError,
    Transient,
    error_for_status,
    parse_retry_after,
)

_RETRY_DELAY = re.compile(r'"retryDelay":\s*"(\d+(?:\.\d+)?)s"')
_FINISH: dict[types.FinishReason | None, str] = {
    types.FinishReason.STOP: "stop",
    types.FinishReason.MAX_TOKENS: "length",
    types.FinishReason.SAFETY: "refused",
    types.FinishReason.RECITATION: "refused",
    types.FinishReason.BLOCKLIST: "refused",
    types.FinishReason.PROHIBITED_CONTENT: "refused",
    types.FinishReason.SPII: "refused",
}


class GeminiProvider:
    name = "gemini"

    def __init__(self, api_key: str | None = None, base_url: str | None = None, timeout: float = 60.0) -> None:
        # None lets the SDK read GOOGLE_API_KEY / GEMINI_API_KEY and GOOGLE_GEMINI_BASE_URL itself.
        options = types.HttpOptions(
            base_url=base_url,
            timeout=int(timeout * 1000),  # milliseconds
            retry_options=types.HttpRetryOptions(attempts=1),  # one attempt: no SDK retries
        )
        self._client = genai.Client(api_key=api_key, http_options=options)

    async def complete(self, request: CompletionRequest) -> Completion:
        contents, config = generate_args(request)
        try:
            response = await self._client.aio.models.generate_content(
                model=request.model, contents=contents, config=config
            )
        except errors.APIError as exc:
            raise status_error(exc) from exc
        except (TimeoutError, httpx2.TransportError, OSError) as exc:  # connection, timeout
            raise Transient(f"gemini: {type(exc).__name__}: {exc}") from exc
        except (json.JSONDecodeError, pydantic.ValidationError) as exc:  # the SDK reads the 200's body itself
            raise MalformedResponse(f"gemini: unreadable response: {unreadable(exc)}") from exc
        return completion_from(response)

    async def aclose(self) -> None:
        await self._client.aio.aclose()


def generate_args(request: CompletionRequest) -> tuple[list[types.Content], types.GenerateContentConfig]:
    """The contents and config of a generateContent call for a request (a batch's inline request too)."""
    system = "\n\n".join(m.content for m in request.messages if m.role == "system")
    contents = [
        types.Content(role="model" if m.role == "assistant" else "user", parts=[types.Part(text=m.content)])
        for m in request.messages
        if m.role != "system"
    ]
    config = types.GenerateContentConfig(
        system_instruction=system or None,
        max_output_tokens=request.max_output_tokens,
        response_mime_type="application/json" if request.json_mode else None,
    )
    return contents, config


def unreadable(exc: json.JSONDecodeError | pydantic.ValidationError) -> str:
    """Where the body went wrong, in one line (pydantic's own message spans several and quotes the input)."""
    if isinstance(exc, json.JSONDecodeError):
        return f"not JSON: {exc.msg} at char {exc.pos}"
    first = exc.errors()[0]
    return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']} ({exc.error_count()} errors)"


def completion_from(response: types.GenerateContentResponse, name: str = "gemini") -> Completion:
    """The answer of a 200 (or a batch request's response), or MalformedResponse when its body is not
    one. The SDK accepts any JSON (an empty body, null, {}) as a response with every field None: a real
    answer has candidates, or promptFeedback saying why it has none."""
    feedback = response.prompt_feedback
    if not response.candidates and feedback is None:
        raise MalformedResponse(f"{name}: unreadable response: neither candidates nor promptFeedback")
    usage = response.usage_metadata
    input_tokens = (usage.prompt_token_count or 0) if usage else 0
    output_tokens = (usage.candidates_token_count or 0) if usage else 0
    if input_tokens < 0 or output_tokens < 0:
        raise MalformedResponse(f"{name}: unreadable response: negative token counts {input_tokens}, {output_tokens}")
    candidate = response.candidates[0] if response.candidates else None
    if candidate is not None and candidate.content is None and candidate.finish_reason is None:
        # A blocked answer has no content but says why; one that says nothing is no answer.
        raise MalformedResponse(f"{name}: unreadable response: a candidate with neither content nor finishReason")
    parts = candidate.content.parts if candidate and candidate.content else None
    finish = _FINISH.get(candidate.finish_reason if candidate else None, "other")
    if candidate is None and feedback is not None and feedback.block_reason:
        finish = "refused"  # the prompt itself was blocked
    return Completion(
        text="".join(p.text for p in parts or [] if p.text and not p.thought),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        finish_reason=finish,
    )


def status_error(exc: errors.APIError, name: str = "gemini") -> ProviderError:
    """An SDK error answer mapped as every adapter maps a status (the batch adapter's too)."""
    headers = getattr(exc.response, "headers", None)
    retry_after = parse_retry_after(headers.get("retry-after") if headers is not None else None)
    if retry_after is None:  # Gemini says how long to wait in a RetryInfo detail, not a header
        found = _RETRY_DELAY.search(json.dumps(exc.details, default=str))
        retry_after = float(found.group(1)) if found else None
    return error_for_status(exc.code, f"{name} {exc.code} {exc.status}: {exc.message}", retry_after)
