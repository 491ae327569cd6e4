"""The line a command keeps redrawn while it waits (for uploads, for a daemon to exit)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable


class WaitLine:
    """What the command waits for, on a terminal, redrawn in place about twice a second."""

    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self.shown = False
        self.next = time.monotonic() + 0.5  # a quick unmount prints nothing

    def show(self, text: Callable[[], str]) -> None:
        """Redrawn when due; `text` is asked only then."""
        if self.tty and time.monotonic() >= self.next:
            self.line(text())

    def line(self, text: str) -> None:
        if not self.tty:
            return
        self.next = time.monotonic() + 0.5
        sys.stderr.write(f"\r{text}   ")
        sys.stderr.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\n")
            self.shown = False
