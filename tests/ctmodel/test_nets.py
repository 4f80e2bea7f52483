"""Networks: the input/output contract at odd sizes, parameter counts, gradient coverage and the fusion formulas for
every block x fusion x model; old checkpoints and --resume with the block and fusion options."""
from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from test_blocks import BLOCK_PARAMETERS
from ctmodel.config import BLOCKS, FUSIONS, ModelConfig, TrainConfig, configs_from_options
from ctmodel.losses import DiceBCELoss
from ctmodel.nets import build_model, count_parameters, level_channels
from ctprep.errors import RunError, UsageError

torch.set_num_threads(1)
SMALL = dict(width=4, depth=3)
MODELS = [dict(name="dual-encoder", fusion=fusion) for fusion in FUSIONS] + [
    dict(name="unet2d", context=1), dict(name="unet2d", context=3)]
COMBINATIONS = [dict(block=block, **model) for block in BLOCKS for model in MODELS]
DOC = Path(__file__).resolve().parents[2] / "docs" / "model.md"


def label(options: dict) -> str:
    """A readable test id: dual-encoder-idc-concat, unet2d-residual-ctx3."""
    tail = options.get("fusion") or f"ctx{options['context']}"
    return f"{options['name']}-{options['block']}-{tail}"


def fusion_parameters(kind: str, channels: int) -> int:
    """learned: alpha, res_scale, a bias-free 3x3 conv 2C -> C and an affine InstanceNorm; concat: a 1x1 conv
    2C -> C; fixed: nothing."""
    return {"learned": 2 + 9 * 2 * channels * channels + 2 * channels, "fixed": 0,
            "concat": 2 * channels * channels}[kind]


def expected_parameters(cfg: ModelConfig) -> int:
    """Encoders (1 or 2), the fusions, the decoder (transposed convs + blocks) and the 1x1 head, layer by layer."""
    channels, block = level_channels(cfg), BLOCK_PARAMETERS[cfg.block]
    inputs = (1, 3) if cfg.name == "dual-encoder" else (cfg.context,)
    encoders = sum(block(i, o) for cin in inputs for i, o in zip([cin, *channels[:-1]], channels))
    fusion = 0
    if cfg.name == "dual-encoder":
        fusion = (fusion_parameters("learned", channels[-1]) if cfg.fusion == "bottleneck"
                  else sum(fusion_parameters(cfg.fusion, c) for c in channels))
    decoder = sum(4 * channels[i + 1] * channels[i] + channels[i] + block(2 * channels[i], channels[i])
                  for i in range(len(channels) - 1))
    return encoders + fusion + decoder + channels[0] + 1


@pytest.mark.parametrize("options", COMBINATIONS, ids=label)
def test_every_model_maps_a_stack_to_one_logit_map_at_odd_size(options):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 33, 47)
    assert build_model(ModelConfig(**options, **SMALL))(x).shape == (2, 1, 33, 47)


@pytest.mark.parametrize("options", COMBINATIONS, ids=label)
def test_parameters_at_the_default_width_follow_the_layers(options):
    cfg = ModelConfig(**options)
    assert count_parameters(build_model(cfg)) == expected_parameters(cfg)


def documented_counts() -> dict[str, int]:
    """docs/model.md's table of parameter counts at width 12: the command in the first column, the count in the
    second."""
    rows = re.findall(r"^\| `(ctmodel train[^`]*)` \| ([\d,]+) \|", DOC.read_text(), flags=re.M)
    return {command: int(count.replace(",", "")) for command, count in rows}


def test_docs_list_the_parameter_count_of_every_combination():
    from ctmodel.variants import command, parameter_rows

    rows = parameter_rows()
    assert len(rows) == len(COMBINATIONS) + len(BLOCKS)  # + unet3d per block (tests/ctmodel/test_unet3d.py)
    assert documented_counts() == {command(cfg): count for cfg, count in rows}


def test_default_dual_encoder_is_near_the_studys_1_6_million_parameters():
    assert 1.3e6 < count_parameters(build_model(ModelConfig())) < 1.9e6


def test_width_scales_parameters_quadratically():
    small = count_parameters(build_model(ModelConfig(width=8)))
    large = count_parameters(build_model(ModelConfig(width=16)))
    assert 3.8 < large / small < 4.1


@pytest.mark.parametrize("options", COMBINATIONS, ids=label)
def test_every_parameter_gets_a_finite_gradient(options):
    torch.manual_seed(0)
    model = build_model(ModelConfig(**options, **SMALL))
    x, y = torch.rand(2, 3, 24, 40), (torch.rand(2, 1, 24, 40) > 0.7).float()
    logits = model(x)
    assert torch.isfinite(logits).all()
    DiceBCELoss()(logits, y).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def decoder_inputs(model: torch.nn.Module, x: torch.Tensor) -> tuple[list, list, list]:
    """Encoder A's and B's features and what the decoder received, captured by hooks during one forward pass."""
    seen = {}
    hooks = [model.encoder_a.register_forward_hook(lambda m, i, out: seen.setdefault("a", out)),
             model.encoder_b.register_forward_hook(lambda m, i, out: seen.setdefault("b", out)),
             model.decoder.register_forward_pre_hook(lambda m, args: seen.setdefault("decoder", args[0]))]
    model(x)
    for hook in hooks:
        hook.remove()
    return seen["a"], seen["b"], seen["decoder"]


