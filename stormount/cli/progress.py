"""The line a command keeps redrawn while it waits (for uploads, for a daemon to exit):
on a terminal only, and only once a wait has lasted half a second."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import TracebackType

from rich.console import Console
from rich.progress import Progress, TaskID, TextColumn

PERIOD = 0.5  # seconds between redraws; also how long a wait goes unshown


class WaitLine:
    """Used as a context manager; on leaving, the last line shown stays on the screen."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.next = time.monotonic() + PERIOD  # a quick unmount prints nothing
        self.bar: Progress | None = None
        self.task: TaskID | None = None

    def __enter__(self) -> WaitLine:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.done()

    def show(self, text: Callable[[], str]) -> None:
        """Redrawn when due; `text` is asked only then."""
        if self.tty and time.monotonic() >= self.next:
            self.line(text())

    def line(self, text: str) -> None:
        """Redrawn now."""
        if not self.tty:
            return
        self.next = time.monotonic() + PERIOD
        if self.bar is None:
            # markup off: the text quotes process names and paths; stdout left alone,
            # rich would otherwise send what the command prints there to stderr
            self.bar = Progress(TextColumn("{task.description}", markup=False),
                                console=Console(stderr=True), auto_refresh=False,
                                redirect_stdout=False, redirect_stderr=False)
            self.task = self.bar.add_task(text, total=None)
            self.bar.start()  # draws it
        else:
            assert self.task is not None
            self.bar.update(self.task, description=text, refresh=True)

    def done(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
