"""Is an answer that came back 200 good enough to keep? Each failed check has its own error class,
so the fallback rate by reason is one GROUP BY.

Order matters only for which reason is recorded: refused, empty, truncated, invalid JSON, schema
mismatch, uncertain. Pure logic; the worker step that applies it is worker.steps.AnswerChecks.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import jsonschema

from policies.config import EMPTY, INVALID_JSON, REFUSED, SCHEMA_MISMATCH, TRUNCATED, UNCERTAIN, Escalation


def json_body(text: str) -> str:
    """The JSON inside an answer, tolerating a Markdown code fence around it."""
    body = text.strip()
    if body.startswith("```"):
        body = body.split("\n", 1)[1] if "\n" in body else ""
        body = body.rsplit("```", 1)[0]
    return body.strip()


@lru_cache(maxsize=1024)
def _validator(schema_json: str) -> jsonschema.protocols.Validator:
    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema)
    validator: jsonschema.protocols.Validator = cls(schema)
    return validator


def schema_problem(schema: dict[str, Any]) -> str | None:
    """Why a job's JSON schema is itself unusable, for the intake to reject the line."""
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        return str(e.message)
    return None


class AnswerChecker:
    def __init__(self, policy: Escalation) -> None:
        self._policy = policy
        self._phrases = [p.lower() for p in policy.uncertainty_phrases]

    def problem(self, text: str, finish_reason: str, schema: dict[str, Any] | None) -> tuple[str, str] | None:
        """(error class, detail) for an answer to escalate, or None to keep it."""
        p = self._policy
        if p.on_refusal and finish_reason == "refused":
            return REFUSED, "the provider refused"
        if p.on_empty and not text.strip():
            return EMPTY, "empty answer"
        if p.on_truncation and finish_reason == "length":
            return TRUNCATED, "cut off at the output token limit"
        if schema is not None and p.validate_json:
            found = self._schema_check(text, schema)
            if found is not None:
                return found
        lowered = text.lower()
        for phrase in self._phrases:
            if phrase in lowered:
                return UNCERTAIN, f"answer says '{phrase}'"
        return None

    @staticmethod
    def _schema_check(text: str, schema: dict[str, Any]) -> tuple[str, str] | None:
        try:
            value = json.loads(json_body(text))
        except json.JSONDecodeError as e:
            return INVALID_JSON, f"answer is not JSON: {e.msg} at char {e.pos}"
        error = jsonschema.exceptions.best_match(_validator(json.dumps(schema, sort_keys=True)).iter_errors(value))
        if error is not None:
            where = "/".join(str(x) for x in error.absolute_path) or "(root)"
            return SCHEMA_MISMATCH, f"answer does not match the schema at {where}: {error.message[:200]}"
        return None
