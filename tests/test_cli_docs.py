"""docs/cli.md is generated from the Typer apps and must not go stale."""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _render() -> str:
    spec = importlib.util.spec_from_file_location("gen_cli_docs", ROOT / "scripts" / "gen_cli_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.render()


def test_cli_reference_matches_the_apps():
    stale = (ROOT / "docs" / "cli.md").read_text() != _render()
    assert not stale, "docs/cli.md is stale: run `python scripts/gen_cli_docs.py`"


def test_cli_reference_documents_every_command():
    text = (ROOT / "docs" / "cli.md").read_text()
    for command in ("ctprep convert", "ctprep info", "ctprep demo", "ctsample stats", "ctsample split",
                    "ctsample plan", "ctmodel train", "ctmodel evaluate", "ctmodel predict", "ctmodel compare"):
        assert f"$ {command}" in text, f"{command} missing from docs/cli.md"
