"""Regenerate docs/cli.md from the three Typer apps. Run: python scripts/gen_cli_docs.py"""
from __future__ import annotations

import sys
from pathlib import Path

import typer
import typer.main
from typer.cli import get_docs_for_click

ROOT = Path(__file__).resolve().parents[1]
HEADER = (
    "# Command-line reference\n\n"
    "Generated from the Typer apps by `python scripts/gen_cli_docs.py`; "
    "`tests/test_cli_docs.py` fails when this page is stale.\n\n"
    "**Exit codes** (one scheme for every command): 0 success; 1 the data, store, run or a case is wrong or "
    "damaged (including a full disk, a read-only file system or denied access while writing); 2 the command line "
    "is wrong (bad option values, conflicting options, an input path that does not exist). Every error is one "
    "line on stderr, `FILE: what is wrong (expected X, found Y); what to do`; `--debug` shows the traceback.\n"
)


def render() -> str:
    """Markdown for every command and option of ctprep, ctsample and ctmodel."""
    sys.path.insert(0, str(ROOT))
    import cli

    parts = [HEADER]
    for name, app in (("ctprep", cli.prep_app), ("ctsample", cli.sample_app), ("ctmodel", cli.model_app)):
        command = typer.main.get_command(app)
        with typer.Context(command, info_name=name) as ctx:
            parts.append(get_docs_for_click(obj=command, ctx=ctx, name=name, title=f"`{name}`").strip() + "\n")
    return "\n".join(parts)


def main() -> None:
    """Write docs/cli.md."""
    (ROOT / "docs" / "cli.md").write_text(render())
    print(f"wrote {ROOT / 'docs' / 'cli.md'}")


if __name__ == "__main__":
    main()
