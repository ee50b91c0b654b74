"""OpenAI Chat Completions behind `Provider`, via the official SDK; also any OpenAI-compatible server
(vLLM, Ollama, ...) given its base_url. No SDK retries: Ladder retries."""

from __future__ import annotations

from typing import cast

import openai
from openai.types.chat import ChatCompletionMessageParam

from worker.provider import Completion, CompletionRequest, ProviderError, Transient, error_for_status, parse_retry_after

_FINISH = {"stop": "stop", "length": "length"}


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
        messages = [cast(ChatCompletionMessageParam, {"role": m.role, "content": m.content}) for m in request.messages]
        try:
            # max_tokens, not max_completion_tokens: the one OpenAI-compatible servers all understand.
            response = await self._client.chat.completions.create(
                model=request.model,
                messages=messages,
                max_tokens=request.max_output_tokens,
                response_format={"type": "json_object"} if request.json_mode else openai.omit,
            )
        except openai.APIStatusError as exc:
            raise _status_error(exc, self.name) from exc
        except openai.APIConnectionError as exc:  # APITimeoutError included
            raise Transient(f"{self.name}: {exc.message}") from exc
        choice = response.choices[0] if response.choices else None
        usage = response.usage
        return Completion(
            text=(choice.message.content or "") if choice else "",
            input_tokens=usage.prompt_tokens if usage else 0,
            output_tokens=usage.completion_tokens if usage else 0,
            finish_reason=_FINISH.get(choice.finish_reason if choice else "", "other"),
        )

    async def aclose(self) -> None:
        await self._client.close()


def _status_error(exc: openai.APIStatusError, name: str) -> ProviderError:
    message = f"{name} {exc.status_code}: {exc.message}"
    return error_for_status(exc.status_code, message, parse_retry_after(exc.response.headers.get("retry-after")))
