"""Uploads read a local file as exactly the length it had when the upload began: a file
that shrinks meanwhile fails the upload at once instead of leaving the request waiting
for bytes that never come (seen as a 60 s hang on S3), and one that grows is cut."""

from __future__ import annotations

import io
import os

import pytest

from stormount.backends.base import ExactFile
from stormount.errors import Transient


def test_a_file_that_shrank_fails_at_once():
    body = ExactFile(io.BytesIO(b"0123456789"), 20, "put f")
    assert body.read(8) == b"01234567"
    assert body.read(8) == b"89"
    with pytest.raises(Transient, match="shrank"):
        body.read(8)


def test_a_file_that_grew_is_cut_and_seeks_stay_inside():
    body = ExactFile(io.BytesIO(b"0123456789abcdef"), 10, "put f")
    assert len(body) == 10
    assert body.read() == b"0123456789"
    assert body.read() == b""
    assert body.seek(-4, os.SEEK_END) == 6 and body.read(100) == b"6789"
    assert body.seek(3) == 3 and body.tell() == 3 and body.read(2) == b"34"
