"""The record of one file waiting for its upload: its states, and how `ctl uploads`
shows it."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import trio

from stormount.backends.base import Progress
from stormount.backends.resume import Recorded, Resume
from stormount.ranges import Delta

QUEUED, UPLOADING, FAILING = "queued", "uploading", "failing"
OPEN = "open"  # how a held upload is shown: written, waiting for its writer's last close
FINAL, CLOSED, WRITING = 0, 1, 2  # an upload's `held`
MARKER = ""  # the staging of a directory marker: it has no content


@dataclass(eq=False)
class Upload:
    """One file waiting for its upload (a row of the journal)."""

    path: str
    staging: str
    base: str | None
    metadata: dict[str, str]
    revision: int = 0  # bumped by every hand-over (content or metadata)
    tries: int = 0  # failed attempts ever (attempts restarts with each hand-over)
    attempts: int = 0
    last_error: str | None = None
    state: str = QUEUED
    queued_at: float = field(default_factory=time.time)
    held: int = FINAL  # else a writer may still change it: not uploaded until released
    due: float = 0.0  # trio time of the next attempt
    finished: trio.Event = field(default_factory=trio.Event)  # the attempt in flight ended
    uploaded: trio.Event = field(default_factory=trio.Event)  # this content is stored
    progress: Progress | None = None  # of the attempt in flight, or the last one
    multipart: Recorded | None = None  # the resumable upload an attempt began
    resume: Resume | None = None  # of the attempt in flight, or the last one
    delta: Delta | None = None  # what differs from `base`; None: all of it
    wait: float = 0.0  # the debounce its last hand-over got (see Writeback._settle_after)
    since: float | None = None  # trio time of its first final hand-over not uploaded yet

    def describe(self) -> dict[str, object]:
        state = OPEN if self.held and self.state != UPLOADING else self.state
        size = staged_size(self.staging)
        moving = self.progress if self.state == UPLOADING else None
        return {"path": self.path, "state": state, "attempts": self.attempts,
                "last_error": self.last_error, "queued_at": self.queued_at,
                "size": size,
                # the attempt in flight (1 for the first), and how far it has got
                "attempt": self.attempts + 1 if moving is not None else None,
                "bytes_sent": None if moving is None else moving.sent,
                "bytes_total": None if moving is None else (
                    moving.total if moving.total is not None else size),
                "rate": None if moving is None else round(moving.rate.per_second(), 1),
                "eta": None if moving is None or (eta := moving.eta()) is None
                else round(eta, 1),
                "finishing": moving is not None and moving.finishing}


def staged_size(path: str) -> int | None:
    """The size of a row's staging file: 0 for a directory marker, None if it is gone."""
    if path == MARKER:
        return 0
    try:
        return os.stat(path).st_size
    except OSError:
        return None
