"""`ladder report` as a user runs it after a real run: every report, its charts, and the HTML page."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import msgspec

from ladder.messages import Outcome, Score
from ladder.report_experiment import ARM_COLUMNS
from tests.fake_provider import FakeProvider
from tests.helpers import FAKE_KEYS, ladder, line
from tests.test_reports import DRIFT, drift_scores, escalated_job, outcome, shadow_call

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_reports_charts_and_the_html_page_after_a_run(
    cli_env: dict[str, str], fake: FakeProvider, tmp_path: Path
) -> None:
    jobs = tmp_path / "jobs.jsonl"
    lines = [line(id=f"j{i}", customer=f"c{i % 3}", feature="faq", prompt=f"question {i}?") for i in range(30)]
    lines += [line(id="legal", customer="c0", feature="legal-analysis", prompt="Is this clause enforceable?")]
    jobs.write_text("\n".join(lines) + "\n")
    fake.fail("gpt-4o-mini", status=500, times=3)  # three jobs escalate to standard
    ladder(cli_env, "run", str(jobs), "--batch", "r1", "--format", "json")
    customers = tmp_path / "customers.csv"
    customers.write_text("id,plan,revenue_per_request\nc0,usage,0.000001\nc1,usage,1\n")
    ladder(cli_env, "customers", "load", str(customers))

    savings_png, routing_png, spend_png = tmp_path / "savings.png", tmp_path / "routing.png", tmp_path / "spend.png"
    savings = json.loads(ladder(cli_env, "report", "savings", "--format", "json", "--chart", str(savings_png)).stdout)
    total = savings["rows"][-1]
    assert total["day"] == "TOTAL" and total["jobs"] == 31
    assert float(total["saved"]) > 0 and float(total["actual"]) < float(total["all_premium"])

    routing = json.loads(ladder(cli_env, "report", "routing", "--format", "json", "--chart", str(routing_png)).stdout)
    split = {r["tier"]: r for r in routing["tables"][0]["rows"]}
    assert (split["cheap"]["intended"], split["cheap"]["finished"]) == (30, 27)
    assert (split["standard"]["finished"], split["premium"]["finished"]) == (3, 1)
    moved = routing["tables"][2]["rows"]
    assert {"tier": "cheap", "reason": "transient", "escalated": 3, "failed_over": 0, "retried_429": 0,
            "dead": 0} in moved  # fmt: skip

    spend = ladder(cli_env, "report", "spend", "--by", "customer", "--customer", "c1", "--chart", str(spend_png))
    assert "c1" in spend.stdout and "c2" not in spend.stdout

    margins = json.loads(ladder(cli_env, "report", "margins", "--format", "json").stdout)
    by_customer = {r["customer"]: r for r in margins["rows"]}
    assert by_customer["c1"]["revenue"] == "10.00" and float(by_customer["c1"]["margin"]) > 0
    assert margins["rows"][0]["customer"] in ("c0", "c2")  # the negative margins come first
    assert float(margins["rows"][0]["margin"]) < 0

    latency = ladder(cli_env, "report", "latency", "--format", "csv").stdout.splitlines()
    assert latency[0] == "model,tier,calls,p50_ms,p95_ms,p99_ms" and len(latency) == 4
    quality = json.loads(ladder(cli_env, "report", "quality", "--format", "json").stdout)
    validation, scores, accuracy = quality["tables"]
    assert {(r["route"], r["tier"]) for r in validation["rows"]} >= {("rule", "cheap"), ("escalation", "standard")}
    assert scores["rows"] == [] and accuracy["rows"] == [] and quality["alerts"] == []  # no shadow evaluation here

    page = tmp_path / "report.html"
    ladder(cli_env, "report", "html", "-o", str(page))
    text = page.read_text()
    assert text.count("data:image/png;base64,") == 3
    for heading in ("Spend", "Savings", "Routing", "Quality", "Margins", "Latency"):
        assert f"<h2>{heading}</h2>" in text
    assert "routing accuracy by day" in text and "shadow and feedback scores" in text
    assert "<script" not in text and "http://" not in text and "https://" not in text  # self-contained

    for png in (savings_png, routing_png, spend_png):
        width, height = png_size(png.read_bytes())
        assert width > 500 and height > 300
    for secret in FAKE_KEYS.values():
        assert secret not in text


def test_report_arguments_are_checked(cli_env: dict[str, str]) -> None:
    bad = ladder(cli_env, "report", "spend", "--since", "yesterday-ish", check=False)
    assert bad.returncode == 2 and "--since: 'yesterday-ish' is not a date" in bad.stderr
    empty = json.loads(ladder(cli_env, "report", "savings", "--customer", "x' OR 1=1 --", "--format", "json").stdout)
    assert empty["rows"] == []


_SEED = """
import sys
import msgspec
from ladder.messages import Outcome, Score
from worker.clickhouse import ClickHouse

