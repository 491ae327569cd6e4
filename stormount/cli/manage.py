"""The storage commands (usage, pull, push, gc, lifecycle): on the store itself, no
mount needed."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import click
import trio

from stormount import registry
from stormount.cli.shared import F, fail
from stormount.config import MountConfig, build_config, parse_tier_url
from stormount.control import client
from stormount.errors import StormountError
from stormount.manage import gc as orphans
from stormount.manage import lifecycle as rules
from stormount.manage import report, transfer
from stormount.manage import usage as usage_scan
from stormount.manage.store import folder_prefix, open_store
from stormount.writeback import read_pending


def _store_options(fn: F) -> F:
    """The ways to name the store's tiers beyond SOURCE, as `mount` has them."""
    fn = click.option("-o", "options", multiple=True, metavar="OPT[,OPT...]",
                      help="Tier options for the primary tier (region=, endpoint=, ...).")(fn)
    fn = click.option("--config", "config_file", metavar="FILE",
                      help="A TOML configuration to read beside a URL SOURCE.")(fn)
    fn = click.option("--tier", "tiers", multiple=True, metavar="URL",
                      help="A lower-priority tier (repeatable).")(fn)
    return fn


def split_source(arg: str) -> tuple[str, str]:
    """SOURCE[/PATH] -> (SOURCE, PATH): for a URL the path is part of its prefix; a
    config file may be followed by /PATH inside the tree it names."""
    if "://" not in arg:
        head, sep, rest = arg.partition(".toml/")
        if sep:
            return head + ".toml", rest.strip("/")
    return arg, ""


def _store_config(source: str, tiers: tuple[str, ...], config_file: str | None,
                  options: tuple[str, ...]) -> MountConfig:
    # a configuration of the store alone: there is no mountpoint for these commands
    return build_config(source, "/", tier_urls=tiers, config_file=config_file,
                        options=options)


def _print_json(value: object) -> None:
    click.echo(json.dumps(value, indent=2))


@click.command()
@click.argument("target", metavar="SOURCE|MOUNTPOINT")
@click.option("--depth", type=click.IntRange(0, 100), default=1, show_default=True,
              help="Folder levels to total separately.")
