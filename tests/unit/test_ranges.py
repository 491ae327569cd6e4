"""Byte ranges merge as they are added, and say which parts of a file are unchanged."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from stormount.ranges import Delta, Ranges

spans = st.lists(st.tuples(st.integers(0, 200), st.integers(0, 60)).map(
    lambda t: (t[0], t[0] + t[1])), max_size=20)


@given(spans, st.integers(0, 260), st.integers(0, 60))
def test_ranges_are_the_union_of_what_was_added(added, start, length):
    ranges = Ranges()
    bytes_in: set[int] = set()
    for a, b in added:
        ranges.add(a, b)
        bytes_in.update(range(a, b))
    assert {i for a, b in ranges for i in range(a, b)} == bytes_in
    assert all(b1 < a2 for (_, b1), (a2, _) in zip(list(ranges), list(ranges)[1:], strict=False))
    assert ranges.overlaps(start, start + length) == any(
        i in bytes_in for i in range(start, start + length))


def test_a_delta_survives_the_journal():
    delta = Delta("etag", 100, Ranges([(10, 20), (15, 30), (50, 51)]))
    assert list(delta.ranges) == [(10, 30), (50, 51)]
    assert Delta.loads(delta.dumps()) == delta
    assert Delta.loads(None) is None
    assert delta.unchanged(0, 10) and delta.unchanged(30, 50) and delta.unchanged(51, 100)
    assert not delta.unchanged(0, 11) and not delta.unchanged(90, 101)
