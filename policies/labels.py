"""Labelled examples for the next strategy version, from the quality scores of past jobs.

A score row (ClickHouse `scores`) with a routing mark and a label tier says which tier its job
should have gone to. Per job one label is kept: feedback beats shadow beats escalation (a person's
word over a judge's, a judge's over a failed check); among several escalations the highest label
tier wins (the job climbed more than once), and among rows of one source the latest. Rows whose
routing is unknown, or whose label tier is empty or no longer a tier, say nothing and are ignored.

A label needs its job's text: the chosen row's, else any other row of the job (feedback rows carry
none), else the caller's `{job_id: text}` from the user's job files; labels still without text are
counted and skipped. Jobs with the same text (casefolded, whitespace collapsed) make one example,
the label chosen as above. A deterministic share of them, by a hash of the job id, is held out for
`ladder eval --labelled` and never becomes an example. The rest are merged over the current
strategy's examples: the same text takes the new label.

The labelled-file format (`parse_labelled`) and the routing figures of `ladder eval --labelled`
(`tally`) live here too: both are about routes measured against labels. Pure: no I/O.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal

import msgspec

from policies.embedding_router import Example
from policies.experiments import bucket
from policies.jsonl import parse_lines

SOURCE_RANK = {"escalation": 0, "shadow": 1, "feedback": 2}  # higher wins
UNKNOWN_ROUTING = -1
HOLDOUT_SALT = "holdout"


class LabelsError(ValueError):
    """A labelled file is wrong; the message names each bad line (up to ten)."""


class LabelRow(msgspec.Struct, frozen=True):
    """The columns of one `scores` row that labelling reads."""

    job_id: str
    source: str  # escalation | shadow | feedback
    routing: int  # 1 right, 0 wrong, -1 unknown
    label_tier: str  # "" when the score does not say
    text: str  # "" on feedback rows
    at: float = 0.0
    task: str = ""
    feature: str = ""


class Label(msgspec.Struct, frozen=True):
    job_id: str
    tier: str
    source: str
    text: str  # "" until filled in from a job file
    at: float
    task: str
    feature: str


class LabelledExample(msgspec.Struct, frozen=True, omit_defaults=True):
    """A line of a holdout (or any labelled) file: a text and the tier it should go to, with what is
    known of its job. Token counts, when present, let `ladder eval --labelled` estimate costs."""

    text: str
    tier: str
    job_id: str = ""
    task: str = ""
    feature: str = ""
    input_tokens: int | None = None
    output_tokens: int | None = None


class Choice(msgspec.Struct):
    """One label per job (sorted by job id), and how many rows said nothing."""

    labels: list[Label]
    rows: int
    ignored: int  # routing unknown, no label tier, a tier that no longer exists, or an unknown source

    def without_text(self) -> set[str]:
        """Job ids whose label has no text yet: what a job file can fill in."""
        return {label.job_id for label in self.labels if not label.text}


class LabelSummary(msgspec.Struct):
    rows: int  # score rows read
    ignored: int
    labelled_jobs: int
    by_source: dict[str, dict[str, int]]  # source -> label tier -> jobs
    without_text: int  # labelled jobs skipped: no text anywhere
    same_text: int  # labelled jobs whose text another job's label settled
    holdout: int
    examples_before: int
    examples_after: int
    added: int  # new texts
    relabelled: int  # current examples whose tier the new labels changed
    dropped_for_holdout: int  # current examples whose text is held out: a holdout must be unseen


class Built(msgspec.Struct):
    examples: list[LabelledExample]  # text and tier
    holdout: list[LabelledExample]
    summary: LabelSummary


def normalized(text: str) -> str:
    """The text as compared for sameness: casefolded, runs of whitespace made one space."""
    return " ".join(text.casefold().split())


def _rank(row: LabelRow | Label, tier_index: Mapping[str, int]) -> tuple[int, int, float]:
    tier = row.label_tier if isinstance(row, LabelRow) else row.tier
    # only escalations compare tiers: the highest of several climbs is what the job needed
    climb = tier_index[tier] if row.source == "escalation" else -1
    return SOURCE_RANK[row.source], climb, row.at


def _usable(row: LabelRow, tier_index: Mapping[str, int]) -> bool:
    return (
        row.routing != UNKNOWN_ROUTING
        and row.label_tier in tier_index
        and row.source in SOURCE_RANK
        and bool(row.job_id)
    )


def choose_labels(rows: Iterable[LabelRow], tier_names: Sequence[str]) -> Choice:
    """One label per job from its score rows, its text taken from any row of the job that has one."""
    tier_index = {name: i for i, name in enumerate(tier_names)}
    best: dict[str, LabelRow] = {}
    texts: dict[str, str] = {}
    count = ignored = 0
    for row in rows:
        count += 1
        if row.text and row.job_id not in texts:
            texts[row.job_id] = row.text
        if not _usable(row, tier_index):
            ignored += 1
            continue
        held = best.get(row.job_id)
        if held is None or _rank(row, tier_index) > _rank(held, tier_index):
            best[row.job_id] = row
    labels = [
        Label(job_id, r.label_tier, r.source, r.text or texts.get(job_id, ""), r.at, r.task, r.feature)
        for job_id, r in sorted(best.items())
    ]
    return Choice(labels, count, ignored)


def _by_text(labels: Iterable[Label], tier_index: Mapping[str, int]) -> tuple[dict[str, Label], int]:
    """One label per normalized text (the best by the per-job order, then the larger job id), and how
    many labelled jobs lost to another job with the same text."""
    kept: dict[str, Label] = {}
    same = 0
    for label in labels:
        key = normalized(label.text)
        held = kept.get(key)
        if held is not None:
            same += 1
            if (_rank(label, tier_index), label.job_id) <= (_rank(held, tier_index), held.job_id):
                continue
        kept[key] = label
    return kept, same


def _merged(
    current: Sequence[Example], new: Mapping[str, Label], held_out: set[str]
) -> tuple[list[LabelledExample], int, int]:
    """The current examples with new labels over the same texts, then the new texts: (examples,
    relabelled, dropped for the holdout)."""
    examples: list[LabelledExample] = []
    placed: set[str] = set()
    relabelled = dropped = 0
    for old in current:
        key = normalized(old.text)
        if key in held_out:
            dropped += 1
            continue
        label = new.get(key)
        if label is not None:
            relabelled += label.tier != old.tier
            placed.add(key)
        examples.append(LabelledExample(old.text, label.tier if label is not None else old.tier))
    examples += [LabelledExample(label.text, label.tier) for key, label in new.items() if key not in placed]
    return examples, relabelled, dropped


def in_holdout(job_id: str, share: float) -> bool:
    """Fixed by the job id alone: the same jobs are held out on every machine and every run."""
    return bucket(HOLDOUT_SALT, job_id) < share


def build_examples(
    choice: Choice,
    current: Sequence[Example],
    tier_names: Sequence[str],
    *,
    job_texts: Mapping[str, str] | None = None,
    holdout_share: float = 0.2,
) -> Built:
    """The next examples (the current ones with the labels merged in) and the held-out labels."""
    if not 0.0 <= holdout_share < 1.0:
        raise ValueError(f"holdout share {holdout_share} must be from 0 up to (not including) 1")
    tier_index = {name: i for i, name in enumerate(tier_names)}
    filled = [
        msgspec.structs.replace(label, text=(job_texts or {}).get(label.job_id, "")) if not label.text else label
        for label in choice.labels
    ]
    with_text = [label for label in filled if label.text.strip()]
    unique, same = _by_text(with_text, tier_index)
    held = {key: label for key, label in unique.items() if in_holdout(label.job_id, holdout_share)}
    train = {key: label for key, label in sorted(unique.items(), key=lambda kv: kv[1].job_id) if key not in held}
    examples, relabelled, dropped = _merged(current, train, set(held))
    holdout = [
        LabelledExample(label.text, label.tier, label.job_id, label.task, label.feature)
        for label in sorted(held.values(), key=lambda label: label.job_id)
    ]
    by_source: dict[str, dict[str, int]] = defaultdict(dict)
    for (source, tier), n in sorted(Counter((label.source, label.tier) for label in choice.labels).items()):
        by_source[source][tier] = n
    summary = LabelSummary(
        rows=choice.rows,
        ignored=choice.ignored,
        labelled_jobs=len(choice.labels),
        by_source=dict(by_source),
        without_text=len(filled) - len(with_text),
        same_text=same,
        holdout=len(holdout),
        examples_before=len(current),
        examples_after=len(examples),
        added=len(examples) - (len(current) - dropped),
        relabelled=relabelled,
        dropped_for_holdout=dropped,
    )
    return Built(examples, holdout, summary)


# ---- labelled files and routes measured against them ----------------------------------------------


class _LabelledLine(msgspec.Struct):
    text: str
    tier: str | None = None
    label: str | None = None  # simple | complex, as in the examples format
    job_id: str = ""
    task: str = ""
    feature: str = ""
    input_tokens: int | None = None
    output_tokens: int | None = None


_labelled_decoder = msgspec.json.Decoder(_LabelledLine)


def _labelled(raw: str, tier_names: Sequence[str], tasks: Sequence[str]) -> LabelledExample:
    try:
        line = _labelled_decoder.decode(raw)
    except msgspec.DecodeError as e:
        raise ValueError(str(e)) from None
    if not line.text.strip():
        raise ValueError("text: empty")
    if (line.tier is None) == (line.label is None):
        raise ValueError("give exactly one of 'tier' and 'label'")
    if line.label is not None and line.label not in ("simple", "complex"):
        raise ValueError(f"label: '{line.label}' is not simple or complex")
    tier = line.tier if line.tier is not None else tier_names[0 if line.label == "simple" else -1]
    if tier not in tier_names:
        raise ValueError(f"tier: '{tier}' is not a tier ({', '.join(tier_names)})")
    if line.task and line.task not in tasks:
        raise ValueError(f"task: '{line.task}' is not one of {', '.join(tasks)}")
    for field, value in (("input_tokens", line.input_tokens), ("output_tokens", line.output_tokens)):
        if value is not None and value < 0:
            raise ValueError(f"{field}: {value} is negative")
    return LabelledExample(line.text, tier, line.job_id, line.task, line.feature, line.input_tokens, line.output_tokens)


def parse_labelled(
    text: str, tier_names: Sequence[str], tasks: Sequence[str], source: str = "<labelled>"
) -> list[LabelledExample]:
    """Every line of a labelled JSONL text ({"text", "tier" | "label", "job_id"?, "task"?, "feature"?,
    "input_tokens"?, "output_tokens"?}); LabelsError naming the bad lines if any is wrong."""
    return parse_lines(text, lambda raw, _: _labelled(raw, tier_names, tasks), LabelsError, source, "labelled lines")


class RoutingFigures(msgspec.Struct):
    """How one strategy's first tiers compare with the labels: counts, and shares of `examples`."""

    strategy: str
    examples: int
    exact: int  # routed to the label tier
    under: int  # below it: a quality risk (the job would fail or answer worse)
    over: int  # above it: money spent for nothing
    top_tier: int
    asks_classifier: int  # undecided band jobs the embedding router did not place
    cost_per_1000: Decimal | None  # None when the rows carry no token counts
    by_label: dict[str, dict[str, int]]  # label tier -> routed tier -> jobs

    def share(self, count: int) -> float:
        return count / self.examples if self.examples else 0.0


def tally(
    strategy: str,
    labels: Sequence[str],
    routed: Sequence[str],
    asked: Sequence[bool],
    tier_names: Sequence[str],
    cost: Decimal | None = None,
) -> RoutingFigures:
    """Routes against labels, position by position; `cost` is the total over all the rows, if known."""
    index = {name: i for i, name in enumerate(tier_names)}
    gaps = [index[r] - index[label] for label, r in zip(labels, routed, strict=True)]
    by_label: dict[str, dict[str, int]] = {name: {} for name in tier_names if name in set(labels)}
    for label, r in zip(labels, routed, strict=True):
        by_label[label][r] = by_label[label].get(r, 0) + 1
    n = len(labels)
    return RoutingFigures(
        strategy=strategy,
        examples=n,
        exact=sum(g == 0 for g in gaps),
        under=sum(g < 0 for g in gaps),
        over=sum(g > 0 for g in gaps),
        top_tier=sum(r == tier_names[-1] for r in routed),
        asks_classifier=sum(asked),
        cost_per_1000=None if cost is None or not n else cost * 1000 / n,
        by_label=by_label,
    )
