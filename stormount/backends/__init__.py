"""Storage backends, one module per store, all speaking backends.base.Backend."""

from __future__ import annotations

import importlib

from stormount.backends.base import Backend, ListPage, ObjectInfo, ObjectStore, list_all
from stormount.config import TierConfig
from stormount.errors import ConfigError

# scheme -> "module:class"; imported on use so a mount of one store loads one SDK
SCHEMES = {
    "s3": "stormount.backends.s3:S3Backend",
    "az": "stormount.backends.azure:AzureBackend",
    "file": "stormount.backends.local:LocalBackend",
    "memory": "stormount.backends.memory:MemoryBackend",
}
# scheme -> (top-level modules of its SDK, the extra that installs them)
SDKS = {
    "s3": (("boto3", "botocore", "s3transfer"), "s3"),
    "az": (("azure",), "azure"),
}


def open_backend(tier: TierConfig) -> ObjectStore:
    module_name, _, cls_name = SCHEMES[tier.scheme].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        modules, extra = SDKS.get(tier.scheme, ((), ""))
        if (e.name or "").split(".")[0] not in modules:
            raise
        raise ConfigError(f"{tier.scheme}:// needs {e.name}, which is not installed: "
                          f"pip install 'stormount[{extra}]'") from None
    cls = getattr(module, cls_name)
    backend: ObjectStore = cls(tier)
    return backend


__all__ = ["SCHEMES", "SDKS", "Backend", "ListPage", "ObjectInfo", "ObjectStore", "list_all",
           "open_backend"]
