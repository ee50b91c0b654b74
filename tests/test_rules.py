from __future__ import annotations

from ladder.messages import Job, RouteSource, TaskKind
from policies.config import Policies
from policies.rules import RuleRouter


def test_rules_follow_the_articles_order(policies: Policies) -> None:
    r = RuleRouter(policies)
    # a valid hint wins over everything
    d = r.route(Job(id="1", prompt="please analyze", feature="legal-analysis", tier_hint="cheap"))
    assert (d.tier, d.source) == ("cheap", RouteSource.HINT)
    # a premium feature wins over length and keywords
    d = r.route(Job(id="2", prompt="x " * 5000, feature="legal-analysis"))
    assert (d.tier, d.source) == ("premium", RouteSource.RULE)
    # long input goes to the long-input tier
    assert r.route(Job(id="3", prompt="word " * 2000)).tier == "standard"
    # a keyword, whole word, case-insensitive
    assert r.route(Job(id="4", prompt="Please ANALYZE these numbers")).tier == "standard"
    assert r.route(Job(id="5", prompt="the psychoanalyzer is broken")).tier == "cheap"
    # short and plain: the default
    d = r.route(Job(id="6", prompt="What's my account balance?"))
    assert (d.tier, d.reason) == ("cheap", "default")


def test_undecided_band_goes_to_classify_queue_only_for_its_tasks(policies: Policies) -> None:
    r = RuleRouter(policies)
    long_plain = "tell me about the weather in spring " * 40  # ~360 tokens, no keyword
    assert r.route(Job(id="1", prompt=long_plain, task=TaskKind.GENERATION)).tier == "classify"
    assert r.route(Job(id="2", prompt=long_plain, task=TaskKind.EXTRACTION)).tier == "cheap"
    assert r.route(Job(id="3", prompt="short", task=TaskKind.GENERATION)).tier == "cheap"


def test_messages_are_routed_on_their_whole_text(policies: Policies) -> None:
    from ladder.messages import Message

    job = Job(id="1", messages=[Message("system", "You compare things."), Message("user", "hi")])
    assert RuleRouter(policies).route(job).tier == "standard"
