"""The local-directory tier keeps the object-store view: markers, vanishing implied
directories, its reserved name hidden, atomic writes."""

from __future__ import annotations

import os
import subprocess

import pytest

from stormount.backends import list_all, open_backend
from stormount.config import parse_tier_url
from stormount.errors import Changed, NotFound


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


async def test_symbolic_links_in_the_directory_are_not_followed(tmp_path):
    """Links someone put in DIR (found by the store fuzz): they are not listed, and no
    read or write goes through one to what it points at, outside DIR."""
    data, outside = tmp_path / "data", tmp_path / "outside"
    data.mkdir()
    outside.mkdir()
    (outside / "secret").write_bytes(b"not yours")
    (data / "ln").symlink_to(outside)
    (data / "file-ln").symlink_to(outside / "secret")
    (data / "dangling").symlink_to(tmp_path / "nowhere")
    backend = open_backend(parse_tier_url(f"file://{data}"))
    assert await list_all(backend, "", "/") == ([], [])
    assert (await list_all(backend, "", ""))[0] == []
    for key in ("ln/secret", "file-ln", "ln/"):
        with pytest.raises(NotFound, match="symbolic link"):
            await backend.head(key)
    with pytest.raises(NotFound, match="symbolic link"):
        await backend.get_range("ln/secret", 0, 9)
    with pytest.raises(NotFound, match="symbolic link"):
        await backend.put_bytes("ln/new", b"x", {})
    with pytest.raises(NotFound, match="symbolic link"):
        await backend.put_bytes("ln/sub/", b"", {})
    await backend.delete("ln/secret")
    with pytest.raises(Changed):  # a new file's name taken by a link: never through it
        await backend.put_file("dangling", str(outside / "secret"), {}, if_absent=True)
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert (outside / "secret").read_bytes() == b"not yours"
    assert not (tmp_path / "nowhere").exists()
    await backend.put_bytes("file-ln", b"mine", {})  # an overwrite replaces the link
    assert not (data / "file-ln").is_symlink()
    assert (data / "file-ln").read_bytes() == b"mine"
    assert (outside / "secret").read_bytes() == b"not yours"
