"""Exact cost of a call: genai-prices, with the policies file's overrides winning."""

from __future__ import annotations

from decimal import Decimal
from functools import lru_cache

from genai_prices import Usage, calc_price

from policies.config import Candidate, Policies, PolicyError, ProviderKind

MILLION = Decimal(1_000_000)

# genai-prices names Google's API "google"; ours is named after the SDK.
_PRICE_PROVIDER: dict[ProviderKind, str] = {"anthropic": "anthropic", "openai": "openai", "gemini": "google"}


class PriceBook:
    """Prices for every candidate of the policies, checked at start-up so no call runs unpriced."""

    def __init__(self, policies: Policies) -> None:
        self._policies = policies
        self.counterfactual = policies.top_tier.candidates[0]
        self.middle = policies.middle_tier.candidates[0]
        for tier in policies.tiers:
            for c in tier.candidates:
                self.cost(c, 1, 1)  # raises PolicyError if the model has no price
        classifier = Candidate(policies.classifier.provider, policies.classifier.model)
        self.cost(classifier, 1, 1)

    def cost(self, candidate: Candidate, input_tokens: int, output_tokens: int) -> Decimal:
        override = self._policies.prices.get(candidate.model)
        if override is not None:
            return (override.input_per_mtok * input_tokens + override.output_per_mtok * output_tokens) / MILLION
        kind = self._policies.providers[candidate.provider].kind
        return _catalogue_cost(_PRICE_PROVIDER[kind], candidate.model, input_tokens, output_tokens)

    def batch_cost(self, candidate: Candidate, input_tokens: int, output_tokens: int) -> Decimal:
        """The same tokens through the provider's batch API: the policies' discount off the synchronous
        price where it names the model, else genai-prices' batch price. A model whose synchronous price
        is overridden needs its discount named too (the catalogue's batch price would not match it)."""
        discount = self._policies.batch.discounts.get(candidate.model)
        if discount is not None:
            return self.cost(candidate, input_tokens, output_tokens) * (1 - discount)
        hint = f'add batch.discounts."{candidate.model}" (0.5 is half price)'
        if candidate.model in self._policies.prices:
            raise PolicyError(f"batch.discounts: '{candidate.model}' has a price override; {hint}")
        kind = self._policies.providers[candidate.provider].kind
        provider_id = _PRICE_PROVIDER[kind]
        price = _catalogue(provider_id, candidate.model, input_tokens, output_tokens, batch=True)
        if price is None:
            known = f"no batch price known for {provider_id} model '{candidate.model}'"
            raise PolicyError(f"batch.discounts: {known}; {hint}")
        return price

    def counterfactual_cost(self, input_tokens: int, output_tokens: int) -> Decimal:
        """What the same tokens would have cost on the top tier's first model."""
        return self.cost(self.counterfactual, input_tokens, output_tokens)

    def middle_tier_cost(self, input_tokens: int, output_tokens: int) -> Decimal:
        """What the same tokens would have cost on the middle tier's first model."""
        return self.cost(self.middle, input_tokens, output_tokens)


BATCH_CONTEXT = {"processing": "batch"}  # genai-prices' price variant of the providers' batch APIs


def _catalogue_cost(provider_id: str, model: str, input_tokens: int, output_tokens: int) -> Decimal:
    price = _catalogue(provider_id, model, input_tokens, output_tokens, batch=False)
    assert price is not None  # every model has a standard price
    return price


@lru_cache(maxsize=65536)
def _catalogue(provider_id: str, model: str, input_tokens: int, output_tokens: int, batch: bool) -> Decimal | None:
    """The catalogue's price; with `batch`, its batch price, or None when it has none for the model
    (genai-prices falls back to the standard price then, which would overstate the discount's absence)."""
    try:
        price = calc_price(
            Usage(input_tokens=input_tokens, output_tokens=output_tokens),
            model_ref=model,
            provider_id=provider_id,
            price_context=BATCH_CONTEXT if batch else None,
        )
    except LookupError as e:
        raise PolicyError(f"prices: no price known for {provider_id} model '{model}'; add [prices.\"{model}\"]") from e
    if batch and not any(v.when == BATCH_CONTEXT for v in price.model.price_variants or ()):
        return None
    return Decimal(price.total_price)
