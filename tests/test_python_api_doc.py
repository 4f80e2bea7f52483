"""docs/python-api.md: its notebook block runs as written (at a tiny size), so the page cannot go stale."""
from __future__ import annotations

import re
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parent.parent / "docs" / "python-api.md"
SIZES = re.compile(r"^CASES, DEMO_SIZE, SIZE, EPOCHS = .*$", re.MULTILINE)


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.DOTALL)


def test_the_notebook_block_runs_end_to_end_at_a_tiny_size(tmp_path, monkeypatch, capsys):
    block = python_blocks(DOC.read_text())[0]
    assert SIZES.search(block), "the block must keep its sizes on one line so this test can shrink them"
    tiny = SIZES.sub("CASES, DEMO_SIZE, SIZE, EPOCHS = 5, 64, 32, 1", block)
    tiny = tiny.replace("max_slices=120", "max_slices=12").replace('ModelConfig(name="dual-encoder")',
                                                                   'ModelConfig(name="dual-encoder", width=4, depth=2)')
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    namespace: dict = {}
    exec(compile(tiny, str(DOC), "exec"), namespace)
    assert (tmp_path / "work" / "pred.nii.gz").exists()
    assert namespace["report"].failed == [] and len(namespace["report"].results) == 1
    assert (tmp_path / "work" / "runs" / "dual" / "best.pt").exists()
    assert "mean" in capsys.readouterr().out


def test_the_store_reading_block_names_real_methods():
    from ctprep.store import SliceStore

    block = python_blocks(DOC.read_text())[1]
    for method in re.findall(r"store\.(\w+)\(", block):
        assert hasattr(SliceStore, method), method
