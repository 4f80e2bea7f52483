"""Checkpoints: atomic writes, load_run round trip, one-line errors for missing or damaged runs."""
from __future__ import annotations

import json

import pytest
import torch

from ctmodel.checkpoint import atomic_save, checkpoint_payload, load_run
from ctmodel.config import ModelConfig
from ctmodel.nets import build_model
from ctprep.errors import RunError
from ctprep.store import StoreLayout

torch.set_num_threads(1)
CFG = ModelConfig(name="unet2d", width=4, depth=2, context=3)
LAYOUT = StoreLayout(window_hu=(-1200.0, 600.0), size=48, dtype="uint8")


@pytest.fixture
def run_dir(tmp_path):
    """A run folder with config.json and a best.pt of a seeded unet2d (context 3)."""
    torch.manual_seed(0)
    model = build_model(CFG)
    (tmp_path / "config.json").write_text(json.dumps({"model": {"name": "unet2d"}}))
    atomic_save(checkpoint_payload(model, CFG, LAYOUT, 7, {"best_epoch": 7}), tmp_path / "best.pt")
    return tmp_path, model


def test_load_run_gives_the_saved_model_config_layout_and_epoch(run_dir):
    path, model = run_dir
    loaded = load_run(path, "best")
    assert loaded.model_config == CFG and loaded.layout == LAYOUT and loaded.epoch == 7
    assert loaded.path == path / "best.pt" and loaded.config == {"model": {"name": "unet2d"}}
    assert not loaded.model.training
    x = torch.rand(2, 3, 33, 47)
    torch.testing.assert_close(loaded.model(x), model.eval()(x))


def test_atomic_save_leaves_no_temp_files(run_dir):
    path, _ = run_dir
    assert sorted(p.name for p in path.iterdir()) == ["best.pt", "config.json"]


@pytest.mark.parametrize("damage, message", [
    (lambda p: (p / "config.json").unlink(), "config.json: missing"),
    (lambda p: (p / "config.json").write_text("{"), "not valid JSON"),
    (lambda p: (p / "best.pt").unlink(), "checkpoint not found"),
    (lambda p: (p / "best.pt").write_bytes(b"\x00" * 100), "unreadable checkpoint"),
    (lambda p: torch.save({"weights": 1}, p / "best.pt"), "not a ctstack checkpoint"),
])
def test_missing_or_damaged_run_is_a_one_line_run_error(run_dir, damage, message):
    path, _ = run_dir
    damage(path)
    with pytest.raises(RunError, match=message) as info:
        load_run(path, "best")
    assert "\n" not in str(info.value)


def test_missing_run_folder_and_unknown_checkpoint_name(tmp_path):
    with pytest.raises(RunError, match="no run folder"):
        load_run(tmp_path / "nope")
    with pytest.raises(RunError, match="expected one of best, last"):
        load_run(tmp_path, "final")
