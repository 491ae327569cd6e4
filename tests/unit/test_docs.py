"""The documents stay true to the code: every test SEMANTICS.md cites exists, and
CONFIGURATION.md lists every option."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from stormount.config import (
    CacheConfig,
    ChainConfig,
    FuseConfig,
    LifecycleRule,
    MountConfig,
    QuotaConfig,
    TierConfig,
    WritebackConfig,
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
