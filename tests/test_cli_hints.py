"""Every --option named in the package's strings (errors, hints, help, docstrings) exists: on the quoted command
when the string quotes one (`ctmodel train ... --epochs`), on some command otherwise."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import typer

from cli import model_app, prep_app, sample_app

ROOT = Path(__file__).resolve().parents[1]
OPTION = re.compile(r"--[a-z][a-z0-9-]*")
QUOTED = re.compile(r"`(ctprep|ctsample|ctmodel) ([a-z]+)([^`]*)`")
NOT_OURS = {"--porcelain", "--untracked-files",  # git's options, passed by runfolder.git_commit
            "--nproc-per-node", "--standalone",  # torchrun's, quoted by `ctmodel train --help`
            "--array"}  # sbatch's, quoted by `ctprep convert --shard`'s error (ctprep.shard_jobs)
APPS = {"ctprep": prep_app, "ctsample": sample_app, "ctmodel": model_app}


def command_options() -> dict[tuple[str, str], set[str]]:
    """(tool, command) -> its --options (with --no-x forms and the app's own --debug/--version), via click."""
    table = {}
    for tool, app in APPS.items():
        group = typer.main.get_command(app)
        shared = {"--help"} | {o for p in group.params for o in (*p.opts, *p.secondary_opts)}
        for name, command in group.commands.items():
            table[tool, name] = shared | {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
    return table


def package_strings() -> list[tuple[str, str]]:
    """(file:line, text) of every string constant in cli.py and the three packages (f-string parts included)."""
    sources = [ROOT / "cli.py", *sorted((ROOT / "ctprep").glob("*.py")), *sorted((ROOT / "ctsample").glob("*.py")),
               *sorted((ROOT / "ctmodel").glob("*.py"))]
    found = []
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.JoinedStr):  # an f-string: its literal parts, values as "{}"
                text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
                found.append((f"{source.name}:{node.lineno}", text))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.append((f"{source.name}:{node.lineno}", node.value))
    return found


def unknown_options(text: str, table: dict[tuple[str, str], set[str]]) -> list[str]:
    """--options in ``text`` that the quoted command (or, unquoted, every command) does not have."""
    everywhere = set().union(*table.values())
    bad = []
    for tool, name, args in QUOTED.findall(text):
        have = table.get((tool, name), set())
        bad += [f"`{tool} {name}` {opt}" for opt in OPTION.findall(args) if opt not in have]
    bare = QUOTED.sub("", text)
    bad += [opt for opt in OPTION.findall(bare) if opt not in everywhere | NOT_OURS]
    return bad


def test_every_option_a_message_names_exists():
    table = command_options()
    strings = package_strings()
    assert sum(bool(OPTION.search(text)) for _, text in strings) > 20  # the scan sees the hints
    wrong = [f"{where}: {opt}" for where, text in strings for opt in unknown_options(text, table)]
    assert wrong == []


def test_the_scan_catches_a_missing_and_a_misplaced_option():
    table = command_options()
    assert unknown_options("pick --which last", table) == ["--which"]
    assert unknown_options("run `ctmodel train STORE --split val`", table) == ["`ctmodel train` --split"]
    assert unknown_options("run `ctmodel evaluate RUN STORE --split val --checkpoint last`", table) == []
    assert unknown_options("`ctsample split STORE --test 0.2` or --no-augment", table) == []
