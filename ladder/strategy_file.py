"""The files `ladder strategy build` writes, and the lines it prints to make them a strategy.

A build's `Plan` names NEW's three files; this module renders and writes them:

- NEW.examples.jsonl: {"text", "tier"} lines, the embedding router's examples;
- NEW.holdout.jsonl: the held-out labels, for `ladder eval --labelled ... --against CURRENT`;
- NEW.toml: only what differs from the policies file's top-level sections (a strategy file is merged
  over those, not over its source) and [embedding] on with the new examples.

It also renders the `[strategies."NEW"]` and `[[experiments]]` lines for the policies file, and
checks that the policies file with those lines added loads NEW with its examples.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import msgspec

from ladder.settings import Settings
from policies.config import Policies, PolicyError, default_policies_text, examples_path, parse_policies
from policies.embedding_router import ExamplesError, parse_examples
from policies.labels import Built, LabelledExample, LabelSummary

EXPERIMENT_SHARE = 0.1  # of the traffic NEW is tried on before it routes every job


# BuildError and Plan live here, below strategy_cmd.py, because check_loads raises the one and every
# writer takes the other: strategy_cmd.py imports this module, never the reverse.


class BuildError(ValueError):
    """The build cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class Plan:
    """What the build reads and writes, checked before anything is read."""

    settings: Settings
    policies_file: Path | None
    source: str
    name: str
    out_dir: Path
    since: date | None
    until: date | None
    holdout_share: float
    share: float | None  # the top-tier share premium_score is calibrated for; None: no cut

    @property
    def chosen(self) -> Policies:
        return self.settings.policies.for_strategy(self.source)

    def path(self, suffix: str) -> Path:
        return self.out_dir / f"{self.name}{suffix}"

    @property
    def files(self) -> dict[str, Path]:
        return {
            "examples": self.path(".examples.jsonl"),
            "holdout": self.path(".holdout.jsonl"),
            "strategy": self.path(".toml"),
        }


# ---- rendering the strategy file -----------------------------------------------------------------


def toml_value(value: Any) -> str:
    """A TOML literal of a builtin (public: the printed next steps quote the strategy name with it)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")  # TOML wants DEL escaped too
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def _toml_table(name: str, table: dict[str, Any]) -> list[str]:
    lines = [f"[{name}]"]
    lines += [f"{key} = {toml_value(v)}" for key, v in table.items() if not isinstance(v, dict)]
    for key, v in table.items():
        if isinstance(v, dict):
            lines += ["", *_toml_table(f"{name}.{key}", v)]
    return lines


def _differences(base: Any, chosen: Any) -> dict[str, Any]:
    """The fields of `chosen` (nested dicts of builtins) that differ from `base`."""
    changed: dict[str, Any] = {}
    for key, value in chosen.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            inner = _differences(base[key], value)
            if inner:
                changed[key] = inner
        elif base.get(key) != value:
            changed[key] = value
    return changed


def strategy_sections(plan: Plan, cut: float | None) -> dict[str, dict[str, Any]]:
    """NEW's sections over the top level: the source's own rules and classifier changes (a strategy
    file is merged over the top-level sections, not over its source) and the new [embedding]."""
    top, chosen = plan.settings.policies, plan.chosen
    sections: dict[str, dict[str, Any]] = {}
    for section in ("rules", "classifier"):
        changed = _differences(
            msgspec.to_builtins(getattr(top, section)), msgspec.to_builtins(getattr(chosen, section))
        )
        if changed:
            sections[section] = changed
    e = chosen.embedding
    embedding: dict[str, Any] = {
        "enabled": True,
        "embedder": e.embedder,
        "examples": plan.files["examples"].name,
        "k": e.k,
        "threshold": e.threshold,
    }
    if cut is not None and plan.share is not None:
        embedding |= {"premium_share_target": plan.share, "premium_score": round(cut, 6)}
    sections["embedding"] = embedding
    return sections


def strategy_toml(plan: Plan, sections: dict[str, dict[str, Any]], summary: LabelSummary) -> str:
    header = [
        f"# Strategy '{plan.name}', built by `ladder strategy build` from '{plan.source}' on "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC:",
        f"# {summary.labelled_jobs:,} labelled jobs, {summary.examples_after:,} examples, "
        f"{summary.holdout:,} held out in {plan.files['holdout'].name}.",
        "# Sections here are merged over the policies file's top-level ones.",
    ]
    body: list[str] = []
    for name, table in sections.items():
        body += ["", *_toml_table(name, table)]
    return "\n".join(header + body) + "\n"


# ---- writing, and the lines for the policies file ------------------------------------------------


def _jsonl(rows: Iterable[msgspec.Struct]) -> bytes:
    encoder = msgspec.json.Encoder()
    return b"".join(encoder.encode(r) + b"\n" for r in rows)


class _ExampleLine(msgspec.Struct):
    text: str
    tier: str


def write_files(plan: Plan, built: Built, holdout: Sequence[LabelledExample], toml_text: str) -> None:
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    files = plan.files
    files["examples"].write_bytes(_jsonl(_ExampleLine(e.text, e.tier) for e in built.examples))
    files["holdout"].write_bytes(_jsonl(holdout))
    files["strategy"].write_text(toml_text, encoding="utf-8")


def _file_key(plan: Plan) -> str:
    """The strategy file as the policies file should name it: relative to its folder when possible."""
    target = plan.files["strategy"].resolve()
    if plan.policies_file is None:
        return str(target)
    return os.path.relpath(target, plan.policies_file.resolve().parent)


def policies_lines(plan: Plan) -> str:
    return f'[strategies."{plan.name}"]\nfile = {toml_value(_file_key(plan))}\n'


def experiment_lines(plan: Plan) -> str:
    control = round(1.0 - EXPERIMENT_SHARE, 6)
    return (
        "[[experiments]]\n"
        f"name = {toml_value(f'{plan.name}-trial')}\n"
        "arms = [\n"
        f'  {{ name = "control", strategy = {toml_value(plan.source)}, share = {control} }},\n'
        f"  {{ name = {toml_value(plan.name)}, strategy = {toml_value(plan.name)}, share = {EXPERIMENT_SHARE} }},\n"
        "]\n"
    )


def check_loads(plan: Plan) -> None:
    """The policies file with the lines added must load NEW with its examples: a build that wrote a
    strategy nobody can start is a failed build."""
    text = plan.policies_file.read_text(encoding="utf-8") if plan.policies_file else default_policies_text()
    folder = plan.policies_file.parent if plan.policies_file else plan.out_dir
    if plan.name not in plan.settings.policies.strategy_names:
        text += "\n" + policies_lines(plan)
    try:
        loaded = parse_policies(text, str(plan.policies_file or "<policies>"), folder).for_strategy(plan.name)
        path = examples_path(loaded)
        parse_examples(path.read_text(encoding="utf-8"), loaded.tier_names, str(path))
    except (PolicyError, ExamplesError, OSError, KeyError) as e:
        raise BuildError(f"the written strategy does not load: {e}") from None
