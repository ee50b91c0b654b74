"""Keeping credentials out of everything Ladder writes: log lines, outcome rows, dead letters, job
records and exception messages.

Two nets, because either alone misses some: the values of the environment's secrets, whatever their
shape (a proxy's token, the password in REDIS_URL or CLICKHOUSE_URL), and the shapes credentials
take in text (provider keys `sk-...`, `sk-ant-...`, `AIza...`; a bearer token; `?key=`; a URL's
password), for a key this process never read from its environment, such as one a proxy echoes back.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from urllib.parse import unquote, urlsplit

MASK = "***"
SECRET_ENV_SUFFIXES = ("_API_KEY", "_TOKEN", "_SECRET", "_PASSWORD")
MIN_SECRET_CHARS = 6  # shorter values ("1", "true") would mask ordinary words

# Whole keys: OpenAI (sk-, sk-proj-) and Anthropic (sk-ant-api03-) keys, Google API keys.
_KEY_SHAPES = re.compile(r"\bsk-[A-Za-z0-9][A-Za-z0-9_\-]{14,}|\bAIza[0-9A-Za-z_\-]{20,}")
# A credential known by what comes before it: the prefix is kept, the value masked.
_AFTER_PREFIX = re.compile(
    r"(?i)(\bbearer\s+|[?&](?:key|api_key|apikey|access_token|token)="
    r"|\b(?:x-api-key|x-goog-api-key|api[_-]?key)[\"']?\s*[:=]\s*[\"']?)"
    r"([^\s\"'&,;}\]]+)"
)
_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)([^@/\s]+)(@)")


def secrets_from_env(env: Mapping[str, str]) -> list[str]:
    """The values of secret-named variables, and the password of every URL in the environment."""
    found: list[str] = []
    for name, value in env.items():
        if name.endswith(SECRET_ENV_SUFFIXES) and value:
            found.append(value)
        elif "://" in value:
            try:
                password = urlsplit(value).password
            except ValueError:
                continue
            if password:
                found += [password, unquote(password)]
    return found


class Redactor:
    """Masks the given secret values and every credential-shaped string in a text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret that contains another is masked whole.
        self._secrets = sorted({s for s in secrets if len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Redactor:
        """For the environment's secrets (os.environ unless given), read now: errors are rare, and a
        copy kept from start-up could miss a key set since."""
        return cls(secrets_from_env(os.environ if env is None else env))

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        text = _KEY_SHAPES.sub(MASK, text)
        text = _AFTER_PREFIX.sub(lambda m: m.group(1) + MASK, text)
        return _URL_PASSWORD.sub(lambda m: m.group(1) + MASK + m.group(3), text)


def redact(text: str, env: Mapping[str, str] | None = None) -> str:
    """`text` with the environment's secrets (os.environ unless given) and key-shaped strings masked."""
    return Redactor.from_env(env)(text)


def scrub_exception(exc: BaseException, redactor: Redactor | None = None) -> None:
    """Mask, in place, the texts of `exc` and of the exceptions chained to it (args and string
    attributes such as an SDK error's `message`): a traceback that shows them shows no key."""
    redactor = redactor or Redactor.from_env()
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.args = tuple(redactor(a) if isinstance(a, str) else a for a in current.args)
        for name, value in list(vars(current).items()):
            if isinstance(value, str):
                vars(current)[name] = redactor(value)
        current = current.__cause__ or current.__context__
