"""The `ladder` command as a user runs it: separate processes, real Redis, chdb, the fake provider."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from tests.fake_provider import FakeProvider
from tests.helpers import FAKE_KEYS, ladder, line


@pytest.fixture
def env(cli_env: dict[str, str]) -> dict[str, str]:
    return cli_env


@pytest.fixture
def jobs(tmp_path: Path) -> Path:
    lines = [line(id=f"j{i}", customer=f"c{i % 3}", feature="faq", prompt=f"question {i}?") for i in range(20)]
    lines += [line(id="s1", customer="c0", prompt="Compare the two offers"), "not json", line(id="np")]
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_run_processes_a_file_to_the_end_and_prints_spend_as_json(
    env: dict[str, str], jobs: Path, fake: FakeProvider, tmp_path: Path
) -> None:
    fake.reply("gpt-4.1-nano", '{"complexity": "simple", "confidence": 0.9}')
    result = ladder(env, "run", str(jobs), "--batch", "b1", "--format", "json")
    spend = json.loads(result.stdout)
    by_tier = {r["key"]: r for r in spend["rows"]}
    assert by_tier["cheap"]["requests"] == 20 and by_tier["standard"]["requests"] == 1
    assert by_tier["TOTAL"]["requests"] == len(fake.calls()) == 21
    assert not any("SIMULATED" in n for n in spend["notes"])  # every provider had a key

    rejects = [json.loads(x) for x in Path(f"{jobs}.rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"][:14]) for r in rejects] == [(22, "not valid JSON"), (23, "prompt: a job ")]

    out = tmp_path / "out.jsonl"
    ladder(env, "results", "--batch", "b1", "-o", str(out), "--format", "json")
    results = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(results) == 21 and {r["status"] for r in results} == {"ok"}
    first = results[0]
    assert first["id"] == "j0" and first["model"] == "gpt-4o-mini" and first["tier"] == "cheap"
    assert first["output"].startswith("[gpt-4o-mini]") and first["input_tokens"] > 0
    assert first["path"] == ["cheap:openai/gpt-4o-mini:ok"] and float(first["cost"]) > 0

    report = ladder(env, "report", "spend", "--by", "customer", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(report.stdout)))
    assert [r["key"] for r in rows] == ["c0", "c1", "c2", "TOTAL"] or {r["key"] for r in rows} == {
        "c0",
        "c1",
        "c2",
        "TOTAL",
    }
    assert int(next(r for r in rows if r["key"] == "c0")["requests"]) == 8

    # Secrets never reach output, logs, results or rejects.
    texts = [result.stdout, result.stderr, report.stdout, report.stderr, out.read_text()]
    texts.append(Path(f"{jobs}.rejects.jsonl").read_text())
    for secret in FAKE_KEYS.values():
        assert all(secret not in t for t in texts)
    assert {c.api_key for c in fake.calls()} <= set(FAKE_KEYS.values())  # and the keys were really used


def test_separate_enqueue_workers_and_sink_processes(env: dict[str, str], jobs: Path, fake: FakeProvider) -> None:
    fake.fail("gpt-4o-mini", status=500, times=2)
    enq = ladder(env, "enqueue", str(jobs), "--batch", "b2", "--format", "json")
    report = json.loads(enq.stdout)
    assert (report["accepted"], report["rejected"], report["routed"]) == (21, 2, {"cheap": 20, "standard": 1})
    again = json.loads(ladder(env, "enqueue", str(jobs), "--batch", "b2", "--format", "json").stdout)
    assert (again["accepted"], again["duplicates"]) == (0, 21)

    for tier in ("cheap", "standard", "premium"):
        ladder(env, "worker", "--tier", tier, "--burst")
    ladder(env, "sink", "--burst")
    spend = json.loads(ladder(env, "report", "spend", "--by", "tier", "--format", "json").stdout)
    by_tier = {r["key"]: r for r in spend["rows"]}
    assert (by_tier["cheap"]["requests"], by_tier["cheap"]["failed"]) == (20, 2)
    assert by_tier["standard"]["requests"] == 3  # one routed there, two escalated there
    assert len(fake.calls()) == 23  # each job ran once per attempt, none twice


def test_bad_usage_gets_a_clear_error(env: dict[str, str], tmp_path: Path) -> None:
    bad = ladder(env, "worker", "--tier", "platinum", "--burst", check=False)
    assert bad.returncode == 2 and "'platinum' is not a tier" in bad.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("[[tiers]]\nname = 'x'\ncandidates = []\n")
    res = ladder(dict(env, LADDER_POLICIES=str(broken)), "report", "spend", check=False)
    assert res.returncode == 2 and "tiers.x.candidates: at least one candidate is required" in res.stderr


def test_require_keys_refuses_to_simulate(env: dict[str, str], jobs: Path) -> None:
    no_keys = {k: v for k, v in env.items() if not k.endswith("_API_KEY")}
    res = ladder(dict(no_keys, LADDER_REQUIRE_KEYS="1"), "worker", "--tier", "cheap", "--burst", check=False)
    assert res.returncode == 2 and "has no API key: set" in res.stderr


def test_without_keys_the_run_is_simulated_and_says_so(env: dict[str, str], jobs: Path, fake: FakeProvider) -> None:
    no_keys = {k: v for k, v in env.items() if not k.endswith("_API_KEY")}
    res = ladder(dict(no_keys, LADDER_SIMULATED_FAILURE_RATE="0"), "run", str(jobs), "--batch", "sim")
    assert "SIMULATED" in res.stdout
    assert fake.calls() == []
