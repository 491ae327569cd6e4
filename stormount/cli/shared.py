"""What every command shares: errors as one line and an exit code, option types."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


class Seconds(click.FloatRange):
    """A number of seconds within bounds, NaN refused: it compares false with every
    bound, so a FloatRange takes it, and it makes no timeout (a socket refuses it, a
    deadline of NaN is an error)."""

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        seconds = super().convert(value, param, ctx)
        if seconds != seconds:  # NaN
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return seconds


def one_line(message: str) -> str:
    """An error message stays one line whatever it quotes: a line break or another
    character that does not print (in a path or a URL the user gave) is shown escaped."""
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode()
                   for c in message)


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"stormount: error: {one_line(message)}", err=True)
    sys.exit(code)
