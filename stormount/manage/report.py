"""What the management commands print: rich tables and progress on a terminal, JSON
with --json. Progress goes to stderr, and only to a terminal."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from stormount.control.render import console, duration, size


def usage_tables(report: dict[str, Any], by: str) -> list[Table]:
    where = report["path"] or "/"
    if by == "tier" and "tiers" in report:
        table = Table(title=f"Usage of {where} by tier", title_justify="left")
        for col, justify in (("tier", "left"), ("folder", "left"), ("files", "right"),
                             ("bytes", "right")):
            table.add_column(col, justify=justify)  # type: ignore[arg-type]
        for tier in report["tiers"]:
            name = f"{tier['index']} {tier['url']}"
            for row in tier["folders"]:
                table.add_row(name, row["path"], f"{row['files']:,}", size(row["bytes"]))
            table.add_row(name, "(all)", f"{tier['files']:,}", size(tier["bytes"]),
                          style="bold")
        return [table]
    table = Table(title=f"Usage of {where}", title_justify="left")
    for col, justify in (("folder", "left"), ("files", "right"), ("bytes", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for row in report["folders"]:
        table.add_row(row["path"], f"{row['files']:,}", size(row["bytes"]))
    table.add_row("(all)", f"{report['files']:,}", size(report["bytes"]), style="bold")
    return [table]


def print_tables(tables: list[Table]) -> None:
    out = console()
    for table in tables:
        out.print(table)


def _stderr() -> Console | None:
    return Console(stderr=True) if sys.stderr.isatty() else None


@contextmanager
def scan_progress() -> Iterator[Any]:
    """A callable (what, files, bytes) that shows how a scan goes, on a terminal."""
    err = _stderr()
    if err is None:
        yield lambda what, files, nbytes: None
        return
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=err,
                  transient=True) as bar:
        task = bar.add_task("scanning")

        def show(what: str, files: int, nbytes: int) -> None:
            bar.update(task, description=f"scanning {what}: {files:,} files, {size(nbytes)}")
        yield show


@contextmanager
def transfer_progress(verb: str) -> Iterator[Any]:
    """(done_bytes, total_bytes, done_files, total_files) -> None, drawn as a bar with
    bytes, files and rate on a terminal."""
    err = _stderr()
    if err is None:
        yield lambda done, total, files, nfiles: None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(), console=err,
                  transient=True) as bar:
        task = bar.add_task(verb, total=None)

        def show(done: int, total: int, files: int, nfiles: int) -> None:
            bar.update(task, completed=done, total=total,
                       description=f"{verb} {files:,}/{nfiles:,} files")
        yield show


def transfer_line(result: dict[str, Any], verb: str) -> str:
    """One line of what a pull or push did."""
    rate = size(result["rate"]) + "/s"
    return (f"{result['files']:,} file(s), {size(result['bytes'])}: {result[verb]:,} {verb}, "
            f"{result['skipped']:,} already there, {result['resumed']:,} resumed, "
            f"{len(result['failed']):,} failed; {size(result['transferred_bytes'])} in "
            f"{result['seconds']:.1f} s ({rate})")


def gc_table(rows: list[dict[str, Any]], applied: bool) -> Table:
    table = Table(title="Leftovers" + ("" if applied else " (dry run: nothing changed)"),
                  title_justify="left")
    for col in ("kind", "where", "what", "size", "age", "action"):
        table.add_column(col, justify="right" if col in ("size", "age") else "left")
    for row in rows:
        action = row["action"]
        if applied and row["done"] and row.get("to"):
            action = f"dropped, data moved to {row['to']}"
        elif applied and row["done"] and row["kind"] == "reserved-row":
            action = "dropped (no data)"
        elif applied and row["done"]:
            action = {"remove": "removed", "recover": "moved to recovered/",
                      "drop": "dropped"}.get(action, action)
        elif row["error"]:
            action = f"{action} failed: {row['error']}"
        table.add_row(row["kind"], row["where"], row["what"],
                      "-" if row["size"] is None else size(row["size"]),
                      duration(row["age"]), action)
    return table


def gc_line(rows: list[dict[str, Any]], applied: bool) -> str:
    act = [r for r in rows if r["action"] != "keep"]
    held = sum(r["size"] or 0 for r in act)
    if applied:
        done = sum(1 for r in act if r["done"])
        return f"{done} of {len(act)} leftover(s) cleaned up ({size(held)})"
    return (f"{len(act)} leftover(s) ({size(held)}) would be cleaned up; nothing was "
            "changed: run with --apply to do it")


def lifecycle_table(rows: list[dict[str, Any]], applied: bool) -> Table:
    table = Table(title="Lifecycle" + ("" if applied else " (dry run: nothing changed)"),
                  title_justify="left")
    for col in ("rule", "action", "file", "size", "age", "result"):
        table.add_column(col, justify="right" if col in ("size", "age", "rule") else "left")
    for row in rows:
        action = row["action"] + (f" to {row['to']}" if row["to"] else "")
        if row["skipped"]:
            result = f"skipped: {row['skipped']}"
        elif row["error"]:
            result = f"failed: {row['error']}"
        elif row["done"]:
            result = "done"
        else:
            result = "reported" if row["action"] == "warn" else "would be done"
        table.add_row(str(row["rule"]), action, row["key"], size(row["size"]),
                      duration(row["age"]), result)
    return table


def lifecycle_line(rows: list[dict[str, Any]], applied: bool) -> str:
    count = {a: sum(1 for r in rows if r["action"] == a and not r["skipped"])
             for a in ("delete", "move", "warn")}
    skipped = sum(1 for r in rows if r["skipped"])
    text = (f"{len(rows)} file(s) matched: {count['delete']} to delete, {count['move']} to "
            f"move, {count['warn']} reported, {skipped} skipped (not uploaded yet or open)")
    if applied:
        done = sum(1 for r in rows if r["done"])
        failed = sum(1 for r in rows if r["error"])
        return f"{text}; {done} done, {failed} failed"
    return f"{text}; nothing was changed: run with --apply to do it"