@pytest.mark.parametrize("block", BLOCKS)
def test_each_fusion_gives_the_decoder_its_documented_features(block):
    torch.manual_seed(0)
    x = torch.rand(1, 3, 32, 32)
    for fusion in FUSIONS:
        model = build_model(ModelConfig(block=block, fusion=fusion, **SMALL)).eval()
        feats_a, feats_b, fused = decoder_inputs(model, x)
        assert len(fused) == SMALL["depth"] + 1
        with torch.no_grad():
            if fusion == "fixed":
                expected = [(a + b) / 2 for a, b in zip(feats_a, feats_b)]
            elif fusion == "concat":
                expected = [F.conv2d(torch.cat([a, b], 1), f.mix.weight)
                            for f, a, b in zip(model.fusion, feats_a, feats_b)]
            elif fusion == "learned":
                expected = [f(a, b) for f, a, b in zip(model.fusion, feats_a, feats_b)]
            else:  # bottleneck: encoder A's skips, the learned FusionBlock at the deepest level only
                expected = [*feats_a[:-1], model.fusion[0](feats_a[-1], feats_b[-1])]
        for got, want in zip(fused, expected):
            torch.testing.assert_close(got, want)


@pytest.mark.parametrize("fusion, scalars", [("learned", 2 * (SMALL["depth"] + 1)), ("bottleneck", 2),
                                             ("fixed", 0), ("concat", 0)])
def test_only_the_learned_fusions_carry_alpha_and_res_scale(fusion, scalars):
    model = build_model(ModelConfig(fusion=fusion, **SMALL))
    names = [n.rsplit(".", 1)[-1] for n, p in model.named_parameters() if p.requires_grad and p.ndim == 0]
    assert len(names) == scalars and set(names) <= {"alpha", "res_scale"}


def test_unet2d_with_context_1_ignores_the_neighbour_slices_and_dual_encoder_uses_them():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 32, 32)
    changed = x.clone()
    changed[:, [0, 2]] = torch.rand(1, 2, 32, 32)
    unet, dual = build_model(ModelConfig(name="unet2d", **SMALL)).eval(), build_model(ModelConfig(**SMALL)).eval()
    torch.testing.assert_close(unet(x), unet(changed))
    assert not torch.allclose(dual(x), dual(changed))


@pytest.mark.parametrize("bad, message", [
    (dict(name="unet3d-typo"), "--model"), (dict(width=0), "--width"), (dict(context=2), "--context"),
    (dict(depth=0), "--depth"), (dict(block="conv"), "--block conv: expected one of residual, idc"),
    (dict(fusion="sum"), "--fusion sum: expected one of"), (dict(block="idc", width=2), "width of 3 or more"),
    (dict(name="unet2d", fusion="concat"), "expected --model dual-encoder")])
def test_bad_model_options_are_one_line_errors(bad, message):
    with pytest.raises(UsageError, match=re.escape(message)) as err:
        ModelConfig(**bad)
    assert "\n" not in str(err.value)


def test_the_cli_refuses_a_fusion_for_unet2d_in_one_line(tiny_store):
    from typer.testing import CliRunner

    from cli import model_app
    from conftest import one_line_error

    result = CliRunner().invoke(model_app, ["train", str(tiny_store), "--model", "unet2d",
                                            "--fusion", "fixed"])
    assert result.exit_code == 2 and "--fusion fixed: expected --model dual-encoder" in one_line_error(result)


def test_block_and_fusion_options_map_to_model_config_fields():
    options = {"model": "dual-encoder", "block": "idc", "fusion": "concat", "epochs": 3}
    model, _, explicit = configs_from_options(options, given=["block", "fusion"])
    assert (model.block, model.fusion) == ("idc", "concat") and explicit == {"block", "fusion"}


def old_run(run_dir: Path) -> Path:
    """A run folder as ctstack wrote it before --block/--fusion: neither key in config.json nor in the checkpoint."""
    from ctmodel.checkpoint import atomic_save, checkpoint_payload
    from ctprep.store import StoreLayout

    torch.manual_seed(0)
    cfg = ModelConfig(**SMALL)
    payload = checkpoint_payload(build_model(cfg), cfg, StoreLayout((-1000.0, 400.0), 32, "float16"), 1, {})
    del payload["model_config"]["block"], payload["model_config"]["fusion"]
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"model": payload["model_config"],
                                                     "train": asdict(TrainConfig())}))
    atomic_save(payload, run_dir / "best.pt")
    return run_dir


def test_a_checkpoint_from_before_block_and_fusion_loads_as_residual_and_learned(tmp_path):
    from ctmodel.checkpoint import load_run

    loaded = load_run(old_run(tmp_path / "run"), "best")
    assert loaded.model_config == ModelConfig(block="residual", fusion="learned", **SMALL)


def test_resume_refuses_a_block_or_fusion_that_conflicts_with_the_run(tmp_path):
    from ctmodel.runfolder import resume_configs

    run_dir = old_run(tmp_path / "run")
    given = ModelConfig(block="idc", **SMALL)
    with pytest.raises(RunError, match="run was started with block='residual', not 'idc'"):
        resume_configs(run_dir, given, TrainConfig(), explicit=frozenset({"block"}))
    with pytest.raises(RunError, match="run was started with fusion='learned', not 'fixed'"):
        resume_configs(run_dir, ModelConfig(fusion="fixed", **SMALL), TrainConfig(), explicit=frozenset({"fusion"}))
    saved, _, _ = resume_configs(run_dir, ModelConfig(**SMALL), TrainConfig(), explicit=frozenset({"block", "fusion"}))
    assert (saved.block, saved.fusion) == ("residual", "learned")  # the defaults, given explicitly, agree
