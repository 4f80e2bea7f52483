"""determinism(): deterministic kernels and CUBLAS_WORKSPACE_CONFIG inside the block, everything as before after."""
from __future__ import annotations

import os

import pytest
import torch

from ctmodel.config import ModelConfig, TrainConfig
from ctmodel.session import CUBLAS_WORKSPACE, determinism
from ctmodel.train import train

torch.set_num_threads(1)
NAME, WORKSPACE = CUBLAS_WORKSPACE


class Failed(Exception):
    """Stands in for an error raised while training."""


def torch_flags() -> tuple[bool, bool]:
    return torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark


def test_workspace_is_set_inside_and_removed_after_when_the_user_set_none(monkeypatch):
    monkeypatch.delenv(NAME, raising=False)
    before = torch_flags()
    with determinism(True):
        assert os.environ[NAME] == ":4096:8"
        assert torch_flags() == (True, False)
    assert NAME not in os.environ
    assert torch_flags() == before


def test_a_workspace_the_user_set_is_used_and_kept(monkeypatch):
    monkeypatch.setenv(NAME, ":16:8")
    with determinism(True):
        assert os.environ[NAME] == ":16:8"
    assert os.environ[NAME] == ":16:8"


def test_the_environment_is_restored_when_the_block_fails(monkeypatch):
    monkeypatch.delenv(NAME, raising=False)
    before = torch_flags()
    with pytest.raises(Failed), determinism(True):
        raise Failed
    assert NAME not in os.environ
    assert torch_flags() == before


def test_without_determinism_the_environment_is_left_alone(monkeypatch):
    monkeypatch.delenv(NAME, raising=False)
    with determinism(False):
        assert NAME not in os.environ
        assert torch_flags() == (False, True)
    assert NAME not in os.environ


def test_a_deterministic_run_leaves_the_environment_as_it_found_it(tiny_store, tmp_path, monkeypatch):
    monkeypatch.delenv(NAME, raising=False)
    cfg = TrainConfig(epochs=1, batch_size=8, augment=False, seed=0, deterministic=True)
    train(tiny_store, ModelConfig(width=4, depth=2), cfg, out=tmp_path / "run")
    assert NAME not in os.environ
