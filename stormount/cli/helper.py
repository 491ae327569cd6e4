"""mount.stormount, mount(8)'s helper: its options turned into a `stormount mount`, and
its exit codes."""

from __future__ import annotations

import sys

import click

from stormount import daemon
from stormount.cli.mount import mount
from stormount.cli.shared import one_line
from stormount.config import build_config, mount_path
from stormount.errors import StormountError

# mount(8)'s helper convention: 1 for a wrong invocation, 32 for a mount that failed
HELPER_USAGE, HELPER_FAILED = 1, 32
HELPER_TYPES = ("stormount", "fuse.stormount")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("source")
@click.argument("mountpoint")
@click.option("-o", "options", multiple=True, metavar="OPT[,OPT...]")
@click.option("-s", "sloppy", is_flag=True, help="Ignore mount options not known.")
@click.option("-f", "fake", is_flag=True, help="Check everything, but do not mount.")
@click.option("-n", "no_mtab", is_flag=True, help="Accepted (there is no mtab to write).")
@click.option("-v", "verbose", is_flag=True, help="Say what was mounted.")
@click.option("-r", "read_only", is_flag=True, help="Mount read-only (-o ro).")
@click.option("-w", "read_write", is_flag=True, help="Mount read-write (-o rw).")
@click.option("-t", "fstype", metavar="TYPE", help="stormount or fuse.stormount.")
@click.option("-N", "namespace", metavar="NS", hidden=True)
def mount_helper(source: str, mountpoint: str, options: tuple[str, ...], sloppy: bool,
                 fake: bool, no_mtab: bool, verbose: bool, read_only: bool, read_write: bool,
                 fstype: str | None, namespace: str | None) -> None:
    """mount.stormount: what mount(8) runs for `mount -t stormount SOURCE MOUNTPOINT
    -o OPTIONS` and for fstab lines of type stormount. Returns once the mount is ready."""
    if fstype is not None and fstype not in HELPER_TYPES:
        raise click.UsageError(f"filesystem type {fstype!r} is not stormount")
    if namespace is not None:
        raise click.UsageError("mounting in another mount namespace (-N) is not supported")
    opts = options + (("ro",) if read_only else ()) + (("rw",) if read_write else ())
    args = [source, mountpoint, *(f"-o{opt}" for opt in opts)]
    if sloppy:
        args.append("--sloppy")
    if fake:
        cfg = build_config(source, mountpoint, options=opts, sloppy=sloppy)
        daemon.check_mountpoint(cfg)
        return
    mount.main(args, prog_name="mount.stormount", standalone_mode=False)
    if verbose:
        click.echo(f"mount.stormount: {source} mounted at {mount_path(mountpoint)}")


def mount_helper_main() -> None:
    """The entry point of mount.stormount, with mount(8)'s exit codes."""
    try:
        mount_helper.main(prog_name="mount.stormount", standalone_mode=False)
    except click.ClickException as e:
        e.show()
        sys.exit(HELPER_USAGE)
    except StormountError as e:
        click.echo(f"mount.stormount: {one_line(str(e))}", err=True)
        sys.exit(HELPER_FAILED)
    except (click.exceptions.Abort, KeyboardInterrupt):
        sys.exit(HELPER_FAILED)
