"""Write-back journals as an earlier version left them, for tests of what a start or
`gc --cache-dir` does with them."""

from __future__ import annotations

from pathlib import Path

from stormount.writeback import MARKER, Journal, Upload


def journal_with_reserved_rows(cache: Path, body: bytes) -> Path:
    """A cache directory whose journal queues `.stormount/` and `.stormount/inner`
    (staged with `body`), as versions before issue 19 took them in; the staging file."""
    (cache / "staging").mkdir(parents=True)
    staged = cache / "staging" / "old-inner"
    staged.write_bytes(body)
    journal = Journal(str(cache / "journal.sqlite3"))
    journal.put(Upload(path=".stormount/", staging=MARKER, base=None, metadata={}))
    journal.put(Upload(path=".stormount/inner", staging=str(staged), base=None, metadata={}))
    journal.close()
    return staged
