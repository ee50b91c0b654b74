"""structlog, configured once at start-up: JSON for machines, readable on a terminal, secrets masked.

Masking is the same as for exception messages (ladder/redact.py): the environment's secret values
and anything shaped like a key, in structlog's events and in the standard library's records (arq
logs through those), tracebacks included.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog

from ladder.redact import MASK, SECRET_ENV_SUFFIXES, Redactor, secrets_from_env

__all__ = ["MASK", "SECRET_ENV_SUFFIXES", "MaskingFormatter", "SecretMasker", "configure_logging", "secrets_from_env"]


class SecretMasker:
    """A structlog processor that masks secrets anywhere in an event, in nested lists and dicts too."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.mask = Redactor(secrets)

    def _masked(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, BaseException):
            return self.mask(repr(value))
        if isinstance(value, dict):
            return {k: self._masked(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._masked(v) for v in value]
        return value

    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key, value in event.items():
            event[key] = self._masked(value)
        return event


class MaskingFormatter(logging.Formatter):
    """A standard-library formatter whose whole output (message and traceback) is masked."""

    def __init__(self, mask: Redactor, fmt: str) -> None:
        super().__init__(fmt)
        self._mask = mask

    def format(self, record: logging.LogRecord) -> str:
        return self._mask(super().format(record))


def configure_logging(fmt: str, env: dict[str, str], level: int = logging.INFO) -> SecretMasker:
    masker = SecretMasker(secrets_from_env(env))
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            masker,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # arq logs through the standard library; keep its lines but quiet its per-job chatter.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(MaskingFormatter(masker.mask, "%(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    return masker
