"""What `ladder strategy build` reads: labelled scores and token counts from ClickHouse, job texts
from job files, and the source strategy's current examples.

Nothing here decides or writes: strategy_cmd.py opens ClickHouse, and turns what these return into
labels with policies/labels.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

from ladder.messages import Rejection
from policies.config import Policies, examples_path
from policies.embedding_router import Example, parse_examples
from policies.labels import LabelRow
from producer.intake import JobValidator, read_lines
from worker.clickhouse import ClickHouse

_SHOWN_REJECTS = 20
_IDS_PER_QUERY = 5000

# Fixed SQL; only parameters vary. FINAL: a later feedback on a job has replaced the earlier one.
_SCORES_SQL = (
    "SELECT job_id, source, routing, label_tier, text, toUnixTimestamp64Milli(at) / 1000.0, task, feature "
    "FROM {db}.scores FINAL"
)
_TOKENS_SQL = (
    "SELECT job_id, any(input_tokens), any(output_tokens) FROM {db}.outcomes FINAL "
    "WHERE final AND job_id IN {ids:Array(String)} GROUP BY job_id"
)


def read_scores(clickhouse: ClickHouse, since: date | None, until: date | None) -> list[LabelRow]:
    conditions, parameters = [], {}
    if since is not None:
        conditions.append("toDate(at) >= {since:Date}")
        parameters["since"] = since
    if until is not None:
        conditions.append("toDate(at) <= {until:Date}")
        parameters["until"] = until
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    rows = clickhouse.query(_SCORES_SQL + where, parameters)
    return [
        LabelRow(str(job), str(source), int(routing), str(label), str(text), float(at), str(task), str(feature))
        for job, source, routing, label, text, at, task, feature in rows
    ]


def token_counts(clickhouse: ClickHouse, job_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
    """(input, output) tokens of each job's final call, where it is stored."""
    counts: dict[str, tuple[int, int]] = {}
    for start in range(0, len(job_ids), _IDS_PER_QUERY):
        rows = clickhouse.query(_TOKENS_SQL, {"ids": list(job_ids[start : start + _IDS_PER_QUERY])})
        counts.update({str(job): (int(i), int(o)) for job, i, o in rows})
    return counts


def job_texts(paths: Sequence[Path], wanted: set[str], policies: Policies, err: Console) -> dict[str, str]:
    """The texts of the wanted jobs from job files (read streaming, as `ladder enqueue` reads them), cut
    to learning.text_chars as the scores' texts are; bad lines are shown on `err` with their number and
    skipped, beside a progress bar per file."""
    validator = JobValidator(policies)
    limit = policies.learning.text_chars
    texts: dict[str, str] = {}
    for path in paths:
        rejected = 0
        with Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeElapsedColumn(), console=err
        ) as bar:
            task = bar.add_task(f"texts from {path.name}", total=path.stat().st_size)
            for number, raw, done in read_lines(path):
                parsed = validator.parse_line(number, raw)
                if isinstance(parsed, Rejection):
                    rejected += 1
                    if rejected <= _SHOWN_REJECTS:
                        err.print(f"[yellow]{escape(path.name)} line {number}[/]: {escape(parsed.reason)}")
                elif parsed.id in wanted:
                    texts[parsed.id] = parsed.text()[:limit]
                bar.update(task, completed=done)
        if rejected > _SHOWN_REJECTS:
            err.print(f"... {rejected - _SHOWN_REJECTS:,} more bad lines in {path}")
    return texts


def current_examples(chosen: Policies) -> list[Example]:
    """The examples the source strategy routes by: none when its embedding routing is off and it names
    no examples file (the packaged examples are a demo, not anyone's labels)."""
    if not chosen.embedding.enabled and not chosen.embedding.examples:
        return []
    path = examples_path(chosen)
    return parse_examples(path.read_text(encoding="utf-8"), chosen.tier_names, str(path))
