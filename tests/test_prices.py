from __future__ import annotations

from decimal import Decimal

import pytest

from policies.config import Candidate, PolicyError, parse_policies
from policies.prices import PriceBook
from tests.helpers import ARTICLE_PRICES

ARTICLE_TIERS = """
[[tiers]]
name = "cheap"
candidates = [{ provider = "anthropic", model = "claude-3-5-haiku-20241022" }]
[[tiers]]
name = "premium"
candidates = [{ provider = "anthropic", model = "claude-3-5-sonnet-20241022" }]
[rules]
long_input_tier = "premium"
keyword_tier = "premium"
[classifier]
provider = "anthropic"
model = "claude-3-5-haiku-20241022"
"""

HAIKU = Candidate("anthropic", "claude-3-5-haiku-20241022")
SONNET = Candidate("anthropic", "claude-3-5-sonnet-20241022")


def test_the_articles_monthly_arithmetic_is_exact() -> None:
    book = PriceBook(parse_policies(ARTICLE_TIERS + ARTICLE_PRICES))
    requests = 1_000_000
    sonnet = book.cost(SONNET, 500, 200) * requests
    haiku = book.cost(HAIKU, 500, 200) * requests
    mixed = book.cost(HAIKU, 500, 200) * 700_000 + book.cost(SONNET, 500, 200) * 300_000
    assert sonnet == Decimal("4500")
    assert haiku == Decimal("1500")
    assert mixed == Decimal("2400")
    # the counterfactual is the same tokens on the top tier's first model
    assert book.counterfactual_cost(500, 200) * requests == Decimal("4500")


def test_summing_a_million_small_costs_does_not_drift() -> None:
    book = PriceBook(parse_policies(ARTICLE_TIERS + ARTICLE_PRICES))
    one = book.cost(HAIKU, 500, 200)
    assert sum([one] * 1_000_000, Decimal(0)) == Decimal("1500")


def test_genai_prices_is_used_when_no_override() -> None:
    book = PriceBook(parse_policies(ARTICLE_TIERS))
    # genai-prices lists claude-3-5-haiku at $0.80 / $4 per million
    assert book.cost(HAIKU, 1_000_000, 1_000_000) == Decimal("4.80")


def test_a_model_without_any_price_stops_start_up() -> None:
    text = ARTICLE_TIERS.replace("claude-3-5-sonnet-20241022", "my-local-model")
    with pytest.raises(PolicyError, match="no price known for anthropic model 'my-local-model'"):
        PriceBook(parse_policies(text))
    text += '\n[prices."my-local-model"]\ninput_per_mtok = "0"\noutput_per_mtok = "0"\n'
    assert PriceBook(parse_policies(text)).cost(Candidate("anthropic", "my-local-model"), 10, 10) == 0
