"""`stormount ctl`: a running mount seen and steered through its control socket."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

from stormount.cli.progress import WaitLine
from stormount.cli.shared import F, Seconds, fail
from stormount.control import client

EXIT_DEGRADED = 3  # `ctl health` of a mount that serves, with a tier down or uploads failing
EXIT_DOWN = 4  # `ctl health` of a mount none of whose tiers is in service


@dataclass(frozen=True)
class CtlTarget:
    socket: str | None
    mountpoint: str | None
    json: bool
    timeout: float


def _json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True,
                        help="Print the daemon's answer as JSON.")(fn)


@click.group()
@click.option("--socket", "socket_path", metavar="PATH", envvar="STORMOUNT_SOCKET",
              help="The mount's control socket (or STORMOUNT_SOCKET).")
@click.option("-m", "--mountpoint", metavar="MOUNTPOINT",
              help="The mount to talk to; default: the only one running.")
@_json_option
@click.option("--timeout", type=Seconds(0, 86400, min_open=True),
              default=client.DEFAULT_TIMEOUT, show_default=True,
              help="Seconds to wait for an answer (flush: for each progress report).")
@click.pass_context
def ctl(ctx: click.Context, socket_path: str | None, mountpoint: str | None, as_json: bool,
        timeout: float) -> None:
    """See and steer a running mount through its control socket."""
    from_env = ctx.get_parameter_source("socket_path") == click.core.ParameterSource.ENVIRONMENT
    if socket_path and mountpoint:
        if not from_env:
            raise click.UsageError("give either --socket or -m/--mountpoint, not both")
        socket_path = None  # -m names the mount: STORMOUNT_SOCKET does not apply
    ctx.obj = CtlTarget(socket_path, mountpoint, as_json, timeout)


def _ask(ctx: click.Context, request: dict[str, Any], as_json: bool, *,
         timeout: float | None = None, describe: Callable[[dict[str, Any]], str] | None = None
         ) -> dict[str, Any]:
    """Send a request to the mount; print its answer; exit non-zero on an error.
    `describe` gives the waiting line of a progress report (none with JSON)."""
    target: CtlTarget = ctx.obj
    as_json = as_json or target.json
    path = client.find_socket(target.socket, target.mountpoint)

    def on_progress(event: dict[str, Any]) -> None:  # with JSON too: the reports keep coming
        if describe is not None and not as_json:
            waiting.line(describe(event))

    with WaitLine() as waiting:  # ended before the answer is printed
        reply = client.request(path, request, timeout=timeout or target.timeout,
                               on_progress=None if describe is None else on_progress)
    if as_json:
        click.echo(json.dumps(reply, indent=2, sort_keys=True))
        if not reply.get("ok"):
            sys.exit(1)
    elif not reply.get("ok"):
        fail(str(reply.get("error") or "the mount reported an error"))
    else:
        from stormount.control import render

        render.show(render.console(), str(request["command"]), reply)
    return reply


@ctl.command("health")
@_json_option
@click.pass_context
def ctl_health(ctx: click.Context, as_json: bool) -> None:
    """Overall state (ok, degraded, down), tiers, queue. Exit 3 if degraded, 4 if down."""
    reply = _ask(ctx, {"command": "health"}, as_json)
    sys.exit({"degraded": EXIT_DEGRADED, "down": EXIT_DOWN}.get(reply.get("state", ""), 0))


@ctl.command("stats")
@click.option("--reset", is_flag=True, help="Then start counting again from zero.")
@_json_option
@click.pass_context
def ctl_stats(ctx: click.Context, reset: bool, as_json: bool) -> None:
    """Operations, latencies, cache hit ratios and uploads since the last reset."""
    _ask(ctx, {"command": "stats", "reset": reset}, as_json)


@ctl.command("invalidate")
@click.argument("path")
@click.option("-r", "--recursive", is_flag=True, help="The whole subtree under PATH.")
@_json_option
@click.pass_context
def ctl_invalidate(ctx: click.Context, path: str, recursive: bool, as_json: bool) -> None:
    """Drop cached metadata and data of PATH (inside the mount, or absolute under it)."""
    _ask(ctx, {"command": "invalidate", "path": path, "recursive": recursive}, as_json)


@ctl.command("flush")
@click.argument("path", required=False, default="")
@click.option("--wait", "wait", type=Seconds(0, min_open=True), metavar="SECONDS",
              help="Give up waiting after this long (default: until done or failing).")
@_json_option
@click.pass_context
def ctl_flush(ctx: click.Context, path: str, wait: float | None, as_json: bool) -> None:
    """Upload what is pending (under PATH) now, and wait."""
    request: dict[str, Any] = {"command": "flush", "path": path}
    if wait is not None:
        request["timeout"] = wait
    _ask(ctx, request, as_json,
         describe=lambda event: f"{event['remaining']} of {event['total']} upload(s) to go ...")


def _plain_command(name: str, doc: str) -> None:
    """`ctl NAME [--json]`: a request without arguments."""
    @ctl.command(name, help=doc)
    @_json_option
    @click.pass_context
    def command(ctx: click.Context, as_json: bool) -> None:
        _ask(ctx, {"command": name}, as_json)


def _arg_command(name: str, arg: str, doc: str) -> None:
    """`ctl NAME ARG [--json]`: a request with one argument (`tier` or `path`)."""
    @ctl.command(name, help=doc)
    @click.argument("value", metavar=arg.upper())
    @_json_option
    @click.pass_context
    def command(ctx: click.Context, value: str, as_json: bool) -> None:
        _ask(ctx, {"command": name, arg: value}, as_json)


_plain_command("queue", "Pending uploads and tier repairs, with state, attempts and last error.")
_plain_command("tiers", "The tiers with their roles and health.")
_arg_command("drain", "tier",
             "Take TIER (number or URL) out of service: writes spill as in an outage.")
_arg_command("undrain", "tier", "Put a drained TIER back in service.")
_plain_command("metrics", "The figures in Prometheus text format.")
_plain_command("pins", "The pinned paths: files, bytes cached, state of their fetch.")


_arg_command("pin", "path", "Keep PATH (a file or folder) whole in the cache, exempt from "
             "eviction, so it reads offline; it is fetched in the background.")
_arg_command("unpin", "path", "Let the cached data of PATH be evicted again.")
