"""What every user meets first: help without arguments, --version, help with an example, no torch for ctsample."""
from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

import cli
from ctprep import __version__

ROOT = Path(__file__).resolve().parents[1]
APPS = {"ctprep": cli.prep_app, "ctsample": cli.sample_app, "ctmodel": cli.model_app}


@pytest.mark.parametrize("name", APPS)
def test_no_arguments_prints_help_not_a_traceback(name):
    result = CliRunner().invoke(APPS[name], [])
    assert "Usage" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("name", APPS)
def test_version_flag(name):
    result = CliRunner().invoke(APPS[name], ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


@pytest.mark.parametrize("name", APPS)
def test_every_command_help_shows_an_example(name):
    group = typer.main.get_command(APPS[name])
    assert group.commands, f"{name} has no commands"
    for command_name, command in group.commands.items():
        assert "Example" in (command.help or ""), f"{name} {command_name} --help lacks an example"


def test_ctsample_help_does_not_import_torch():
    code = "import sys, cli; from typer.testing import CliRunner; " \
           "CliRunner().invoke(cli.sample_app, ['plan', '--help']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("name", APPS)
def test_shell_completion_script_is_offered(name):
    code = f"import cli; cli.{'prep' if name == 'ctprep' else name[2:]}_app(prog_name={name!r})"
    out = subprocess.run([sys.executable, "-c", code, "--show-completion", "bash"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f"_{name}_completion" in out.stdout and "complete" in out.stdout


MISSING_INPUT = [  # (app, arguments); "MISSING" is a path that does not exist
    ("ctprep", ["convert", "MISSING", "OUT.zarr"]),
    ("ctprep", ["info", "MISSING"]),
    ("ctsample", ["stats", "MISSING"]),
    ("ctsample", ["split", "MISSING"]),
    ("ctsample", ["plan", "MISSING"]),
    ("ctmodel", ["train", "MISSING", "--device", "cpu"]),
    ("ctmodel", ["evaluate", "MISSING", "MISSING", "--device", "cpu"]),
    ("ctmodel", ["compare", "MISSING", "MISSING"]),
    ("ctmodel", ["predict", "MISSING", "MISSING", "OUT.nii.gz"]),
]


@pytest.mark.parametrize(("name", "args"), MISSING_INPUT, ids=[f"{n} {a[0]}" for n, a in MISSING_INPUT])
def test_a_missing_input_path_exits_2_with_one_line_in_every_command(tmp_path, name, args):
    argv = [str(tmp_path / a) if a in ("MISSING", "OUT.zarr", "OUT.nii.gz") else a for a in args]
    result = CliRunner().invoke(APPS[name], argv)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output, result.output
    assert str(tmp_path / "MISSING") in lines[0]


def test_the_exit_code_scheme_is_written_where_users_look():
    scheme = ("0 success; 1 the data, store, run or a case is wrong or damaged",
              "2 the command line is wrong")
    page = (ROOT / "docs" / "cli.md").read_text()
    assert all(part in " ".join(cli.errors.__doc__.split()) for part in scheme)
    assert all(part in page for part in scheme)


def test_disk_full_while_training_is_one_line_exit_1(tiny_store, tmp_path, monkeypatch):
    import ctmodel.train

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "runs" / "r" / "last.pt"))

    monkeypatch.setattr(ctmodel.train, "train", full_disk)  # what torch.save raises on a full disk
    result = CliRunner().invoke(cli.model_app, ["train", str(tiny_store), "--out", str(tmp_path / "runs" / "r"),
                                                "--device", "cpu", "--epochs", "1"])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and "Traceback" not in result.output, result.output
    assert lines[0] == (f"error: {tmp_path / 'runs' / 'r' / 'last.pt'}: cannot write (expected free space, found "
                        "the disk full); free space on that disk or write the output to another one")
