"""`ladder` commands as background processes, for tests of real processes and real signals."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


class Process:
    """A `ladder` command running in the background, its log in a file (a pipe could fill up)."""

    def __init__(self, env: dict[str, str], log: Path, *args: str) -> None:
        self.log = log
        self._out = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ladder.cli", *args], env=env, stdout=self._out, stderr=subprocess.STDOUT
        )

    def stop(self, sig: signal.Signals, timeout: float) -> tuple[int, float]:
        """Send `sig`; the exit code and the seconds it took to exit."""
        sent = time.monotonic()
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        self._out.close()
        return code, time.monotonic() - sent

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._out.close()

    def output(self) -> str:
        return self.log.read_text()


def started_processes() -> Iterator[Callable[..., Process]]:
    """Start `ladder` processes; every one still running is killed at the end (the `processes` fixture)."""
    started: list[Process] = []

    def start(env: dict[str, str], log: Path, *args: str) -> Process:
        started.append(Process(env, log, *args))
        return started[-1]

    yield start
    for p in started:
        p.kill()


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def clickhouse_rows(env: dict[str, str], sql: str) -> list[list[Any]]:
    """Rows of a query on the test's chdb folder, in a process of its own (this one may hold another)."""
    code = (
        "import json, os, sys\n"
        "from worker.clickhouse import ClickHouse\n"
        "ch = ClickHouse(os.environ['CLICKHOUSE_URL'], os.environ.get('CLICKHOUSE_DATABASE', 'ladder'))\n"
        "print(json.dumps([[str(v) for v in row] for row in ch.query(sys.argv[1])]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code, sql], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows: list[list[Any]] = json.loads(result.stdout)
    return rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http_get(port: int, path: str) -> tuple[int, str]:
    """Status and body of GET http://127.0.0.1:port/path (a probe or /metrics), errors included."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return int(answer.status), answer.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
