"""The local-directory tier keeps the object-store view: markers, vanishing implied
directories, its reserved name hidden, atomic writes."""

from __future__ import annotations

import os

from stormount.backends import list_all, open_backend
from stormount.config import parse_tier_url


async def test_local_directory_layout(tmp_path):
    backend = open_backend(parse_tier_url(f"file://{tmp_path}"))
    await backend.put_bytes("a/b/c.txt", b"x", {"mode": str(0o100640)})
    assert (tmp_path / "a/b/c.txt").read_bytes() == b"x"
    assert oct(os.stat(tmp_path / "a/b/c.txt").st_mode & 0o777) == oct(0o640)
    objects, prefixes = await list_all(backend, "", "/")
    assert prefixes == ["a/"] and objects == []  # .stormount (temp files) is never listed
    assert (tmp_path / ".stormount").is_dir()
    await backend.put_bytes("m/", b"", {})  # a marker: survives without children
    await backend.delete("a/b/c.txt")  # implied directories vanish with their last key
    assert not (tmp_path / "a").exists()
    objects, prefixes = await list_all(backend, "", "/")
    assert prefixes == ["m/"]
    assert [o.key for o in (await list_all(backend, "m/", "/"))[0]] == ["m/"]
