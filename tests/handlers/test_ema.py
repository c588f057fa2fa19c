"""EMA weights: Ignite's EMAHandler updated per optimizer step, evaluated, checkpointed,
resumed exactly, under AMP and 2 processes."""

from __future__ import annotations

import json
import os

import pytest
import torch
from ignite.engine import Engine
from torch import nn

import ignitrain
from ignitrain import TrainConfig
from ignitrain.handlers.ema import attach_ema
from tests.conftest import config_maker, make_mlp

pytestmark = pytest.mark.usefixtures("one_thread")


cfg = config_maker(
    num_epochs=3,
    batch_size=64,
    progress_bar=False,
    seed=0,
    lr=0.05,
    optimizer="sgd",
    momentum=0.9,
    ema_decay=0.9,
)


def test_ema_follows_the_formula_per_update():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    engine = Engine(lambda e, b: model.weight.data.add_(1.0))
    ema = attach_ema(engine, model, decay=0.5)
    engine.run([0] * 3, max_epochs=1)
    # weights 1, 2, 3 after each step; ema 0 -> .5 -> 1.25 -> 2.125
    assert ema.ema_model.weight.item() == pytest.approx(2.125)


def test_warmup_starts_at_a_copy_and_updates_only_after_optimizer_steps():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    engine = Engine(lambda e, b: model.weight.data.add_(1.0))
    ema = attach_ema(
        engine, model, decay=0.5, warmup=2, stepped=lambda e: e.state.iteration % 2 == 0
    )
    engine.run([0] * 4, max_epochs=1)
    # updates at iterations 2 (momentum 1: copy -> 2) and 4 (momentum .5: .5*2 + .5*4)
    assert ema.ema_model.weight.item() == pytest.approx(3.0)
    assert ema.state_dict()["event_index"] == 2


def test_swapped_restores_the_trained_weights_even_when_the_block_raises():
    model = make_mlp()
    engine = Engine(lambda e, b: None)
    ema = attach_ema(engine, model, decay=0.9)
    with torch.no_grad():
        ema.ema_model[0].weight.add_(1.0)
    before = model[0].weight.detach().clone()
    averaged = ema.ema_model[0].weight.detach().clone()
    with pytest.raises(RuntimeError, match="boom"):
        with ema.swapped():
            assert torch.equal(model[0].weight, averaged)
            raise RuntimeError("boom")
    assert torch.equal(model[0].weight, before)
    assert torch.equal(ema.ema_model[0].weight, averaged)


def test_ema_metrics_beside_val_and_best_chosen_on_them(digits_flat, tmp_path):
    config = cfg(output_dir=str(tmp_path), best_metric="ema/val/accuracy")
    trainer = ignitrain.create_classification_trainer(
        make_mlp(), config, digits_flat.train, digits_flat.val
    )
    history = trainer.train()
    assert history.steps("ema/val/accuracy") == history.steps("val/accuracy") == [1, 2, 3]
    assert history["ema/val/accuracy"] != history["val/accuracy"]
    best = max(history["ema/val/accuracy"])
    assert trainer.checkpoints.store.best_scores() == [pytest.approx(best)]
    # the EMA weights are in every checkpoint; evaluating them reproduces the history
    from ignitrain.handlers.checkpoint import safe_load

    last = sorted((tmp_path / "checkpoints").glob("checkpoint_last_*.pt"))[-1]
    state = safe_load(last)
    states = state.get("state", state)
    model = make_mlp()
    model.load_state_dict(states["ema"]["ema_model"])
    model.eval()
    x, y = digits_flat.val.tensors
    with torch.no_grad():
        acc = (model(x).argmax(-1) == y).float().mean().item()
    assert acc == pytest.approx(history.latest("ema/val/accuracy"))
    # predict(ema=True) uses the EMA weights and leaves the trained ones in place
    with torch.no_grad():
        torch.testing.assert_close(trainer.predict(x, ema=True), model(x))
        assert not torch.allclose(trainer.predict(x), model(x))


def _ema_run(data, out, epochs, resume=None, **kw):
    config = cfg(num_epochs=epochs, output_dir=str(out), resume=resume, deterministic=True,
                 ema_warmup=20, grad_accumulation_steps=2, **kw)  # fmt: skip
    trainer = ignitrain.create_classification_trainer(make_mlp(), config, data.train, data.val)
    history = trainer.train()
    return trainer.checkpointables["ema"].ema_model.state_dict(), history


def test_resume_is_exact_for_the_ema_weights_and_warmup(digits_flat, tmp_path):
    full, full_history = _ema_run(digits_flat, tmp_path / "full", 4)
    _ema_run(digits_flat, tmp_path / "part", 2)
    resumed, history = _ema_run(digits_flat, tmp_path / "part", 4, resume="latest")
    for key in full:
        assert torch.equal(full[key], resumed[key]), key
    assert history["ema/val/accuracy"] == full_history["ema/val/accuracy"]


def test_amp_bf16(digits_flat):
    trainer = ignitrain.create_classification_trainer(
        make_mlp(), cfg(num_epochs=1, amp="bf16", device="cpu"), digits_flat.train, digits_flat.val
    )
    history = trainer.train()
    assert 0 < history.latest("ema/val/accuracy") <= 1
    ema = trainer.checkpointables["ema"].ema_model
    assert all(p.dtype == torch.float32 for p in ema.parameters())


def test_argument_validation():
    engine, model = Engine(lambda e, b: None), make_mlp()
    with pytest.raises(ValueError, match="decay=1.5"):
        attach_ema(engine, model, decay=1.5)
    with pytest.raises(ValueError, match="warmup=-1"):
        attach_ema(engine, model, decay=0.9, warmup=-1)
    with pytest.raises(ValueError, match="ema_decay=0"):
        TrainConfig(ema_decay=0)
    with pytest.raises(TypeError, match="ema_warmup"):
        TrainConfig(ema_warmup=1.5)
    plain = ignitrain.create_classification_trainer(
        make_mlp(), TrainConfig(progress_bar=False), [(torch.zeros(2, 64), torch.zeros(2).long())]
    )
    with pytest.raises(ValueError, match="needs TrainConfig.ema_decay"):
        plain.predict(torch.zeros(2, 64), ema=True)


@pytest.mark.slow
def test_two_processes_keep_equal_ema_weights(tmp_path):
    from tests._predict_workers import ema_worker

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ignitrain.launch(ema_worker, str(tmp_path), backend="gloo", nproc_per_node=2)
    flats = [torch.load(tmp_path / f"ema{r}.pt", weights_only=True) for r in range(2)]
    assert torch.equal(flats[0], flats[1])
    records = [json.loads((tmp_path / f"ema_rank{r}.json").read_text()) for r in range(2)]
    assert records[0]["ema_acc"] == records[1]["ema_acc"] and len(records[0]["ema_acc"]) == 2
