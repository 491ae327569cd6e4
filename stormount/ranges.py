"""Byte ranges of a file: which parts of a staged file differ from the stored version
it was based on, so that an upload sends only those and copies the rest in the store."""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterator


class Ranges:
    """A set of half-open byte ranges [start, end), kept merged and sorted."""

    def __init__(self, ranges: list[tuple[int, int]] | None = None) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for start, end in ranges or []:
            self.add(start, end)

    def add(self, start: int, end: int) -> None:
        if end <= start:
            return
        # every range touching [start, end) merges with it
        i = bisect.bisect_left(self._ends, start)
        j = bisect.bisect_right(self._starts, end)
        if i < j:
            start = min(start, self._starts[i])
            end = max(end, self._ends[j - 1])
        self._starts[i:j] = [start]
        self._ends[i:j] = [end]

    def overlaps(self, start: int, end: int) -> bool:
        """Does any range share a byte with [start, end)?"""
        if end <= start:
            return False
        i = bisect.bisect_right(self._ends, start)
        return i < len(self._starts) and self._starts[i] < end

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(zip(self._starts, self._ends, strict=True))

    def __len__(self) -> int:
        return len(self._starts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ranges) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"Ranges({list(self)})"

    def copy(self) -> Ranges:
        out = Ranges()
        out._starts, out._ends = self._starts[:], self._ends[:]
        return out

    def total(self) -> int:
        return sum(end - start for start, end in self)


class Delta:
    """What of a staged file differs from the stored version `etag` (of `size` bytes)
    it was based on: the ranges written, truncated or grown since it was staged. Bytes
    outside them are the stored version's, at the same offsets."""

    def __init__(self, etag: str, size: int, ranges: Ranges | None = None) -> None:
        self.etag = etag
        self.size = size
        self.ranges = ranges if ranges is not None else Ranges()

    def unchanged(self, start: int, end: int) -> bool:
        """Are bytes [start, end) of the new content the stored version's, as they are?"""
        return end <= self.size and not self.ranges.overlaps(start, end)

    def copy(self) -> Delta:
        return Delta(self.etag, self.size, self.ranges.copy())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Delta) and (self.etag, self.size, self.ranges) == (
            other.etag, other.size, other.ranges)

    def dumps(self) -> str:
        return json.dumps({"etag": self.etag, "size": self.size, "ranges": list(self.ranges)})

    @classmethod
    def loads(cls, text: str | None) -> Delta | None:
        if not text:
            return None
        raw = json.loads(text)
        return cls(str(raw["etag"]), int(raw["size"]),
                   Ranges([(int(a), int(b)) for a, b in raw["ranges"]]))
