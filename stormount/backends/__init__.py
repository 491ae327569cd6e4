"""Storage backends, one module per store, all speaking backends.base.Backend."""

from __future__ import annotations

import importlib

from stormount.backends.base import Backend, ListPage, ObjectInfo, ObjectStore, list_all
from stormount.config import TierConfig

# scheme -> "module:class"; imported on use so a mount of one store loads one SDK
SCHEMES = {
    "s3": "stormount.backends.s3:S3Backend",
    "az": "stormount.backends.azure:AzureBackend",
    "file": "stormount.backends.local:LocalBackend",
    "memory": "stormount.backends.memory:MemoryBackend",
}


def open_backend(tier: TierConfig) -> ObjectStore:
    module_name, _, cls_name = SCHEMES[tier.scheme].partition(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    backend: ObjectStore = cls(tier)
    return backend


__all__ = ["SCHEMES", "Backend", "ListPage", "ObjectInfo", "ObjectStore", "list_all",
           "open_backend"]
