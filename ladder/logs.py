"""structlog, configured once at start-up: JSON for machines, readable on a terminal, secrets masked."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog

SECRET_ENV_SUFFIXES = ("_API_KEY", "_TOKEN", "_SECRET", "_PASSWORD")
MASK = "***"


class SecretMasker:
    """A processor that replaces every known secret value anywhere in an event with ***."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets = sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True)

    def mask(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key, value in event.items():
            if isinstance(value, str):
                event[key] = self.mask(value)
            elif isinstance(value, BaseException):
                event[key] = self.mask(repr(value))
        return event


def secrets_from_env(env: dict[str, str]) -> list[str]:
    return [v for k, v in env.items() if k.endswith(SECRET_ENV_SUFFIXES) and v]


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
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
    return masker
