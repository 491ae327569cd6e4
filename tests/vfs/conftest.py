"""Fixtures of the kernel-free filesystem tests: a memory store per test behind a fault
injecting wrapper, and Vfs instances composed as the daemon composes them."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from stormount.backends import open_backend
from stormount.backends.memory import _STORES
from stormount.config import parse_tier_url
from tests.helpers.faults import FaultyBackend
from tests.helpers.vfs import VfsFactory


@pytest.fixture
def store_url():
    name = f"wb-{uuid.uuid4().hex}"
    yield f"memory://{name}"
    _STORES.pop(name, None)


@pytest.fixture
def backend(store_url) -> FaultyBackend:
    return FaultyBackend(open_backend(parse_tier_url(store_url)))


@pytest.fixture
async def factory(tmp_path, nursery) -> AsyncIterator[VfsFactory]:
    made = VfsFactory(tmp_path, nursery)
    yield made
    made.close()
