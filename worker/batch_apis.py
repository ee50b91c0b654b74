"""Building the batch APIs of the providers the tiers' batch models use, once per process."""

from __future__ import annotations

from collections.abc import Mapping

from policies.config import Policies
from policies.lanes import Lanes
from worker.batch_api import BatchAPI
from worker.providers import ProviderPool, provider_key
from worker.simulated_batches import SimulatedBatches
from worker.simulated_provider import SimulatedProvider


def batch_apis(policies: Policies, providers: ProviderPool, env: Mapping[str, str]) -> dict[str, BatchAPI]:
    """provider name -> its batch API, for each provider of a tier's batch model. A provider the pool
    simulates (no API key) gets the simulated batch API, which answers through the same stand-in."""
    apis: dict[str, BatchAPI] = {}
    names = {c.provider for c in Lanes(policies).batch_models.values()}
    for name in sorted(names):
        simulated = providers.get(name)
        if isinstance(simulated, SimulatedProvider):
            apis[name] = SimulatedBatches(simulated)
            continue
        config = policies.providers[name]
        key, base_url = provider_key(config, env), config.base_url or None
        if config.kind == "anthropic":
            from worker.anthropic_batches import AnthropicBatches

            apis[name] = AnthropicBatches(api_key=key, base_url=base_url, name=name)
        elif config.kind == "gemini":
            from worker.gemini_batches import GeminiBatches

            apis[name] = GeminiBatches(api_key=key, base_url=base_url, name=name)
        else:
            from worker.openai_batches import OpenAIBatches

            apis[name] = OpenAIBatches(api_key=key, base_url=base_url, name=name)
    return apis
