"""FSDP2 sharding (ignitrain/fsdp.py), its config block and the step features under it.

Multi-process tests spawn 2 real gloo processes with ``ignitrain.launch``; the workers
live in tests/_fsdp_workers.py so the spawned interpreters can import them.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from ignitrain import TrainConfig
from ignitrain.config import ConfigError
from ignitrain.distributed import launch
from ignitrain.fsdp import FSDPOptions, block_modules, is_fsdp, set_gradient_sync, shard_model

sys.path.insert(0, str(Path(__file__).parent))
import _fsdp_workers as workers  # noqa: E402

# -- configuration ---------------------------------------------------------------------


def test_config_parallel_defaults_and_choices():
    cfg = TrainConfig()
    assert (cfg.parallel, cfg.fsdp_wrap, cfg.fsdp_cpu_offload) == ("auto", "auto", False)
    assert TrainConfig(parallel="FSDP").parallel == "fsdp"
    assert TrainConfig(parallel="fsdp", fsdp_wrap="GPT2Block").fsdp_wrap == ["GPT2Block"]
    assert TrainConfig(parallel="fsdp", fsdp_wrap=1000).fsdp_wrap == 1000
    assert TrainConfig.from_dict(TrainConfig(parallel="fsdp").to_dict()).parallel == "fsdp"


def test_config_parallel_validation():
    with pytest.raises(ConfigError, match=r"parallel='fdsp'.*Did you mean 'fsdp'"):
        TrainConfig(parallel="fdsp")
    with pytest.raises(TypeError, match=r"parallel=2 is not allowed"):
        TrainConfig(parallel=2)
    with pytest.raises(ConfigError, match=r"fsdp_wrap=0 is not allowed: expected 'auto'"):
        TrainConfig(parallel="fsdp", fsdp_wrap=0)
    with pytest.raises(TypeError, match=r"fsdp_wrap=\[1\] is not allowed"):
        TrainConfig(parallel="fsdp", fsdp_wrap=[1])
    with pytest.raises(TypeError, match=r"fsdp_cpu_offload='yes' is not allowed"):
        TrainConfig(parallel="fsdp", fsdp_cpu_offload="yes")
    with pytest.raises(ConfigError, match=r"only take effect with parallel='fsdp'"):
        TrainConfig(fsdp_cpu_offload=True)


def test_options_from_config_map_bf16_to_mixed_precision():
    assert FSDPOptions.from_config(TrainConfig(amp="bf16")).param_dtype is torch.bfloat16
    assert FSDPOptions.from_config(TrainConfig(amp=False)).param_dtype is None
    opts = FSDPOptions.from_config(
        TrainConfig(parallel="fsdp", fsdp_wrap=["Linear"], fsdp_cpu_offload=True)
    )
    assert (opts.wrap, opts.cpu_offload) == (("Linear",), True)
    with pytest.raises(ValueError, match=r"FSDPOptions.wrap=-1 is not allowed"):
        FSDPOptions(wrap=-1)
    with pytest.raises(TypeError, match=r"param_dtype='bf16' is not allowed"):
        FSDPOptions(param_dtype="bf16")


# -- the wrap policy ----------------------------------------------------------------------


class GPT2Block(nn.Module):  # Hugging Face style name
    def __init__(self):
        super().__init__()
        self.ln = nn.LayerNorm(8)
        self.mlp = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 8))

    def forward(self, x):
        return x + self.mlp(self.ln(x))


class TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.blocks = nn.ModuleList([GPT2Block(), GPT2Block()])
        self.final_norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 50)


def test_default_policy_wraps_hf_blocks_not_their_insides():
    model = TinyLM()
    blocks = block_modules(model)
    assert blocks == list(model.blocks)  # LayerNorm is no block; the inner Sequential's
    # children are inside a block already


def test_default_policy_wraps_torch_transformer_layers_and_sequential_children():
    enc = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(8, 2, 16, batch_first=True),
        num_layers=3,
        enable_nested_tensor=False,
    )
    assert block_modules(enc) == list(enc.layers)
    seq = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    assert block_modules(seq) == [seq[0], seq[2]]  # ReLU has no parameters


def test_policy_by_class_name_and_by_parameter_count():
    model = TinyLM()
    assert block_modules(model, ["Linear"]) == [
        m for m in model.modules() if isinstance(m, nn.Linear)
    ]
    # >= 560 parameters: the smallest modules reaching it (a block's mlp has
    # 288+264=552, the block 16+552=568; the head 450; the embedding 400)
    assert block_modules(model, 560) == list(model.blocks)
    assert block_modules(model, 500) == [b.mlp for b in model.blocks]
    with pytest.raises(ValueError, match=r"names module classes \['LlamaDecoderLayer'\]"):
        block_modules(model, ["LlamaDecoderLayer"])


@pytest.mark.slow
def test_cpu_offload_on_cpu_warns_and_trains(tmp_path):
    launch(workers.offload_worker, str(tmp_path), backend="gloo", nproc_per_node=2)
    rec = json.loads((tmp_path / "offload.json").read_text())
    assert rec["finite"] and any("has no effect" in w for w in rec["warnings"])


def test_shard_model_needs_a_process_group():
    with pytest.raises(RuntimeError, match=r"parallel='fsdp' needs a process group"):
        shard_model(nn.Linear(2, 2))
    with pytest.raises(TypeError, match=r"model must be a torch.nn.Module"):
        shard_model("model")


def test_gradient_sync_is_a_no_op_on_plain_modules():
    model = nn.Linear(2, 2)
    set_gradient_sync([model], False)  # nothing to set: must not fail
    assert not is_fsdp(model)


def test_single_process_fsdp_config_trains_like_auto(digits_flat):
    # without a process group parallel="fsdp" changes nothing: one process holds it all
    import ignitrain
    from tests.conftest import make_mlp

    train, val = digits_flat.train, digits_flat.val
    losses = []
    for parallel in ("auto", "fsdp"):
        cfg = TrainConfig(
            num_epochs=1, batch_size=64, progress_bar=False, tensorboard=False, parallel=parallel
        )
        t = ignitrain.create_classification_trainer(make_mlp(), cfg, train, val)
        t.train()
        losses.append(t.history["train/loss"])
    assert losses[0] == losses[1]


# -- two real processes ------------------------------------------------------------------


@pytest.mark.slow
def test_fsdp_training_matches_ddp_loss_curve(tmp_path):
    launch(workers.trainer_curve_worker, str(tmp_path), backend="gloo", nproc_per_node=2)
    curves = json.loads((tmp_path / "curves.json").read_text())
    ddp, fsdp = curves["ddp"], curves["fsdp"]
    assert curves["fsdp"]["fsdp"].startswith("FSDP")  # the model really was sharded
    assert len(ddp["loss"]) == len(fsdp["loss"]) > 4
    assert ddp["loss"][0] != ddp["loss"][-1]
    torch.testing.assert_close(
        torch.tensor(fsdp["loss"]), torch.tensor(ddp["loss"]), rtol=1e-4, atol=1e-5
    )
    torch.testing.assert_close(
        torch.tensor(fsdp["val"]), torch.tensor(ddp["val"]), rtol=1e-4, atol=1e-5
    )


@pytest.mark.slow
def test_step_features_under_fsdp(tmp_path):
    launch(workers.step_features_worker, str(tmp_path), backend="gloo", nproc_per_node=2)
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rec in records:
        # the total norm over sharded gradients is the unsharded norm, and clipping uses it
        assert rec["norm"] == pytest.approx(rec["ref_norm"], rel=1e-5)
        assert rec["clipped_norm"] == pytest.approx(1e-3, rel=1e-4)
        # no reduce-scatter after the first micro-batch: the sharded grads are not set yet
        assert rec["grads_after_first"] == [False] * 6
        assert rec["accum_max_diff"] < 1e-6
        assert any(
            "middle of an accumulation group under FSDP" in w for w in rec["mid_group_warning"]
        )
        # rank 1's NaN stops rank 0 too, before any update
        assert rec["stepped"] is False
        assert rec["stop_reason"] == "non_finite_loss"
        assert rec["should_terminate"] is True
        # bf16 through FSDP2's MixedPrecisionPolicy: the master shards stay fp32
        assert rec["bf16_out_dtype"] == "torch.bfloat16"
        assert rec["bf16_param_dtypes"] == rec["bf16_grad_dtypes"] == ["torch.float32"]


@pytest.mark.slow
def test_torch_compile_of_a_sharded_model_trains_like_eager(tmp_path):
    launch(workers.compile_worker, str(tmp_path), backend="gloo", nproc_per_node=2)
    for rank in (0, 1):
        losses = json.loads((tmp_path / f"compile{rank}.json").read_text())
        assert len(losses["compiled"]) == 3
        torch.testing.assert_close(losses["compiled"], losses["eager"], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_every_flavor_trains_under_fsdp(tmp_path):
    launch(workers.flavors_worker, str(tmp_path), backend="gloo", nproc_per_node=2)
    for rank in (0, 1):
        results = json.loads((tmp_path / f"flavors{rank}.json").read_text())
        assert results == {
            name: {"ok": True, "sharded": True}
            for name in ("classification", "autoencoder", "gan_bce", "generic")
        }


@pytest.mark.slow
def test_seq2seq_flavor_trains_under_fsdp(tmp_path):
    launch(workers.seq2seq_worker, str(tmp_path), backend="gloo", nproc_per_node=2)
    results = [json.loads((tmp_path / f"seq2seq{r}.json").read_text()) for r in (0, 1)]
    assert results[0] == results[1]  # the loss is averaged over ranks: the same curve
    result = results[0]
    assert result["sharded"]
    losses = result["loss"]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.7 * losses[0], losses  # it learns the reversal
    assert "val/token_accuracy" in result["names"]


def test_wgan_gp_is_refused_under_fsdp_at_factory_time():
    import ignitrain

    def mlp(i, o):
        return nn.Sequential(nn.Linear(i, 8), nn.ReLU(), nn.Linear(8, o))

    data = torch.utils.data.TensorDataset(torch.randn(16, 3))
    config = TrainConfig(parallel="fsdp", progress_bar=False, num_epochs=1)
    with pytest.raises(ValueError, match=r"parallel='fsdp'.*loss='wgan-gp'.*'hinge' or 'bce'"):
        ignitrain.create_gan_trainer(mlp(2, 3), mlp(3, 1), config, data, latent_dim=2,
                                     loss="wgan-gp")  # fmt: skip
    with pytest.raises(ValueError, match=r"parallel='ddp'"):
        ignitrain.create_gan_trainer(mlp(2, 3), mlp(3, 1), config, data, latent_dim=2,
                                     loss="wgan_gp")  # fmt: skip
    # the other GAN losses, and WGAN-GP without FSDP, are built
    ignitrain.create_gan_trainer(mlp(2, 3), mlp(3, 1), config, data, latent_dim=2, loss="hinge")
    ignitrain.create_gan_trainer(
        mlp(2, 3), mlp(3, 1), TrainConfig(progress_bar=False, num_epochs=1), data,
        latent_dim=2, loss="wgan-gp",
    )  # fmt: skip
