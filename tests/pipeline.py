"""Driving the whole path inside a test: enqueue, burst workers in tier order, sink."""

from __future__ import annotations

from pathlib import Path

from ladder.app import App, open_app
from ladder.messages import Rejection
from ladder.settings import Settings
from producer.submit import SubmitReport
from worker.classifier_worker import classifier_worker
from worker.shadow_worker import shadow_worker
from worker.tier_worker import tier_worker


async def enqueue(app: App, path: Path, batch: str) -> tuple[SubmitReport, list[Rejection]]:
    rejected: list[Rejection] = []
    report = await app.producer().submit_file(path, batch, rejected.append)
    return report, rejected


async def drain_workers(app: App) -> None:
    """Escalation only moves up, so one burst pass per queue, classifier first, settles every job;
    the shadow queue, filled as jobs settle, goes last."""
    await classifier_worker(await app.classifier_runtime(), burst=True, poll_delay=0, handle_signals=False).async_run()
    runtime = app.tier_runtime()
    for tier in app.settings.policies.tier_names:
        await tier_worker(runtime, tier, burst=True, poll_delay=0, handle_signals=False).async_run()
    if app.settings.policies.shadow.enabled:
        await shadow_worker(app.shadow_runtime(), burst=True, poll_delay=0, handle_signals=False).async_run()


async def process(app: App, path: Path, batch: str) -> tuple[SubmitReport, list[Rejection]]:
    report, rejected = await enqueue(app, path, batch)
    await drain_workers(app)
    await app.sink().run(burst=True)
    return report, rejected


async def outcome_rows(settings: Settings, tmp_path: Path, *jobs: str) -> list[tuple[str, ...]]:
    """Process job lines to the end in batch "faults"; each attempt's (job_id, tier, model, status,
    error_class) from ClickHouse, in job and attempt order."""
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(jobs) + "\n")
    async with open_app(settings) as app:
        await process(app, path, "faults")
        rows = app.clickhouse().query(
            "SELECT job_id, tier, model, status, error_class FROM {db}.outcomes FINAL ORDER BY job_id, attempt"
        )
    return [tuple(r) for r in rows]
