"""Step features through a flavor factory: NaN stop, bf16, accumulation, compile, channels_last."""

import logging
import math

import pytest
import torch
from torch import nn

import ignitrain
from ignitrain import TrainConfig
from ignitrain.handlers.checkpoint import CheckpointStore, load_checkpoint
from tests.conftest import make_mlp


class NaNAfter(nn.Module):
    """An MLP whose output turns NaN from the ``n``-th training forward on."""

    def __init__(self, n: int):
        super().__init__()
        self.net = make_mlp()
        self.n = n
        self.calls = 0

    def forward(self, x):
        out = self.net(x)
        if self.training:
            self.calls += 1
            if self.calls >= self.n:
                out = out * math.nan
        return out


def test_non_finite_loss_stops_records_the_reason_and_checkpoints_finite_weights(
    digits_flat, tmp_path, caplog
):
    model = NaNAfter(n=25)  # 20 iterations per epoch: NaN in epoch 2
    cfg = TrainConfig(num_epochs=4, batch_size=64, output_dir=str(tmp_path), progress_bar=False)
    trainer = ignitrain.create_classification_trainer(
        model, cfg, digits_flat.train, digits_flat.val
    )
    with caplog.at_level(logging.INFO, logger="ignitrain"):
        history = trainer.train()
    state = trainer.engine.state
    assert state.stop_reason == "non_finite_loss" and state.iteration == 25
    assert history.meta["stop_reason"] == "non_finite_loss"
    assert "non_finite_loss" in caplog.text
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(math.isfinite(v) for v in history["train/batch_loss"])
    latest = CheckpointStore(tmp_path / "checkpoints").latest_path()
    saved = load_checkpoint(latest)["model"]
    assert all(torch.isfinite(v).all() for v in saved.values())
    assert ignitrain.History.load(tmp_path).meta["stop_reason"] == "non_finite_loss"


def test_bf16_autocast_trains_and_logs_float_losses(digits_flat):
    cfg = TrainConfig(num_epochs=3, batch_size=64, amp="bf16", optimizer="adam", lr=1e-2)
    cfg = cfg.replace(progress_bar=False)
    trainer = ignitrain.create_classification_trainer(
        make_mlp(), cfg, digits_flat.train, digits_flat.val
    )
    history = trainer.train()
    assert history["train/loss"][-1] < history["train/loss"][0]
    assert history["val/accuracy"][-1] > 0.85
    assert next(trainer.model.parameters()).dtype == torch.float32  # weights stay fp32


def test_accumulation_through_the_factory_matches_a_big_batch(digits_flat):
    def run(batch_size, accumulation):
        cfg = TrainConfig(
            num_epochs=1,
            batch_size=batch_size,
            grad_accumulation_steps=accumulation,
            shuffle=False,
            max_steps=None,
            progress_bar=False,
            seed=0,
        )
        model = make_mlp(dropout=0.0)
        ignitrain.create_classification_trainer(model, cfg, data).train()
        return model

    # 78 groups of 4 micro-batches of 4 against 78 batches of 16, over the same samples
    data = torch.utils.data.Subset(digits_flat.train, range(78 * 16))
    small, big = run(4, 4), run(16, 1)
    for a, b in zip(small.parameters(), big.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.head = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).flatten(1))


def test_channels_last_cnn_trains():
    splits = ignitrain.datasets.digits(seed=0, image=True)
    cfg = TrainConfig(num_epochs=2, batch_size=64, channels_last=True, progress_bar=False)
    trainer = ignitrain.create_classification_trainer(SmallCNN(), cfg, splits.train, splits.val)
    assert trainer.model.conv.weight.is_contiguous(memory_format=torch.channels_last)
    history = trainer.train()
    assert history["val/accuracy"][-1] > 0.8


@pytest.mark.slow  # inductor compiles C++ on the CPU: ~20 s
def test_compiled_model_trains_and_checkpoints_without_the_compile_prefix(digits_flat, tmp_path):
    cfg = TrainConfig(
        num_epochs=1, batch_size=64, compile=True, output_dir=str(tmp_path), progress_bar=False
    )
    model = make_mlp()
    trainer = ignitrain.create_classification_trainer(model, cfg, digits_flat.train)
    history = trainer.train()
    assert math.isfinite(history["train/loss"][-1])
    latest = CheckpointStore(tmp_path / "checkpoints").latest_path()
    fresh = make_mlp(seed=1)
    load_checkpoint(latest, model=fresh)  # plain module: no "_orig_mod." keys
    for a, b in zip(fresh.parameters(), model.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(amp="fp8"), "amp"),
        (dict(grad_accumulation_steps=0), "grad_accumulation_steps"),
        (dict(max_grad_norm=-1.0), "max_grad_norm"),
    ],
)
def test_bad_step_options_name_the_field(options, match):
    with pytest.raises((TypeError, ValueError), match=match):
        TrainConfig(**options)
