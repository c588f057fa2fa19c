"""The Trainer's own behaviour: built last from finished parts, its handlers mapping, and
its entry points (train, evaluate, predict, save_checkpoint, resume). Real tiny models,
real digits data, real files."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch
from ignite.engine import Engine
from torch import nn

import ignitrain
from ignitrain import TrainConfig
from ignitrain.handlers.attached import AttachedHandlers
from ignitrain.trainer import (
    Learning,
    RunOutputs,
    RunParts,
    Trainer,
    checkpoint_name,
)
from tests.conftest import make_mlp

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(tmp_path=None, **overrides):
    options = dict(num_epochs=1, batch_size=128, optimizer="SGD", lr=0.05, seed=0)
    if tmp_path is not None:
        options["output_dir"] = str(tmp_path)
    options.update(overrides)
    return TrainConfig(**options)


def _trainer(digits_flat, tmp_path=None, **overrides):
    return ignitrain.create_classification_trainer(
        make_mlp(), _cfg(tmp_path, **overrides), digits_flat.train, digits_flat.val
    )


# -- built last, from finished parts ----------------------------------------------------


def test_a_factory_returns_a_trainer_whose_parts_are_all_there(digits_flat, tmp_path):
    trainer = _trainer(digits_flat, tmp_path)
    assert isinstance(trainer, Trainer)
    assert isinstance(trainer.handlers, AttachedHandlers)
    # what the switchboard made is already on the Trainer when the factory returns
    assert trainer.checkpoints is trainer.handlers["checkpoints"].handler
    assert trainer.history is trainer.checkpointables["history"]
    assert set(trainer.evaluators) == {"val"}
    assert trainer.val_loader is not None and trainer.train_loader is not None
    for name in ("trainer", "model", "optimizer", "optimizer_step", "rng", "epoch_mean_loss"):
        assert name in trainer.checkpointables, name
    assert trainer.checkpointables["trainer"] is trainer.engine
    assert trainer.checkpointables["model"] is trainer.model
    assert trainer.checkpointables["optimizer"] is trainer.optimizer
    assert "Trainer(models=[model], evaluators=['val'], epoch=0)" == repr(trainer)


def test_without_output_dir_there_is_no_checkpoint_handler(digits_flat):
    trainer = _trainer(digits_flat)
    assert trainer.checkpoints is None
    assert "checkpoints" not in trainer.handlers and "rng" in trainer.checkpointables


def test_gan_optimizers_are_public_by_player_and_checkpointed_by_their_own_names():
    torch.manual_seed(0)
    real = torch.randn(64, 2)
    generator = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    discriminator = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 1))
    trainer = ignitrain.create_gan_trainer(
        generator,
        discriminator,
        _cfg(batch_size=32, optimizer="Adam", lr=1e-3, lr_scheduler="cosine"),
        real,
        latent_dim=4,
        fixed_noise_size=0,
    )
    assert set(trainer.optimizers) == {"generator", "discriminator"}
    objects = trainer.checkpointables
    assert objects["generator_optimizer"] is trainer.optimizers["generator"]
    assert objects["discriminator_optimizer"] is trainer.optimizers["discriminator"]
    assert objects["generator"] is trainer.models["generator"]
    assert "fixed_noise" in objects and "generator_step" in objects
    assert "generator_optimizer_lr_schedule" in trainer.handlers
    assert checkpoint_name("generator", trainer.models) == "generator_optimizer"
    assert checkpoint_name("optimizer", {"model": None}) == "optimizer"


def test_parts_are_frozen_and_the_trainer_refuses_anything_else(digits_flat):
    trainer = _trainer(digits_flat)
    engine = trainer.engine
    parts = RunParts(engine, trainer.config, Learning(trainer.models, trainer.optimizers))
    with pytest.raises(dataclasses.FrozenInstanceError):
        parts.engine = Engine(lambda e, b: None)  # type: ignore[misc]
    with pytest.raises(TypeError, match=r"Argument parts=dict is not allowed: expected .*RunParts"):
        Trainer({"engine": engine}, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"Argument outputs=NoneType is not allowed: .*RunOutputs"):
        Trainer(parts, None)  # type: ignore[arg-type]
    outputs = RunOutputs(trainer.history, {}, None, {"trainer": engine}, None, AttachedHandlers())
    held = Trainer(parts, outputs)
    assert held.engine is engine and held.model is trainer.model and held.evaluators == {}
    with pytest.raises(RuntimeError, match="needs an evaluator factory"):
        held.evaluate(digits_flat.val)  # RunParts without steps: no evaluator factory


def test_a_bad_config_is_refused_before_anything_is_built(digits_flat):
    with pytest.raises(TypeError, match="config must be an ignitrain.TrainConfig, got list"):
        ignitrain.create_classification_trainer(make_mlp(), [1], digits_flat.train)
    # a mapping is converted (and checked) once
    trainer = ignitrain.create_classification_trainer(
        make_mlp(), {"num_epochs": 1, "batch_size": 256}, digits_flat.train
    )
    assert trainer.config.batch_size == 256 and trainer.evaluators == {}


# -- entry points -----------------------------------------------------------------------


def test_train_evaluate_predict(digits_flat):
    trainer = _trainer(digits_flat, num_epochs=2)
    history = trainer.train()
    assert history is trainer.history and trainer.engine.state.epoch == 2
    assert len(history["val/accuracy"]) == 2
    metrics = trainer.evaluate(digits_flat.test)
    assert set(metrics) == {"accuracy", "loss"}
    assert all(isinstance(v, float) for v in metrics.values())
    x, y = digits_flat.test.tensors
    logits = trainer.predict(digits_flat.test)
    assert logits.shape == (len(x), 10)
    classes, targets = trainer.predict(digits_flat.test, argmax=True, return_targets=True)
    assert torch.equal(targets, y)
    # evaluate() and predict() agree on the accuracy, computed by hand here
    assert metrics["accuracy"] == pytest.approx((classes == y).float().mean().item())
    with pytest.raises(ValueError, match=r"predict\(ema=True\) needs TrainConfig.ema_decay"):
        trainer.predict(digits_flat.test, ema=True)


def test_train_again_after_the_last_epoch_does_nothing(digits_flat, caplog):
    trainer = _trainer(digits_flat)
    trainer.train()
    weights = [p.detach().clone() for p in trainer.model.parameters()]
    with caplog.at_level(logging.WARNING, logger="ignitrain"):
        trainer.train()
    assert "Training already reached epoch 1 of 1: nothing to do" in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(weights, trainer.model.parameters()))


def test_save_checkpoint_then_resume_into_a_fresh_trainer(digits_flat, tmp_path):
    trainer = _trainer(digits_flat, tmp_path / "a")
    trainer.train()
    path = trainer.save_checkpoint(tmp_path / "by_hand" / "state.pt")
    assert path.is_file()
    extra = trainer.checkpoint_extra()
    assert extra["epoch"] == 1 and extra["iteration"] == trainer.engine.state.iteration
    assert extra["config"]["num_epochs"] == 1 and "model" in extra["model_description"]

    fresh = _trainer(digits_flat, tmp_path / "b")
    assert fresh.resume(path) is fresh
    assert fresh.engine.state.epoch == 1
    assert fresh.engine.state.iteration == trainer.engine.state.iteration
    for a, b in zip(trainer.model.parameters(), fresh.model.parameters()):
        assert torch.equal(a, b)
    assert fresh.history["val/accuracy"] == trainer.history["val/accuracy"]


def test_resume_of_a_missing_file_names_it(digits_flat, tmp_path):
    trainer = _trainer(digits_flat, tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        trainer.resume(tmp_path / "nowhere.pt")


def test_every_handler_is_removable_through_the_mapping(digits_flat, tmp_path):
    trainer = _trainer(digits_flat, tmp_path)
    entry = trainer.handlers["history"]
    assert entry.attached
    entry.detach()
    assert not entry.attached
    for engine, event, fn in entry.events:
        assert not engine.has_event_handler(fn, event)
    with pytest.raises(TypeError):
        trainer.handlers["history"] = entry  # read-only


def test_attach_builds_the_trainer_the_same_way(digits_flat, tmp_path):
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    loader = torch.utils.data.DataLoader(digits_flat.train, batch_size=128)

    def step(engine, batch):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(batch[0]), batch[1])
        loss.backward()
        optimizer.step()
        return loss.item()

    engine = Engine(step)
    attached = ignitrain.attach(
        engine, _cfg(tmp_path), model=model, optimizer=optimizer, train_data=loader
    )
    trainer = attached.trainer
    assert isinstance(trainer, Trainer) and trainer.engine is engine
    assert set(attached) == set(trainer.handlers)
    assert trainer.checkpoints is attached["checkpoints"].handler
    assert trainer.optimizers == {"optimizer": optimizer}
    engine.run(loader, max_epochs=1)
    for where, event, fn in attached["history"].events:
        assert where.has_event_handler(fn, event)
    assert len(trainer.history["train/loss"]) == 1
    with pytest.raises(RuntimeError, match="ignitrain.attach does not have"):
        trainer.evaluate(digits_flat.val)