@click.option("--by", type=click.Choice(["folder", "tier"]), default="folder",
              show_default=True, help="Group the table by folder, or by tier and folder.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_store_options
def usage(target: str, depth: int, by: str, as_json: bool, tiers: tuple[str, ...],
          config_file: str | None, options: tuple[str, ...]) -> None:
    """Files and bytes per folder and per tier, of a store or a running mount."""
    if "://" not in target and os.path.isdir(target) and registry.filesystem_of(
            os.path.abspath(target))[1] == "fuse.stormount":
        if by == "tier":
            raise StormountError(
                "--by tier needs the store (a URL or config file) as SOURCE: a mountpoint "
                "shows one merged tree")
        with report.scan_progress() as progress:
            result = usage_scan.of_mount(os.path.abspath(target), depth, progress)
    else:
        source, path = split_source(target)
        cfg = _store_config(source, tiers, config_file, options)
        prefix = folder_prefix(path)

        async def scan() -> dict[str, Any]:
            async with open_store(cfg) as store:
                return await usage_scan.of_store(store, prefix, depth, progress)

        with report.scan_progress() as progress:
            result = trio.run(scan)
    if as_json:
        _print_json(result)
    else:
        report.print_tables(report.usage_tables(result, by))


def _short(path: str, most: int = 160) -> str:
    """A path for a one-line message: a very long one (a key thousands of folders deep)
    as its start and end."""
    return path if len(path) <= most else f"{path[:most // 2]}...{path[-most // 2:]}"


def _transfer(verb: str, run_it: Callable[[Any, Any], Any], cfg: MountConfig,
              as_json: bool) -> None:
    async def go() -> transfer.Summary:
        async with open_store(cfg) as store:
            return await run_it(store, progress)

    with report.transfer_progress(verb) as progress:
        summary = trio.run(go)
    result = summary.as_dict()
    if as_json:
        _print_json(result)
    else:
        click.echo(report.transfer_line(result, summary.verb))
    if summary.failed:
        shown = "; ".join(f"{_short(f['path'])}: {f['error']}" for f in summary.failed[:10])
        more = f" (and {len(summary.failed) - 10} more)" if len(summary.failed) > 10 else ""
        again = sum(1 for f in summary.failed if f.get("retry", True))
        hint = ("run the command again to retry them" if again == len(summary.failed) else
                f"running the command again may bring {again} of them; the others can "
                "never be files here" if again else "they can never be files here")
        fail(f"{len(summary.failed)} of {summary.files} file(s) failed: {shown}{more}; "
             f"{hint}")


@click.command()
@click.argument("source", metavar="SOURCE[/PATH]")
@click.argument("local_dir")
@click.option("--parallel", type=click.IntRange(1, 256), default=8, show_default=True,
              help="Files fetched at once.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@_store_options
def pull(source: str, local_dir: str, parallel: int, as_json: bool, tiers: tuple[str, ...],
         config_file: str | None, options: tuple[str, ...]) -> None:
    """Download a folder of the store into LOCAL_DIR; run again, it resumes."""
    source, path = split_source(source)
    cfg = _store_config(source, tiers, config_file, options)
    prefix = folder_prefix(path)
    _transfer("pulling", lambda store, progress: transfer.pull(
        store, prefix, local_dir, parallel=parallel, progress=progress), cfg, as_json)


@click.command()
@click.argument("local_dir")
@click.argument("source", metavar="SOURCE[/PATH]")
@click.option("--parallel", type=click.IntRange(1, 256), default=8, show_default=True,
              help="Files sent at once.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@_store_options
def push(local_dir: str, source: str, parallel: int, as_json: bool, tiers: tuple[str, ...],
         config_file: str | None, options: tuple[str, ...]) -> None:
    """Upload LOCAL_DIR into a folder of the store; run again, it sends what is missing."""
    source, path = split_source(source)
    cfg = _store_config(source, tiers, config_file, options)
    prefix = folder_prefix(path)
    _transfer("pushing", lambda store, progress: transfer.push(
        store, local_dir, prefix, parallel=parallel, progress=progress), cfg, as_json)


@click.command()
@click.argument("source", metavar="SOURCE[/PATH]")
@click.option("--dry-run", "apply", flag_value=False, default=False,
              help="Only list what would be removed (the default).")
@click.option("--apply", "apply", flag_value=True, help="Remove what is listed.")
@click.option("--older-than", "older_than", default="1d", show_default=True, metavar="AGE",
              help="Leave alone what is younger (30m, 12h, 7d, 2w, or seconds).")
@click.option("--cache-dir", metavar="DIR",
              help="Also check a mount's cache directory (with that mount stopped).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_store_options
def gc(source: str, apply: bool, older_than: str, cache_dir: str | None, as_json: bool,
       tiers: tuple[str, ...], config_file: str | None, options: tuple[str, ...]) -> None:
    """Find what crashes and failed uploads left behind; --apply removes it."""
    age = orphans.parse_age(older_than)
    source, path = split_source(source)
    cfg = _store_config(source, tiers, config_file, options)
    prefix = folder_prefix(path)

    # uploads a queue will continue are not orphans: the running mounts' journals
    # (read-only, beside them) and the cache directory given say which
    journals = [r.cache_dir for r in registry.all_records()] + ([cache_dir] if cache_dir else [])
    resumable = orphans.resumable_uploads(journals)

    async def run_gc() -> list[orphans.Finding]:
        async with open_store(cfg) as store:
            sweep = orphans.Gc(store, prefix, age, resumable)
            await sweep.scan()
            if apply:
                await sweep.apply()
            return sweep.findings

    with report.scan_progress() as progress:
        progress("the store", 0, 0)
        findings = trio.run(run_gc)
    if cache_dir:
        findings += orphans.scan_cache(cache_dir, age, apply)
    _review([f.as_dict() for f in findings], "findings", "what", apply, as_json,
            report.gc_table, report.gc_line, {"older_than": age})


def _review(rows: list[dict[str, Any]], name: str, label: str, applied: bool,
            as_json: bool, table: Callable[[list[dict[str, Any]], bool], Any],
            line: Callable[[list[dict[str, Any]], bool], str],
            extra: dict[str, Any] | None = None) -> None:
    """What gc and lifecycle print: the rows and a summary (or JSON); exit 1 when an
    applied step failed."""
    failed = [r for r in rows if r["error"]]
    if as_json:
        _print_json({"apply": applied, **(extra or {}), name: rows,
                     "done": sum(bool(r["done"]) for r in rows), "failed": len(failed)})
    else:
        report.print_tables([table(rows, applied)])
        click.echo(line(rows, applied))
    if failed:
        fail(f"{len(failed)} could not be done: " + "; ".join(
            f"{r[label]}: {r['error']}" for r in failed[:10]))


def _busy_keys(cfg: MountConfig, cache_dirs: tuple[str, ...]) -> set[str]:
    """Keys with changes not uploaded yet: in the journals of the cache directories
    given, and in the queue of every running mount (this user's, or all for root) of the
    same bucket or container, asked through its control socket."""
    ours = cfg.tiers[0]
    keys = {str(row["path"]) for d in cache_dirs
            for row in read_pending(os.path.join(d, "journal.sqlite3"))}
    for record in registry.all_records():
        if not record.socket:
            continue
        try:
            listed = client.request(record.socket, {"command": "tiers"}, timeout=10)
            theirs = parse_tier_url(str(listed["tiers"][0]["url"]))
            if (theirs.scheme, theirs.container) != (ours.scheme, ours.container):
                continue
            queue = client.request(record.socket, {"command": "queue"}, timeout=30)
        except (StormountError, KeyError, IndexError, TypeError) as e:
            raise StormountError(f"cannot ask the mount at {record.mountpoint} which files "
                                 f"it has not uploaded yet ({e}); not applying rules "
                                 "without knowing") from None
        for upload in queue.get("uploads", []):
            full = theirs.prefix + str(upload["path"])
            if full.startswith(ours.prefix):
                keys.add(full[len(ours.prefix):])
    return keys


@click.command()
@click.argument("source", metavar="SOURCE[/PATH]")
@click.option("--dry-run", "apply", flag_value=False, default=False,
              help="Only list what the rules would do (the default).")
@click.option("--apply", "apply", flag_value=True, help="Do it.")
@click.option("--cache-dir", "cache_dirs", multiple=True, metavar="DIR",
              help="A mount's cache directory whose pending files must be left alone "
                   "(running mounts of SOURCE are found by themselves).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_store_options
def lifecycle(source: str, apply: bool, cache_dirs: tuple[str, ...], as_json: bool,
              tiers: tuple[str, ...], config_file: str | None, options: tuple[str, ...]) -> None:
    """Apply the [[lifecycle]] rules of the configuration: delete, archive or report old
    files."""
    source, path = split_source(source)
    cfg = _store_config(source, tiers, config_file, options)
    if not cfg.lifecycle:
        raise StormountError("the configuration has no [[lifecycle]] rules")
    prefix = folder_prefix(path)
    busy = _busy_keys(cfg, cache_dirs)

    async def run_rules() -> list[rules.Decision]:
        async with open_store(cfg) as store:
            decisions = await rules.plan(store, cfg.lifecycle, prefix, busy)
            if apply:
                await rules.apply(store, cfg.lifecycle, decisions)
            return decisions

    with report.scan_progress() as progress:
        progress("the rules", 0, 0)
        decisions = trio.run(run_rules)
    _review([d.as_dict() for d in decisions], "decisions", "key", apply, as_json,
            report.lifecycle_table, report.lifecycle_line)
