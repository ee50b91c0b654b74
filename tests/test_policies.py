from __future__ import annotations

import re
from pathlib import Path

import pytest

from policies.config import PolicyError, load_policies, parse_policies
from tests.helpers import THREE_TIERS


def test_packaged_default_has_three_tiers_and_the_article_rules() -> None:
    p = load_policies()
    assert p.tier_names == ["cheap", "standard", "premium"]
    assert p.rules.input_token_threshold == 2000
    assert p.rules.premium_keywords == ["analyze", "compare", "architecture", "strategy"]
    assert p.classifier.simple_confidence == 0.8 and p.classifier.complex_confidence == 0.6


def test_ladder_policies_variable_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "p.toml"
    f.write_text(THREE_TIERS.replace('model = "gpt-4o-mini" }]', 'model = "gpt-4.1-nano" }]', 1))
    monkeypatch.setenv("LADDER_POLICIES", str(f))
    assert load_policies().tiers[0].candidates[0].model == "gpt-4.1-nano"


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        (
            lambda t: t.replace('provider = "gemini"', 'provider = "nope"'),
            "tiers.standard.candidates: unknown provider 'nope'",
        ),
        (lambda t: t.replace('name = "standard"', 'name = "cheap"'), "duplicate tier names"),
        (lambda t: t.replace('name = "standard"', 'name = "classify"'), "reserved"),
        (
            lambda t: t + '\n[limits]\nmax_prompt_chars = "many"\n',
            "Expected `int`, got `str` - at `$.limits.max_prompt_chars`",
        ),
        (lambda t: t.replace("[rules]", '[rules]\ndefault_tier = "free"'), "rules.default_tier: 'free' is not a tier"),
        (lambda t: t.replace("[rules]", "[rules]\ncolour = 1"), "unknown field `colour`"),
        (lambda t: t + "\n[[tiers]\n", "not valid TOML"),
        (lambda t: t + '\n[escalation]\nkeep_on_top_tier = ["sloppy"]\n', "escalation.keep_on_top_tier: ['sloppy']"),
        (lambda t: t + "\n[faults]\nmax_job_tries = 0\n", "faults.max_job_tries: 0 must be at least 1"),
        (lambda t: t + "\n[faults]\ncrash_retry_delay_s = -1\n", "faults.crash_retry_delay_s: -1.0 must be between"),
        (lambda t: t + "\n[limits]\nsettle_margin_s = 0\n", "limits.settle_margin_s: 0 must be at least 1"),
    ],
)
def test_bad_policies_name_the_field(mutation, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PolicyError, match=re.escape(message)):
        parse_policies(mutation(THREE_TIERS))


def test_missing_policies_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="not found"):
        load_policies(tmp_path / "missing.toml")
