"""The local-directory tier keeps the object-store view: markers, vanishing implied
directories, its reserved name hidden, atomic writes."""

from __future__ import annotations

import os
import subprocess

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


async def test_a_tree_1100_folders_deep_is_listed_flat_and_written(tmp_path):
    """Found by the store fuzz: a flat listing of a local tier walked its folders by
    recursion, so `stormount usage file://DIR` of a tree 1,100 folders deep printed a
    RecursionError traceback (and a mount's flat listing of it failed); a write there
    made its folders by recursion too."""
    deep = tmp_path / "data"
    deep.mkdir()
    for _ in range(1100):
        deep = deep / "a"
        deep.mkdir()
    (deep / "f").write_bytes(b"x")
    backend = open_backend(parse_tier_url(f"file://{tmp_path / 'data'}"))
    key = "a/" * 1100 + "f"
    try:
        await backend.put_bytes("m/" * 1100, b"", {})  # a marker that deep, and its folders
        await backend.put_bytes("n/" * 1099 + "g", b"y", {})
        objects, prefixes = await list_all(backend, "", "")
        assert sorted(o.key for o in objects) == [key, "m/" * 1100, "n/" * 1099 + "g"]
        assert prefixes == []
    finally:
        # pytest's own cleanup (shutil.rmtree) recurses and would fail on this tree
        subprocess.run(["rm", "-rf", "--", str(tmp_path / "data")], check=True)
