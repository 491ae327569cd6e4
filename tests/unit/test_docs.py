"""The documents stay true to the code: every test SEMANTICS.md cites exists, and
CONFIGURATION.md lists every option (those of the sections with their defaults)."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from stormount.config import (
    CacheConfig,
    ChainConfig,
    FuseConfig,
    LifecycleRule,
    MountConfig,
    QuotaConfig,
    TierConfig,
    WritebackConfig,
    converters,
)
from stormount.control.commands import COMMANDS

ROOT = Path(__file__).resolve().parents[2]


def test_every_cited_test_exists():
    text = (ROOT / "docs/SEMANTICS.md").read_text()
    cited = set(re.findall(r"(tests/[\w/]+\.py)::(\w+)", text))
    assert len(cited) > 40
    missing = [f"{path}::{name}" for path, name in sorted(cited)
               if not (ROOT / path).exists()
               or not re.search(rf"def {name}\b", (ROOT / path).read_text())]
    assert missing == []


def test_every_option_is_documented():
    text = (ROOT / "docs/CONFIGURATION.md").read_text()
    names = {f.name for cls in (TierConfig, CacheConfig, FuseConfig, WritebackConfig,
                                ChainConfig, MountConfig, QuotaConfig, LifecycleRule)
             for f in fields(cls)}
    names -= {"url", "scheme", "container", "prefix"}  # parts of the URL itself
    # the sections themselves, and what the command line gives
    names -= {"source", "mountpoint", "tiers", "cache", "fuse", "writeback", "chain"}
    assert sorted(n for n in names if f"`{n}`" not in text) == []


SECTIONS = {"cache": CacheConfig, "fuse": FuseConfig, "writeback": WritebackConfig,
            "chain": ChainConfig}
# doc defaults that are no value a parser reads: what the doc must say instead, and why
NOT_A_VALUE = {("cache", "dir"): ("derived, see below",
                                  "filled from SOURCE and the mountpoint; the field's "
                                  "default \"\" stands for that")}


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_every_section_option_is_in_its_table_with_its_default(section):
    """Each field of the section has a row `` `name` | default | ... `` in the table under
    `## [section]`, and its default, read by the option's own parser, is the field's:
    "`VALUE`" (seconds may follow as " s"), or "not set" for None."""
    text = (ROOT / "docs/CONFIGURATION.md").read_text()
    # the first `| Key | Default |` table after the heading, to its first blank line
    part = re.search(rf"^## `\[{section}\]`\n(?:(?!^## ).)*?^(\| Key \| Default \|.*?)\n\n", text,
                     re.S | re.M)
    assert part is not None, f"no Key | Default table under ## `[{section}]`"
    rows = dict(re.findall(r"^\| `(\w+)` \| ([^|]*) \|", part.group(1), re.M))
    cls = SECTIONS[section]
    assert sorted({f.name for f in fields(cls)} ^ set(rows)) == []  # missing, or stale
    parse = converters(cls)
    for f in fields(cls):
        shown = rows[f.name].strip()
        if (section, f.name) in NOT_A_VALUE:
            expected, why = NOT_A_VALUE[section, f.name]
            assert shown == expected, why
        elif shown == "not set":
            assert f.default is None, f"{section}.{f.name}"
        else:
            value = re.fullmatch(r"`([^`]*)`(?: s)?", shown)
            assert value is not None, f"{section}.{f.name}: default shown as {shown!r}"
            assert parse[f.name](value.group(1), f.name) == f.default, f"{section}.{f.name}"


def test_every_control_command_is_documented():
    text = (ROOT / "docs/CONTROL.md").read_text()
    headings = {name for line in re.findall(r"^### .*$", text, re.M)
                for name in re.findall(r"`(\w+)", line)}
    assert sorted(set(COMMANDS) - headings) == []


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file."""
    anchors = set()
    for heading in re.findall(r"^#+ (.+)$", path.read_text(), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_every_link_between_the_documents_resolves():
    broken = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if "://" in target:
                continue
            file, _, anchor = target.partition("#")
            path = (doc.parent / file).resolve() if file else doc
            missing_anchor = bool(anchor) and path.suffix == ".md" and (
                not path.exists() or anchor not in _anchors(path))
            if not path.exists() or missing_anchor:
                broken.append(f"{doc.name}: {target}")
    assert broken == []
