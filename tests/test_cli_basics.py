"""What every user meets first: help without arguments, --version, help with an example, no torch for ctsample."""
from __future__ import annotations

import subprocess
import sys

import pytest
import typer.main
from typer.testing import CliRunner

import cli
from ctprep import __version__

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
