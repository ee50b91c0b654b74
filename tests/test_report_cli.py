"""`ladder report` as a user runs it after a real run: every report, its charts, and the HTML page."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from tests.fake_provider import FakeProvider
from tests.helpers import FAKE_KEYS, ladder, line

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
    assert {(r["route"], r["tier"]) for r in quality["rows"]} >= {("rule", "cheap"), ("escalation", "standard")}

    page = tmp_path / "report.html"
    ladder(cli_env, "report", "html", "-o", str(page))
    text = page.read_text()
    assert text.count("data:image/png;base64,") == 3
    for heading in ("Spend", "Savings", "Routing", "Quality", "Margins", "Latency"):
        assert f"<h2>{heading}</h2>" in text
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
