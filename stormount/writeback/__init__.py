"""Write-back: the durable journal of files waiting for their upload, and the uploader.

`close` returns once the file's row is committed to the journal (sqlite in WAL mode,
beside the staging files): a crash of the daemon, even `kill -9`, loses nothing that was
acknowledged, because the kernel keeps both the staging file's pages and the journal's
log. `fsync` also forces both to the disk, so they survive a power cut.

A file is uploaded once its last writable descriptor is released, or when it is synced:
never while a writer may still be changing it. Until then its row is held. The kernel
says `close()` (a FUSE flush) before it says which close was the last (the release),
and `dd` closes a dup of its descriptor before it writes: a close journals the file
`CLOSED` (uploaded at the next start if the daemon dies before the release), and the
first write after it makes it `WRITING`. A `WRITING` row found at start is a file that
was still being written when the daemon died: its content goes to `recovered/`, never to
the store under its name half-written.

The uploader sends each file once it has been left alone for `debounce` seconds, at most
`parallel` at a time, conditional on the version the content was based on. Transient
failures are retried with exponential backoff and jitter (1, 2, 4, 8 s, capped at
`retry_max_delay`); after `retries` attempts, and after any other failure, the upload
stays queued as `failing` with its last error and is retried every
`failing_retry_delay` seconds: never dropped, never retried in a tight loop.

An object that changed in the store since the version a file was based on is not
overwritten: the local content is uploaded beside it as
`NAME.conflict-<host>-<UTC timestamp>`. A conditional upload that fails because our own
earlier attempt landed (a crash between the upload and the journal update) is recognised
by the object's size and metadata, which carry the file's mtime in nanoseconds.

The package: upload.py (the record of one upload), journal.py (the journal, its readers
and recovery), queue.py (`Writeback`, the queue) and uploader.py (its uploader half).
"""

from __future__ import annotations

from stormount.writeback.journal import (
    Journal,
    read_multiparts,
    read_pending,
    read_staged,
    recover_reserved,
    recovered_dir,
    reserved_rows,
)
from stormount.writeback.queue import Writeback
from stormount.writeback.upload import (
    CLOSED,
    FAILING,
    FINAL,
    MARKER,
    OPEN,
    QUEUED,
    UPLOADING,
    WRITING,
    Upload,
    staged_size,
)
from stormount.writeback.uploader import HOT_MAX, HOT_PATHS, LARGE

__all__ = ["CLOSED", "FAILING", "FINAL", "HOT_MAX", "HOT_PATHS", "LARGE", "MARKER", "OPEN",
           "QUEUED", "UPLOADING", "WRITING", "Journal", "Upload", "Writeback",
           "read_multiparts", "read_pending", "read_staged", "recover_reserved", "recovered_dir",
           "reserved_rows", "staged_size"]
