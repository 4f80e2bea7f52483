"""Command-line entry points: three thin Typer apps (ctprep, ctsample, ctmodel); each command parses,
calls one library function and prints its summary. Library imports are lazy so `--help` stays fast."""
from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer

prep_app = typer.Typer(no_args_is_help=True, help="Convert NIfTI chest CTs into a Zarr slice store.")
sample_app = typer.Typer(no_args_is_help=True, help="Splits, imbalance statistics and balanced slice plans.")
model_app = typer.Typer(no_args_is_help=True, help="Train, evaluate and predict with 2.5D U-Nets.")

DebugOption = Annotated[bool, typer.Option("--debug", help="Show full tracebacks instead of one-line errors.")]


def _version(value: bool) -> None:
    if value:
        from ctprep import __version__

        typer.echo(f"ctstack {__version__}")
        raise typer.Exit()


VersionOption = Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                       help="Print the version and exit.")]


@prep_app.callback()
def _prep(ctx: typer.Context, debug: DebugOption = False, version: VersionOption = None) -> None:
    """Convert NIfTI chest CTs into a Zarr slice store."""
    ctx.obj = {"debug": debug}


@sample_app.callback()
def _sample(ctx: typer.Context, debug: DebugOption = False, version: VersionOption = None) -> None:
    """Splits, imbalance statistics and balanced slice plans."""
    ctx.obj = {"debug": debug}


@model_app.callback()
def _model(ctx: typer.Context, debug: DebugOption = False, version: VersionOption = None) -> None:
    """Train, evaluate and predict with 2.5D U-Nets."""
    ctx.obj = {"debug": debug}


@contextmanager
def errors(ctx: typer.Context) -> Iterator[None]:
    """Turn the project's own errors into one line on stderr (exit 1, usage errors exit 2)."""
    from ctprep.errors import CtstackError, UsageError

    try:
        yield
    except CtstackError as err:
        if ctx.obj and ctx.obj.get("debug"):
            raise
        typer.secho(f"error: {err}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2 if isinstance(err, UsageError) else 1) from None


# ---------------------------------------------------------------- ctprep commands


# ---------------------------------------------------------------- ctsample commands


# ---------------------------------------------------------------- ctmodel commands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(prep_app())
