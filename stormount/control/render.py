"""Human-readable output of `stormount ctl` (rich tables); `--json` bypasses this."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

STATE_STYLE = {"ok": "green", "up": "green", "closed": "green", "degraded": "yellow",
               "half-open": "yellow", "drained": "yellow", "down": "red", "open": "red"}


def size(n: object) -> str:
    if not isinstance(n, int | float):
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover


def ms(value: object) -> str:
    return "-" if not isinstance(value, int | float) else f"{value:.2f}"


def ago(wall: object) -> str:
    if not isinstance(wall, int | float):
        return "never"
    return f"{duration(time.time() - wall)} ago"


def duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s"


def styled(state: object) -> Text:
    text = str(state)
    return Text(text, style=STATE_STYLE.get(text, ""))


def console() -> Console:
    """Names and messages are printed as they are: no rich markup in them is
    interpreted (a file may be called `[draft].txt`)."""
    return Console(markup=False, highlight=False) if sys.stdout.isatty() else Console(
        markup=False, highlight=False, width=250)  # piped: whole lines, not 80 columns


def ratio(value: object) -> str:
    return "-" if not isinstance(value, int | float) else f"{value * 100:.1f}%"


def tiers_table(tiers: list[dict[str, Any]]) -> Table:
    table = Table(title="Tiers", title_justify="left")
    for col in ("#", "url", "role", "state", "breaker", "last probe", "p50 ms", "p95 ms",
                "in flight", "last error"):
        table.add_column(col)
    for t in tiers:
        probe = last_probe(t)
        recent = t.get("recent_latency") or {}
        error = "-" if not t.get("last_error") else (
            f"{t['last_error']} ({ago(t.get('last_error_at'))})")
        table.add_row(str(t["index"]), str(t["url"]), str(t["role"]), styled(t["state"]),
                      styled(t["breaker"]), probe, ms(recent.get("p50_ms")),
                      ms(recent.get("p95_ms")), str(t.get("in_flight", 0)), error)
    return table


def last_probe(t: dict[str, Any]) -> str:
    """The last probe as it was; before the first one (probe_interval is long while the
    tier is healthy), when the tier last answered anything, which is what is known."""
    answered = t.get("last_answer_ago")
    answer = ("no answer yet" if not isinstance(answered, int | float)
              else f"last answer {duration(answered)} ago")
    if t.get("probe_at") is None:
        return f"no probe yet; {answer}"
    return f"{'ok' if t.get('probe_ok') else 'failed'} {ago(t['probe_at'])}; {answer}"


def transfer(up: dict[str, Any]) -> str:
    """How far an upload in flight has got: 412.0 MiB / 1.0 GiB  38.2 MiB/s  ETA 16 s."""
    if up.get("bytes_sent") is None:
        return "-"
    parts = [f"{size(up['bytes_sent'])} / {size(up.get('bytes_total'))}"]
    if up.get("finishing"):
        parts.append("sent; the store assembles it")
    else:
        parts.append(f"{size(up.get('rate'))}/s")
        eta = up.get("eta")
        parts.append("ETA -" if not isinstance(eta, int | float) else f"ETA {duration(eta)}")
    parts.append(f"attempt {up.get('attempt')}")
    return "  ".join(parts)


def ops_table(title: str, rows: list[tuple[list[str], dict[str, Any]]],
              lead: list[str]) -> Table:
    table = Table(title=title, title_justify="left")
    for col in (*lead, "operation", "count", "errors", "retries", "p50 ms", "p95 ms",
                "p99 ms"):
        table.add_column(col, justify="left" if col in (*lead, "operation") else "right")
    for labels, ops in rows:
        for name, op in ops.items():
            reasons = op.get("errors_by_reason") or {}
            errors = str(op["errors"]) + (
                " (" + ", ".join(f"{k} {v}" for k, v in reasons.items()) + ")" if reasons
                else "")
            table.add_row(*labels, name, str(op["count"]), errors, str(op.get("retries", 0)),
                          ms(op["p50_ms"]), ms(op["p95_ms"]), ms(op["p99_ms"]))
    return table


def health(console: Console, r: dict[str, Any]) -> None:
    console.print(styled(r["state"]), f" {r['mountpoint']}  (pid {r['pid']}, "
                  f"up {duration(r['uptime'])}, stormount {r['version']})")
    for reason in r.get("reasons", []):
        console.print(f"  - {reason}")
    console.print(tiers_table(r["tiers"]))
    wb = r["writeback"]
    oldest = ("" if wb["oldest_queued_at"] is None
              else f", oldest queued {ago(wb['oldest_queued_at'])}")
    console.print(f"write-back: {wb['pending']} pending ({wb['uploading']} uploading, "
                  f"{wb.get('open', 0)} open for writing, {wb['failing']} failing){oldest}")
    rep = r["repair"]
    console.print("repairs: " + ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in rep.items()))
    for q in r.get("quotas", []):
        limits = [f"{size(q['bytes'])} of {size(q['max_bytes'])}" if q["max_bytes"] is not None
                  else f"{size(q['bytes'])}",
                  f"{q['files']} of {q['max_files']} files" if q["max_files"] is not None
                  else f"{q['files']} files"]
        console.print(f"quota {q['path']}: " + ", ".join(limits))


def stats(console: Console, r: dict[str, Any]) -> None:
    note = " (counters reset now)" if r.get("reset") else ""
    console.print(f"since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(r['since']))} "
                  f"({duration(r['seconds'])}){note}")
    fuse = r["fuse"]
    console.print(ops_table("FUSE operations", [([], fuse["ops"])], []))
    console.print(f"read {size(fuse['bytes_read'])}, written {size(fuse['bytes_written'])}"
                  + (f", {size(fuse['bytes_to_page_cache'])} given to the kernel's page cache"
                     if fuse.get("bytes_to_page_cache") else ""))
    console.print(ops_table("Backend requests", [([str(t["index"]), t["url"]], t["ops"])
                                                 for t in r["backend"]["tiers"]],
                            ["tier", "url"]))
    meta, blocks = r["cache"]["metadata"], r["cache"]["blocks"]
    console.print(f"metadata cache: {meta['hits']} hits, {meta['misses']} misses "
                  f"({ratio(meta['hit_ratio'])}), {meta['nodes']} inodes in memory, "
                  f"{size(meta['db_bytes'])} on disk")
    if blocks["enabled"]:
        console.print(f"block cache: {blocks['hits']} hits, {blocks['misses']} misses "
                      f"({ratio(blocks['hit_ratio'])}), {blocks['evictions']} evicted, "
                      f"{size(blocks['bytes'])} of {size(blocks['max_bytes'])} in "
                      f"{blocks['blocks']} blocks")
    else:
        console.print("block cache: off")
    wb = r["writeback"]
    console.print(f"write-back: {wb['queue_depth']} queued, {wb['uploaded']} uploaded "
                  f"({size(wb['bytes'])}), {wb['failures']} failed attempts, "
                  f"{wb['conflicts']} conflicts, {size(wb['upload_bytes_per_second'])}/s "
                  "over the last minute")
    rep = r["repair"]
    console.print(f"repairs: {rep['repaired']} done; pending: "
                  + ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in rep["pending"].items()))


def queue(console: Console, r: dict[str, Any]) -> None:
    uploads = Table(title=f"Uploads ({len(r['uploads'])})", title_justify="left")
    for col in ("state", "path", "progress", "attempts", "size", "queued", "last error"):
        uploads.add_column(col)
    for up in r["uploads"]:
        uploads.add_row(styled(up["state"]), "/" + str(up["path"]), transfer(up),
                        str(up["attempts"]), size(up["size"]), ago(up["queued_at"]),
                        str(up["last_error"] or "-"))
    console.print(uploads)
    repairs = Table(title=f"Repairs ({len(r['repairs'])})", title_justify="left")
    for col in ("key", "tier", "action", "from", "state", "attempts", "since", "last error"):
        repairs.add_column(col)
    for t in r["repairs"]:
        repairs.add_row(str(t["key"]), str(t["tier"]), str(t["action"]),
                        "-" if t["from_tier"] is None else str(t["from_tier"]),
                        str(t["state"]), str(t["attempts"]), ago(t["since"]),
                        str(t["last_error"] or "-"))
    console.print(repairs)


def pins_table(pins: list[dict[str, Any]]) -> Table:
    table = Table(title="Pins", title_justify="left")
    for col in ("path", "files", "size", "cached", "state", "last walk"):
        table.add_column(col)
    for p in pins:
        state = "error: " + str(p["error"]) if p["error"] else (
            "all cached" if p["done"] else "fetching")
        table.add_row(str(p["path"]), str(p["files"]), size(p["bytes"]),
                      size(p["cached_bytes"]), state, ago(p["walked_at"]))
    return table


def show(console: Console, command: str, r: dict[str, Any]) -> None:
    """The answer to `command`, for a person."""
    if command == "health":
        health(console, r)
    elif command == "stats":
        stats(console, r)
    elif command == "queue":
        queue(console, r)
    elif command == "tiers":
        console.print(tiers_table(r["tiers"]))
    elif command in ("drain", "undrain"):
        t = r["tier"]
        done = "drained" if command == "drain" else "back in service"
        already = "" if r["changed"] else " (it already was)"
        console.print(f"tier {t['index']} ({t['url']}) {done}{already}; state",
                      styled(t["state"]))
    elif command == "invalidate":
        what = "subtree" if r["recursive"] else "path"
        console.print(f"invalidated {what} {r['path']}: the next access asks the store "
                      f"({r['nodes']} inode(s) in memory dropped)")
    elif command == "flush":
        console.print(f"uploaded {r['uploaded']} of {r['total']} file(s) under {r['path']}")
    elif command == "metrics":
        console.out(r["text"], end="")
    elif command == "pin":
        console.print(f"pinned {r['pin']['path']}: fetching it {r['fetching']}")
    elif command == "unpin":
        console.print(f"unpinned {r['path']}: its data may be evicted again")
    elif command == "pins":
        console.print(pins_table(r["pins"]))
    else:  # pragma: no cover - every command has its rendering
        console.print_json(data=r)
