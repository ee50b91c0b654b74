"""Building the providers named in the policies, once per process.

A provider whose API key is missing is simulated (embedded demo), unless LADDER_REQUIRE_KEYS is
set, in which case a missing key stops start-up with an error naming the variable.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import structlog

from policies.config import Policies, ProviderConfig
from worker.provider import Completion, CompletionRequest, Provider, ProviderError
from worker.simulated_provider import SimulatedProvider

log = structlog.get_logger("ladder.worker")

DEFAULT_KEY_ENV = {
    "anthropic": ("ANTHROPIC_API_KEY",),
    "openai": ("OPENAI_API_KEY",),
    "gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
}


def account_of(api_key: str | None) -> str:
    """A lane's account label: a short digest, so no key ever appears in Redis or a log."""
    if not api_key:
        return "default"
    return hashlib.sha256(api_key.encode()).hexdigest()[:12]


class MissingKeyError(RuntimeError):
    pass


def key_vars(config: ProviderConfig) -> tuple[str, ...]:
    """The variables a provider's key is read from: its own `api_key_env`, else the SDK's."""
    return (config.api_key_env,) if config.api_key_env else DEFAULT_KEY_ENV[config.kind]


def provider_key(config: ProviderConfig, env: Mapping[str, str]) -> str | None:
    key = next((env[v] for v in key_vars(config) if env.get(v)), None)
    if key is None and config.kind == "openai" and config.base_url and not config.api_key_env:
        key = "unused"  # local OpenAI-compatible servers usually take no key
    return key


def _build(name: str, config: ProviderConfig, key: str | None) -> Provider:
    base_url = config.base_url or None
    if config.kind == "anthropic":
        from worker.anthropic_provider import AnthropicProvider

        return AnthropicProvider(api_key=key, base_url=base_url)
    if config.kind == "openai":
        from worker.openai_provider import OpenAIProvider

        return OpenAIProvider(api_key=key, base_url=base_url, name=name)
    from worker.gemini_provider import GeminiProvider

    return GeminiProvider(api_key=key, base_url=base_url)


class ProviderPool:
    """One client per provider name; `simulated` lists the names answered by the stand-in."""

    def __init__(
        self,
        policies: Policies,
        env: Mapping[str, str],
        require_keys: bool = False,
        simulated_failure_rate: float = 0.0,
    ) -> None:
        self._providers: dict[str, Provider] = {}
        self.simulated: set[str] = set()
        self.accounts: dict[str, str] = {}  # provider name -> account label (a digest of its key)
        used = {c.provider for t in policies.tiers for c in t.candidates} | {policies.classifier.provider}
        if policies.shadow.judge_provider:  # the judge of shadow evaluation may be a provider no tier uses
            used.add(policies.shadow.judge_provider)
        for name in sorted(used):
            config = policies.providers[name]
            key = provider_key(config, env)
            if key is None:
                if require_keys:
                    raise MissingKeyError(
                        f"provider '{name}' has no API key: set {' or '.join(key_vars(config))} "
                        "(LADDER_REQUIRE_KEYS forbids the simulated provider)"
                    )
                self._providers[name] = SimulatedProvider(name, simulated_failure_rate)
                self.simulated.add(name)
            else:
                self._providers[name] = _build(name, config, key)
                self.accounts[name] = account_of(key)

    def get(self, name: str) -> Provider:
        return self._providers[name]

    async def complete(self, name: str, request: CompletionRequest) -> Completion:
        """The named provider's answer. Each adapter maps its SDK's failures; one it missed (an SDK
        change) would crash the job after the call was made, losing the call's row. It becomes a
        failed call (class "error"), so the job moves on, and the log asks for the mapping."""
        try:
            return await self._providers[name].complete(request)
        except ProviderError:
            raise
        except Exception as exc:
            kind = type(exc).__name__
            log.error("provider raised an unmapped exception", provider=name, model=request.model,
                      error_type=kind, error=str(exc)[:300])  # fmt: skip
            raise ProviderError(f"{name}: unmapped {kind}: {str(exc)[:200]}") from exc

    def is_simulated(self, name: str) -> bool:
        return name in self.simulated

    async def aclose(self) -> None:
        for provider in self._providers.values():
            await provider.aclose()
