"""Log lines: text with a timestamp, text for journald (priority prefix, no timestamp),
or JSON with the event's fields."""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile

import pytest

from stormount import logs


def one_line(fmt: str, stream, level=logging.WARNING, **extra) -> str:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.formatter(fmt, stream))
    log = logging.getLogger(f"stormount.test.{fmt}")
    log.propagate = False
    log.addHandler(handler)
    try:
        log.log(level, "tier %d (%s) is down: %s", 0, "s3://b", "refused", extra=extra)
    finally:
        log.removeHandler(handler)
    return stream.getvalue() if isinstance(stream, io.StringIO) else ""


def test_json_lines_carry_the_event_fields():
    line = one_line("json", io.StringIO(), event="tier_down", tier=0, error="refused")
    record = json.loads(line)
    assert record["message"] == "tier 0 (s3://b) is down: refused"
    assert record["level"] == "WARNING" and record["logger"] == "stormount.test.json"
    assert (record["event"], record["tier"], record["error"]) == ("tier_down", 0, "refused")
    assert "time" in record
    assert line.count("\n") == 1


def test_text_lines_have_a_timestamp_unless_journald_adds_one(monkeypatch):
    plain = one_line("text", io.StringIO())
    assert plain.split(" ")[0].count("-") == 2  # a date first
    assert "WARNING stormount.test.text: tier 0 (s3://b) is down: refused" in plain
    with tempfile.TemporaryFile("w+") as f:
        st = os.fstat(f.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert logs.under_journald(f)
        formatter = logs.formatter("text", f)
        record = logging.LogRecord("stormount.x", logging.WARNING, __file__, 1,
                                   "first\nsecond", None, None)
        assert formatter.format(record) == ("<4>WARNING stormount.x: first\n"
                                            "<4>second")
        monkeypatch.setenv("JOURNAL_STREAM", "1:2")
        assert not logs.under_journald(f)


@pytest.mark.parametrize("fmt", logs.FORMATS)
def test_setup_replaces_the_handlers(fmt):
    root = logging.getLogger()
    before = list(root.handlers), root.level
    try:
        stream = io.StringIO()
        logs.setup("debug", fmt, stream)
        assert len(root.handlers) == 1 and root.level == logging.DEBUG
        assert logging.getLogger("botocore").level == logging.WARNING
        logging.getLogger("stormount.x").info("hello")
        assert "hello" in stream.getvalue()
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in before[0]:
            root.addHandler(handler)
        root.setLevel(before[1])
