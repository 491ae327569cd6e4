"""The command line: the only place that parses argv. Every error a user can cause ends
in one line on stderr and a non-zero exit, never a traceback.

The group and `main` are here; each command lives in the module named for it (`mount`,
`unmount`, `ctl`, the storage commands in `manage`, mount(8)'s helper in `helper`)."""

from __future__ import annotations

import sqlite3
import sys

import click

from stormount import __version__
from stormount.cli import ctl, manage, mount, unmount
from stormount.cli.helper import mount_helper_main
from stormount.cli.shared import fail
from stormount.errors import StormountError

__all__ = ["cli", "main", "mount_helper_main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="stormount")
def cli() -> None:
    """Mount cloud object storage (S3, Azure Blob, a local directory) as a directory."""


cli.add_command(mount.mount)
cli.add_command(unmount.unmount)
cli.add_command(ctl.ctl)
cli.add_command(manage.usage)
cli.add_command(manage.pull)
cli.add_command(manage.push)
cli.add_command(manage.gc)
cli.add_command(manage.lifecycle)


def name_environment(group: click.Group, prefix: str = "STORMOUNT") -> None:
    """Every long option may also come from the environment, named after the option as
    typed: STORMOUNT_<COMMAND>_<OPTION>, e.g. STORMOUNT_MOUNT_CACHE_DIR,
    STORMOUNT_CTL_JSON=1 (click's auto_envvar_prefix would name them after our
    parameters: ..._AS_JSON, ..._CONFIG_FILE). The command line wins; an option that
    names its own variable (ctl --socket: STORMOUNT_SOCKET) keeps it; of two flags
    that set one value (--apply/--dry-run), the first takes the variable."""
    for name, command in group.commands.items():
        where = f"{prefix}_{name}".upper().replace("-", "_")
        taken: set[str | None] = set()
        for param in command.params:
            long = [opt for opt in param.opts if opt.startswith("--")]
            if isinstance(param, click.Option) and param.envvar is None and long \
                    and param.name not in taken:
                param.envvar = f"{where}_{long[0][2:]}".upper().replace("-", "_")
            taken.add(param.name)
        if isinstance(command, click.Group):
            name_environment(command, where)


name_environment(cli)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        fail("aborted", 130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except StormountError as e:
        fail(str(e))
    except OSError as e:  # a local file or folder a command was given (or needs)
        where = f"{e.filename}: " if e.filename else ""
        fail(f"{where}{e.strerror or e}")
    except sqlite3.Error as e:
        fail(f"a state or journal database: {e}")
    except KeyboardInterrupt:
        sys.exit(130)