outcomes, scores = msgspec.msgpack.decode(open(sys.argv[3], "rb").read(), type=tuple[list[Outcome], list[Score]])
clickhouse = ClickHouse(sys.argv[1], sys.argv[2])
clickhouse.migrate()
if outcomes:
    clickhouse.insert_outcomes(outcomes)
if scores:
    clickhouse.insert_scores(scores)
"""


def seed(env: dict[str, str], tmp_path: Path, outcomes: list[Outcome], scores: list[Score]) -> None:
    """Rows written straight into the chdb folder the `ladder` subprocesses read (chdb opens one folder
    per process, and this one has its own already)."""
    data = tmp_path / "seed.msgpack"
    data.write_bytes(msgspec.msgpack.encode((outcomes, scores)))
    database = env.get("CLICKHOUSE_DATABASE", "ladder")
    subprocess.run([sys.executable, "-c", _SEED, env["CLICKHOUSE_URL"], database, str(data)], env=env, check=True,
                   timeout=120)  # fmt: skip


def test_quality_check_exits_3_while_routing_accuracy_drifts(
    cli_env: dict[str, str], policies_file: Path, tmp_path: Path
) -> None:
    policies_file.write_text(DRIFT)
    seed(cli_env, tmp_path, [outcome()], drift_scores())
    drifting = ladder(cli_env, "report", "quality", "--check", "--until", "2026-11-04", check=False)
    assert drifting.returncode == 3, drifting.stderr
    assert "ALERT: routing accuracy 72.2% over the 2 days to 2026-11-04 (65 of 90 shadow comparisons)" in (
        drifting.stdout.replace("\n", " ")
    )
    healthy = ladder(cli_env, "report", "quality", "--check", "--format", "json", check=False)
    assert healthy.returncode == 0, healthy.stderr
    alerts = json.loads(healthy.stdout)["alerts"]
    assert [(a["day"], a["judged"]) for a in alerts] == [("2026-11-03", 70), ("2026-11-04", 90)]
    assert ladder(cli_env, "report", "quality", "--until", "2026-11-04", check=False).returncode == 0  # no --check
    by_strategy = ladder(cli_env, "report", "quality", "--by-strategy", "--format", "csv").stdout
    assert "# routing accuracy by day (all outcomes)\nday,strategy,right,judged," in by_strategy
    assert "# ALERT: routing accuracy 68.6%" in by_strategy


EXPERIMENT = """
[strategies."rules-v2"]
rules = { default_tier = "standard" }

[[experiments]]
name = "lean"
arms = [{ name = "stay", strategy = "rules-v1", share = 0.5 }, { name = "lean", strategy = "rules-v2", share = 0.5 }]
"""


def test_experiment_report_in_each_format(cli_env: dict[str, str], policies_file: Path, tmp_path: Path) -> None:
    policies_file.write_text(policies_file.read_text() + EXPERIMENT)
    rows = []
    for arm, cost in (("stay", "0.01"), ("lean", "0.004")):
        tag: dict[str, object] = dict(experiment="lean", arm=arm)
        rows += [outcome(job_id=f"{arm}{i}", event_id=f"{arm}{i}", cost=Decimal(cost), **tag) for i in range(3)]
        extra = [*escalated_job(f"{arm}-esc"), shadow_call(f"{arm}-esc")]  # 0.002 + 0.005, and 0.02 apart
        rows += [msgspec.structs.replace(o, experiment="lean", arm=arm) for o in extra]
    seed(cli_env, tmp_path, rows, [])
    table = ladder(cli_env, "report", "experiment", "lean").stdout
    assert "stay (control)" in table and "$0.00925 (" in table  # (3 x 0.01 + 0.002 + 0.005) / 4, shadow apart
    assert "verdict, lean against stay: not enough data yet: arm stay has 4 and arm lean has 4 of the 200 jobs" in (
        table.replace("\n", " ")
    )
    data = json.loads(ladder(cli_env, "report", "experiment", "lean", "--format", "json").stdout)
    assert [(a["arm"], a["jobs"], a["escalation"]["successes"]) for a in data["arms"]] == [
        ("stay", 4, 1),
        ("lean", 4, 1),
    ]
    assert data["arms"][0]["cost_total"] == "0.037000000000" and data["arms"][0]["shadow_cost"] == "0.020000000000"
    assert data["verdicts"][0]["text"].startswith("not enough data yet")
    csv = ladder(cli_env, "report", "experiment", "lean", "--format", "csv").stdout.splitlines()
    assert csv[0] == ",".join(ARM_COLUMNS) and [r.split(",")[0] for r in csv[1:]] == ["stay", "lean"]
    unknown = ladder(cli_env, "report", "experiment", "x' OR '1'='1", check=False)
    assert unknown.returncode == 0
    assert "no experiment named \"x' OR '1'='1\" in the policies, and no outcomes carry it" in unknown.stdout
