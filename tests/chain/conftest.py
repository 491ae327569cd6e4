from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.chain import Tiers


@pytest.fixture
def make_tiers(tmp_path) -> Iterator:
    made: list[Tiers] = []

    def _make(n: int = 2, mirrors: tuple[int, ...] = (), **options) -> Tiers:
        tiers = Tiers(tmp_path / f"chain{len(made)}", n, mirrors, **options)
        tiers.root.mkdir()
        made.append(tiers)
        return tiers

    yield _make
    for tiers in made:
        tiers.close()
