"""CLI plumbing the three apps share: help that reads like the docs, --debug/--version, the one exit-code scheme
(`errors`), and the option/argument declarations more than one command uses. Imports only typer and the stdlib."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup


def _docs_metavars(params: list) -> list:
    """Help that reads like the docs: arguments as their NAME, flags (on/off options and help) without a type."""
    for param in params:
        if param.metavar is None and isinstance(param, TyperArgument):
            param.metavar = param.name.upper() + ("..." if param.nargs != 1 else "")
        elif param.metavar is None and getattr(param, "is_flag", False):
            param.metavar = ""
    return params


class Command(TyperCommand):
    """A command whose usage line reads `[OPTIONS] RAW STORE`, as docs/cli.md does."""

    def get_params(self, ctx: typer.Context) -> list:
        return _docs_metavars(super().get_params(ctx))

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        arguments = [p for p in self.get_params(ctx) if isinstance(p, TyperArgument)]
        return [self.options_metavar or "", *(p.metavar for p in arguments)]


class App(TyperGroup):
    """An app whose one --debug also works after the command (`ctprep convert RAW STORE --debug`)."""

    def get_params(self, ctx: typer.Context) -> list:
        return _docs_metavars(super().get_params(ctx))

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        end = args.index("--") if "--" in args else len(args)
        if "--debug" in args[:end]:
            args = ["--debug", *(a for a in args[:end] if a != "--debug"), *args[end:]]
        return super().parse_args(ctx, args)


def _version(value: bool) -> None:
    if value:
        from ctprep import __version__

        typer.echo(f"ctstack {__version__}")
        raise typer.Exit()


DebugOption = Annotated[bool, typer.Option("--debug", help="Show full tracebacks instead of one-line errors (also "
                                                           "accepted after the command).")]
VersionOption = Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                       help="Print the version and exit.")]

StoreArgument = Annotated[str, typer.Argument(help="A store made by `ctprep convert`: a folder, or an "
                                                   "object-storage URL (s3://bucket/store.zarr, gs://, az://).")]
RunArgument = Annotated[Path, typer.Argument(help="Run folder written by `ctmodel train`.")]
WorkersOption = Annotated[Optional[int], typer.Option(min=1, help="Parallel processes (default: all cores; "
                                                                  "1 runs in-process).")]
CheckpointOption = Annotated[str, typer.Option(help="Which checkpoint of the run: best (highest val Dice) or last.")]
DeviceOption = Annotated[str, typer.Option(help="auto (CUDA when available), cpu or cuda[:N].")]
SplitOption = Annotated[str, typer.Option(help="Split to evaluate: train, val, test or all.")]
SplitChoiceOption = Annotated[str, typer.Option(help="train, val, test or all.")]
ToleranceOption = Annotated[float, typer.Option(min=0.0, help="NSD surface tolerance in mm.")]
GridOption = Annotated[str, typer.Option(help="Grid of the 3-D scores: native (the source files' voxels and "
                                              "spacing, as challenges score) or store (the resized arrays, fast).")]
BatchSizeOption = Annotated[Optional[int], typer.Option(min=1, help="Slices per forward pass (default: 32 on a "
                                                                    "GPU, 4 on the CPU: the fastest measured).")]


@contextmanager
def errors(ctx: typer.Context, inputs: tuple[Optional[Path], ...] = (),
           stores: tuple[Path | str, ...] = ()) -> Iterator[None]:
    """Run a command's library call under the one exit-code scheme of every command, and print one line on error.

    Exit codes: 0 success; 1 the data, store, run or a case is wrong or damaged (a CtstackError, including a full
    disk, a read-only file system or denied access while writing); 2 the command line is wrong (UsageError: bad
    option values, conflicting options, an input path that does not exist). Click's own usage errors also exit 2.
    ``inputs`` (files or folders) and ``stores`` (store URLs are left to the command) are checked to exist first;
    None entries (unset options) are skipped. Object-storage failures (refused credentials, an unreachable
    endpoint) are one line too. With --debug the error keeps its traceback.
    """
    from ctprep.errors import CtstackError, UsageError, storage_error
    from ctprep.location import mapped_object_error

    try:
        _check_inputs(inputs, stores)
        try:
            yield
        except Exception as err:
            mapped = (storage_error(err) if isinstance(err, OSError) else None) or mapped_object_error(err)
            if mapped is None:
                raise
            raise mapped from err
    except CtstackError as err:
        if ctx.obj and ctx.obj.get("debug"):
            raise
        typer.secho(f"error: {err}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2 if isinstance(err, UsageError) else 1) from None


def _check_inputs(inputs: tuple[Optional[Path], ...], stores: tuple[Path | str, ...]) -> None:
    """UsageError (exit 2) for the first input path or store that does not exist (store URLs: not checked here)."""
    from ctprep.errors import UsageError
    from ctprep.location import is_url

    inputs = tuple(path for path in inputs if not is_url(path))
    stores = tuple(path for path in stores if not is_url(path))
    for path in inputs:
        if path is not None and not os.path.lexists(path):
            raise UsageError(f"{path}: no such file or folder (expected an existing path, found nothing); "
                             "check the path")
    for path in stores:
        if not os.path.lexists(path):
            raise UsageError(f"{path}: no ctstack store there (expected an existing store, found nothing); check "
                             f"the path, or make the store with `ctprep convert RAW {path}`")


def warn(line: str) -> None:
    """Print ``warning: line`` to stderr, yellow on a terminal (``ctprep.console.print_problems``)."""
    from ctprep.console import print_problems

    print_problems([line])
