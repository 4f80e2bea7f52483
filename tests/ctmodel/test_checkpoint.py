"""Checkpoints: atomic writes, load_run round trip, one-line errors for missing, damaged or booby-trapped runs,
and no unpickling anywhere else."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ctmodel.checkpoint import CHECKPOINT_VERSION, atomic_save, checkpoint_payload, load_run
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


# ---------------------------------------------------------------- a checkpoint never runs code


class Trap:
    """Unpickling this creates ``marker``: what a doctored checkpoint would do with a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.fixture(scope="module")
def trapped_run(tmp_path_factory):
    """A real one-epoch run whose best.pt and last.pt also hold a Trap, the store it trained on, and the marker."""
    from conftest import build_store, phantom, ras_affine
    from ctmodel.config import TrainConfig
    from ctmodel.train import train

    root = tmp_path_factory.mktemp("trap")
    cases = {f"case{i}": (*phantom(seed=i), ras_affine()) for i in range(5)}
    splits = {"case0": "train", "case1": "train", "case2": "train", "case3": "val", "case4": "test"}
    store = build_store(root / "store.zarr", cases, splits)
    run = train(store, ModelConfig(width=4, depth=2), TrainConfig(epochs=1, batch_size=8, augment=False),
                out=root / "run").run_dir
    marker = root / "MARKER"
    for name in ("best.pt", "last.pt"):
        payload = torch.load(run / name, weights_only=True)  # what train writes loads without pickles
        torch.save({**payload, "note": Trap(marker)}, run / name)
    return run, store, marker


def test_a_trapped_checkpoint_would_run_code_under_a_plain_torch_load(tmp_path):
    # The fault being guarded against: an ordinary unpickle runs the payload.
    probe = tmp_path / "probe"
    torch.save({"note": Trap(probe)}, tmp_path / "probe.pt")
    torch.load(tmp_path / "probe.pt", weights_only=False)
    assert probe.exists()


@pytest.mark.parametrize("command", ["predict", "evaluate", "resume"])
def test_trapped_checkpoint_is_refused_in_one_line_and_never_runs(trapped_run, tmp_path, command):
    from typer.testing import CliRunner

    from cli import model_app
    from conftest import phantom, ras_affine, save_nifti

    run, store, marker = trapped_run
    scan = save_nifti(tmp_path / "scan.nii.gz", phantom()[0], ras_affine())
    args = {"predict": ["predict", str(run), str(scan), str(tmp_path / "out.nii.gz"), "--device", "cpu"],
            "evaluate": ["evaluate", str(run), str(store), "--device", "cpu", "--grid", "store"],
            "resume": ["train", str(store), "--out", str(run), "--resume"]}[command]
    result = CliRunner().invoke(model_app, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1, result.output
    assert len(lines) == 1 and "Traceback" not in result.output
    assert "refused unread" in lines[0] and "pickled Python object" in lines[0]
    assert not marker.exists()


def test_load_run_refuses_a_trapped_checkpoint_naming_the_file(run_dir, tmp_path):
    path, _ = run_dir
    marker = tmp_path / "MARKER"
    payload = torch.load(path / "best.pt", weights_only=True)
    torch.save({**payload, "note": Trap(marker)}, path / "best.pt")
    with pytest.raises(RunError, match=f"{path / 'best.pt'}: refused unread") as info:
        load_run(path, "best")
    assert "\n" not in str(info.value) and not marker.exists()


def test_a_checkpoint_from_a_newer_format_is_refused(run_dir):
    path, _ = run_dir
    payload = torch.load(path / "best.pt", weights_only=True)
    torch.save({**payload, "format_version": CHECKPOINT_VERSION + 1}, path / "best.pt")
    with pytest.raises(RunError, match=f"checkpoint format {CHECKPOINT_VERSION + 1}, this ctstack reads up to"):
        load_run(path, "best")


@pytest.mark.parametrize("value", [np.zeros(3), np.random.RandomState(0).get_state(), Path("x"),
                                   {"rng": (1, np.int64(2))}])
def test_atomic_save_refuses_what_weights_only_cannot_load(tmp_path, value):
    # Every value that atomic_save lets through loads with weights_only=True; numpy and other objects do not.
    with pytest.raises(TypeError, match="weights_only=True"):
        atomic_save({"state": value}, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_what_atomic_save_accepts_loads_back_with_weights_only(tmp_path):
    state = {"rng": torch.get_rng_state(), "nested": [1, 2.5, ("a", None, True)], "nan": float("nan")}
    atomic_save(state, tmp_path / "x.pt")
    loaded = torch.load(tmp_path / "x.pt", weights_only=True)
    assert torch.equal(loaded["rng"], state["rng"]) and loaded["nested"] == [1, 2.5, ("a", None, True)]


# ---------------------------------------------------------------- no other unpickling in the package

ROOT = Path(__file__).resolve().parents[2]
PICKLERS = {"pickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def unpickling_calls(source: Path) -> list[str]:
    """Places in ``source`` that could unpickle: torch.load without weights_only=True, np.load(allow_pickle=True),
    read_pickle, PICKLER.load(s), an import of a pickler other than ``pickle`` (imported for UnpicklingError)."""
    found = []
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner, name = ast.unparse(node.func.value), node.func.attr
            flags = {k.arg: getattr(k.value, "value", None) for k in node.keywords}
            if ((owner == "torch" and name == "load" and flags.get("weights_only") is not True)
                    or (owner in ("np", "numpy") and name == "load" and flags.get("allow_pickle") is True)
                    or (owner in ("pd", "pandas") and name == "read_pickle")
                    or (owner in PICKLERS and name in ("load", "loads", "Unpickler", "open"))):
                found.append(f"{source.name}:{node.lineno} {owner}.{name}")
        modules = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                   [node.module] if isinstance(node, ast.ImportFrom) else [])
        found += [f"{source.name}:{node.lineno} import {m}" for m in modules if m in PICKLERS - {"pickle"}]
    return sorted(found, key=lambda hit: int(hit.split(":")[1].split(" ")[0]))


def test_no_module_of_ours_unpickles_anything_but_weights_only_checkpoints():
    sources = [ROOT / "cli.py", *(ROOT / "ctprep").glob("*.py"), *(ROOT / "ctsample").glob("*.py"),
               *(ROOT / "ctmodel").glob("*.py")]
    assert len(sources) > 30
    assert [hit for source in sources for hit in unpickling_calls(source)] == []


def test_the_audit_finds_each_kind_of_unpickling(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import torch, joblib\nimport numpy as np, pandas as pd, pickle\n"
                   "torch.load(p)\ntorch.load(p, weights_only=False)\nnp.load(p, allow_pickle=True)\n"
                   "pd.read_pickle(p)\npickle.loads(b)\ntorch.load(p, weights_only=True)\nnp.load(p)\n")
    assert [hit.split(" ", 1)[1] for hit in unpickling_calls(bad)] == [
        "import joblib", "torch.load", "torch.load", "np.load", "pd.read_pickle", "pickle.loads"]
