"""The budget of the fuzz tests (tests/**/test_fuzz_*.py): a fixed number of examples
and a fixed seed in `make test`; STORMOUNT_FUZZ_SCALE=N runs N times as many (`make
fuzz` does, with a large N)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

SCALE = float(os.environ.get("STORMOUNT_FUZZ_SCALE", "1"))


def budget(examples: int) -> settings:
    return settings(max_examples=max(1, int(examples * SCALE)), derandomize=True,
                    deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.data_too_large])


# the shapes of key another client may give a name (`shaped`)
KEY_SHAPES = ["plain"] * 6 + ["leading", "marker", "double"]


def shaped(key: str, shape: str) -> str:
    """`key` (names joined by "/") given one of KEY_SHAPES; other shapes leave it."""
    if shape == "leading":
        return "/" + key
    if shape == "marker":
        return key + "/"
    if shape == "double":
        return key.replace("/", "//", 1) if "/" in key else key + "//x"
    return key
