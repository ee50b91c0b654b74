"""Bad input lines as `ladder enqueue` and `ladder estimate` report them: every one written to the
rejects file, the first few shown on stderr, and no rejects file left behind when there were none."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

import msgspec
from rich.console import Console
from rich.markup import escape

from ladder.messages import Rejection

SHOWN = 20
_json = msgspec.json.Encoder()


class RejectsFile:
    def __init__(self, path: Path, console: Console, show: bool = True) -> None:
        self.path = path
        self.count = 0
        self._console = console
        self._show = show
        self._file = path.open("wb")

    def add(self, rejection: Rejection) -> None:
        self._file.write(_json.encode(rejection) + b"\n")
        self.count += 1
        if self._show and self.count <= SHOWN:
            self._console.print(f"[yellow]line {rejection.line}[/]: {escape(rejection.reason)}", highlight=False)

    def __enter__(self) -> RejectsFile:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._file.close()
        if self.count == 0:
            self.path.unlink(missing_ok=True)
        elif self._show and self.count > SHOWN:
            self._console.print(f"... {self.count - SHOWN:,} more rejected lines")
