"""The secrets canary: a pytest hook and an autouse fixture, which tests/conftest.py imports so that
they serve the whole suite.

Every key the tests hand to an SDK or a `ladder` process carries MARKER (tests/helpers.py FAKE_KEYS,
tests/fake_provider.py DEFAULT_KEYS), and a test fails when MARKER shows up where a key must never go:

- what it printed or logged: pytest's captured stdout, stderr and log of each phase;
- its failure text: a test that fails for another reason keeps its failure, with a canary section added;
- output it took for itself: `subprocess.run` is wrapped for each test, so every helper that runs
  `ladder` (or python -c) and captures its output is checked, and so is capsys/capfd `readouterr()`;
  processes writing to a log file under tmp_path are checked with the files;
- every file under its tmp_path, read as bytes: results, rejects, logs, reports, and the chdb data
  folders of its `ladder` processes (chdb compresses columns with LZ4, which stores the first
  occurrence of a string in each block as it is, so a key in a column shows in the bytes);
- every row of every table of its ClickHouse database (teardown of the `clickhouse` fixture);
- every key and value of its Redis database (teardown of `clean_redis`, before the flush).

A canary failure quotes where the marker was found with the marker replaced by SHOWN_AS, so the
failure text does not leak again. LADDER_CANARY_MARKER sets another marker: tests/test_secrets.py runs
an inner pytest with one, to prove that each of these checks fails a test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Generator, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from worker.clickhouse import ClickHouse

MARKER = os.environ.get("LADDER_CANARY_MARKER") or "LADDERCANARY"
SHOWN_AS = "<canary>"
QUOTED_CHARS = 80  # either side of the marker
QUOTES_PER_PLACE = 2
SECTION = "canary: a fake API key leaked"
_DATA_ENGINES = ("Memory", "Log", "TinyLog", "StripeLog")
_REDIS_CHUNK = 500


class CanaryLeak(AssertionError):
    pass


def leaks(where: str, text: str | bytes) -> list[str]:
    """One line per occurrence of MARKER in `text` (at most QUOTES_PER_PLACE), saying where and
    quoting its surroundings."""
    if isinstance(text, bytes):
        if MARKER.encode() not in text:
            return []
        text = text.decode("utf-8", "replace")
    found: list[str] = []
    where = where.replace(MARKER, SHOWN_AS)  # a command line may hold the key too
    at = text.find(MARKER)
    while at >= 0 and len(found) < QUOTES_PER_PLACE:
        quote = text[max(0, at - QUOTED_CHARS) : at + len(MARKER) + QUOTED_CHARS]
        found.append(f"{where}: ...{quote.replace(MARKER, SHOWN_AS)!r}...")
        at = text.find(MARKER, at + len(MARKER) + QUOTED_CHARS)
    return found


def leak_message(found: Iterable[str]) -> str:
    return f"the canary marker of the fake API keys ({SHOWN_AS} below) leaked:\n" + "\n".join(f"  {f}" for f in found)


def assert_no_canary(where: str, *texts: str | bytes | None) -> None:
    """Fail when MARKER is in any of `texts` (a process's stdout and stderr, a page, a file)."""
    found = [leak for text in texts if text for leak in leaks(where, text)]
    if found:
        raise CanaryLeak(leak_message(found))


def file_leaks(root: Path) -> list[str]:
    """MARKER in any file under `root`, as bytes (symbolic links and sockets are not followed)."""
    found: list[str] = []
    marker = MARKER.encode()
    for folder, _, names in os.walk(root):
        for name in sorted(names):
            path = Path(folder, name)
            if path.is_symlink() or not path.is_file():
                continue
            try:
                data = path.read_bytes()
            except OSError:
                continue
            if marker in data:
                found += leaks(f"file {path.relative_to(root)}", data)[:1]
    return found


def clickhouse_leaks(ch: ClickHouse) -> list[str]:
    """MARKER in any row of any table of the database, each row read as its text form."""
    tables = ch.query(
        "SELECT name FROM system.tables WHERE database = {database:String} "
        "AND (engine LIKE '%MergeTree' OR engine IN {engines:Array(String)}) ORDER BY name",
        {"database": ch.database, "engines": list(_DATA_ENGINES)},
    )
    found: list[str] = []
    for (table,) in tables:
        rows = ch.query(
            f"SELECT formatRow('TabSeparated', *) AS r FROM {{db}}.`{table}` "  # table names from system.tables
            "WHERE position(r, {marker:String}) > 0 LIMIT 3",
            {"marker": MARKER},
        )
        for (row,) in rows:
            found += leaks(f"ClickHouse {ch.database}.{table}", str(row))
    return found


def _flat(value: Any) -> bytes:
    """Every byte string in a Redis reply (values, fields, stream ids and entries), joined."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, dict):
        return b"\n".join(_flat(k) + b"\t" + _flat(v) for k, v in value.items())
    if isinstance(value, (list, tuple, set)):
        return b"\n".join(_flat(v) for v in value)
    return str(value).encode()


_READ_BY_TYPE = {
    b"string": lambda pipe, key: pipe.get(key),
    b"hash": lambda pipe, key: pipe.hgetall(key),
    b"list": lambda pipe, key: pipe.lrange(key, 0, -1),
    b"set": lambda pipe, key: pipe.smembers(key),
    b"zset": lambda pipe, key: pipe.zrange(key, 0, -1),
    b"stream": lambda pipe, key: pipe.xrange(key),
}


def redis_leaks(client: redis.Redis) -> list[str]:
    """MARKER in any key name or value of the client's database: job records, queued tasks, dead
    letters, outcome stream entries, counters."""
    keys = list(client.scan_iter(count=1000))
    found: list[str] = []
    for start in range(0, len(keys), _REDIS_CHUNK):
        chunk = keys[start : start + _REDIS_CHUNK]
        pipe = client.pipeline(transaction=False)
        for key in chunk:
            pipe.type(key)
        types = pipe.execute()
        pipe = client.pipeline(transaction=False)
        for key, kind in zip(chunk, types, strict=True):
            _READ_BY_TYPE.get(_flat(kind), lambda p, k: p.echo(b""))(pipe, key)
        for key, value in zip(chunk, pipe.execute(), strict=True):
            name = _flat(key)
            found += leaks(f"Redis key {name.decode(errors='replace')}", name + b"\n" + _flat(value))[:1]
    return found


def assert_no_canary_in_clickhouse(ch: ClickHouse) -> None:
    found = clickhouse_leaks(ch)
    if found:
        raise CanaryLeak(leak_message(found))


def assert_no_canary_in_redis(client: redis.Redis) -> None:
    found = redis_leaks(client)
    if found:
        raise CanaryLeak(leak_message(found))


def _failure_text(longrepr: object) -> str:
    """What a failure says: exception messages, traceback lines, sections. Not pytest's display of
    the test function's arguments: fixture values, such as an environment holding the fake keys, are
    the test's inputs, not something Ladder leaked."""
    chain = getattr(longrepr, "chain", None)
    if chain is None:
        return str(longrepr)
    parts = [content for _, content, _ in getattr(longrepr, "sections", [])]
    for traceback, crash, description in chain:
        parts += [description or "", crash.message if crash else ""]
        for entry in traceback.reprentries:
            parts += getattr(entry, "lines", [])
    return "\n".join(parts)


def _command(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    argv = args[0] if args else kwargs.get("args", "")
    words = [argv] if isinstance(argv, (str, bytes)) else list(argv)
    shown = ["python" if w == sys.executable else os.fsdecode(w) for w in words[:4]]
    return " ".join(shown)


@pytest.fixture(autouse=True)
def canary_reads_process_output(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Output a test takes for itself, which pytest's capture never sees, is checked for the marker
    as it is taken: every `subprocess.run` that captures, every capsys/capfd `readouterr()`."""
    real_run = subprocess.run
    real_readouterr = pytest.CaptureFixture.readouterr

    def run(*args: Any, **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        done = real_run(*args, **kwargs)
        assert_no_canary(f"the output of {_command(args, kwargs)}", done.stdout, done.stderr)
        return done

    def readouterr(self: pytest.CaptureFixture[Any]) -> Any:
        taken = real_readouterr(self)
        assert_no_canary("the output read with capsys/capfd", taken.out, taken.err)
        return taken

    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setattr(pytest.CaptureFixture, "readouterr", readouterr)
    yield


def _flag(report: pytest.TestReport, found: list[str]) -> None:
    """Make the report a failure that says where the marker leaked, keeping any failure it had."""
    text = leak_message(found)
    add_section = getattr(report.longrepr, "addsection", None)  # a traceback's repr takes sections
    if report.failed and add_section is not None:
        add_section(SECTION, text)
    elif report.failed:
        report.longrepr = f"{report.longrepr}\n\n{SECTION}\n{text}"
    else:
        report.outcome = "failed"
        report.longrepr = f"{SECTION}\n{text}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    found: list[str] = []
    for name, content in report.sections:
        if name.endswith(f" {report.when}"):  # each phase's report repeats the earlier phases' sections
            found += leaks(name, content)
    if report.longrepr is not None:
        found += leaks("the failure text", _failure_text(report.longrepr))
    if report.when == "teardown":
        tmp_path = (getattr(item, "funcargs", None) or {}).get("tmp_path")
        if isinstance(tmp_path, Path) and tmp_path.is_dir():
            found += file_leaks(tmp_path)
    if found:
        _flag(report, found)
    return report
