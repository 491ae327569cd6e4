"""fusermount3's answers, as an unprivileged unmount reads them (root uses umount2 and
its errno; the tests in tests/fuse run as root)."""

from __future__ import annotations

import pytest

from stormount import unmounting


def test_fusermount_messages():
    unmounting._judge("/m", 0, "")  # unmounted
    with pytest.raises(unmounting.Busy):
        unmounting._judge("/m", 1, "fusermount3: failed to unmount /m: Device or resource "
                                   "busy\n")
    for message in ("fusermount3: entry for /m not found in /etc/mtab\n",
                    "fusermount3: failed to unmount /m: Invalid argument\n"):
        with pytest.raises(unmounting.NotMounted):
            unmounting._judge("/m", 1, message)
    with pytest.raises(unmounting.UnmountError, match="Operation not permitted"):
        unmounting._judge("/m", 1, "fusermount3: failed to unmount /m: Operation not "
                                   "permitted\n")
    assert unmounting._command("/m", lazy=True) == ["fusermount3", "-u", "-z", "--", "/m"]
    assert unmounting._command("/m", lazy=False) == ["fusermount3", "-u", "--", "/m"]
