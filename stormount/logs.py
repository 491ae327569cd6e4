"""Log output: one line per event, leveled, as text or JSON.

Under systemd (stderr is the journal's stream) text lines carry no timestamp, since
journald adds one, and start with the syslog priority (`<4>` for a warning) so that
`journalctl -p warning` works. JSON lines (`log_format = "json"`) carry the time, level,
logger, message and the fields an event was logged with (`event`, `tier`, `key`, ...).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

from pythonjsonlogger.json import JsonFormatter

FORMATS = ("text", "json")
NOISY = ("botocore", "boto3", "urllib3", "azure", "s3transfer")
PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
            logging.CRITICAL: 2}


def under_journald(stream: TextIO) -> bool:
    """Is `stream` connected to the journal (systemd sets JOURNAL_STREAM=DEV:INO)?"""
    journal = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return journal == f"{st.st_dev}:{st.st_ino}"


class JournalFormatter(logging.Formatter):
    """`<priority>LEVEL logger: message`: journald strips the prefix and keeps the level."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{PRIORITY.get(record.levelno, 6)}>"
        # one event, one line: a traceback's lines are folded into it
        return prefix + super().format(record).replace("\n", "\n" + prefix)


def formatter(fmt: str, stream: TextIO | None) -> logging.Formatter:
    """The formatter for `fmt` on `stream` (None: a file of our own)."""
    if fmt == "json":
        return JsonFormatter("%(levelname)s %(name)s %(message)s", timestamp="time",
                             rename_fields={"levelname": "level", "name": "logger"})
    if stream is not None and under_journald(stream):
        return JournalFormatter()
    return logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


def setup(level: str, fmt: str = "text", stream: TextIO | None = None,
          file: str | None = None) -> None:
    """Send the log to `file` (appended; opened anew at each call, which is how SIGHUP
    follows a rotation) or else to `stream` (stderr). Raises OSError if `file` cannot be
    opened; the handlers before stay in place then."""
    handler: logging.Handler
    if file is not None:
        to_file = logging.FileHandler(file, encoding="utf-8")
        to_file.setFormatter(formatter(fmt, None))
        handler = to_file
    else:
        stream = stream or sys.stderr
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatter(fmt, stream))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
