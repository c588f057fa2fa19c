"""Tests for ignitrain/resume_rules.py: resume decides about every changed option
(issue 12 item 1). Real trainers, real checkpoints."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import ignitrain
from ignitrain import TrainConfig
from ignitrain.handlers.checkpoint import CheckpointError
from ignitrain.resume_rules import APPLY, REFUSE, RULES, WARN, decide
from tests.conftest import make_mlp

_BASE = dict(
    num_epochs=1,
    batch_size=128,
    optimizer="sgd",
    lr=0.1,
    momentum=0.9,
    progress_bar=False,
    tensorboard=False,
    seed=0,
)


def _trainer(out, digits, model=None, **options):
    config = TrainConfig(output_dir=str(out), **{**_BASE, **options})
    return ignitrain.create_classification_trainer(
        model or make_mlp(), config, digits.train, digits.val
    )


@pytest.fixture
def saved_run(tmp_path, digits_flat):
    out = tmp_path / "run"
    _trainer(out, digits_flat).train()
    return out


def test_every_option_has_a_rule():
    assert set(RULES) == set(TrainConfig.field_names())
    assert {action for action, _ in RULES.values()} == {APPLY, REFUSE, WARN}


def test_decide_classifies_each_difference():
    saved = TrainConfig(optimizer="adam", lr=0.1, seed=0).to_dict()
    now = {**TrainConfig(optimizer="Adam", lr=0.05, seed=1).to_dict(), "resume": "latest"}
    got = {c.option: (c.saved, c.now, c.action) for c in decide(saved, now)}
    assert got == {
        "lr": (0.1, 0.05, APPLY),
        "seed": (0, 1, WARN),
        "resume": (None, "latest", APPLY),
    }  # "adam" and "Adam" name the same optimizer
    unknown = {c.option: c.action for c in decide({"someday": 1}, {})}
    assert unknown == {"someday": WARN}


def test_new_lr_and_weight_decay_are_applied_and_recorded(saved_run, digits_flat):
    trainer = _trainer(
        saved_run, digits_flat, resume="latest", num_epochs=2, lr=0.05, weight_decay=1e-4
    )
    trainer.resume("latest")
    group = trainer.optimizer.param_groups[0]
    # before: the saved param groups brought lr 0.1 and weight_decay 0 back silently
    assert (group["lr"], group["weight_decay"]) == (0.05, 1e-4)
    trainer.train()
    assert trainer.engine.state.epoch == 2
    last = max((saved_run / "checkpoints").glob("checkpoint_last_*.pt"))
    payload = torch.load(last, weights_only=True)
    # the checkpoint's recorded config is what the run used
    assert (payload["config"]["lr"], payload["config"]["weight_decay"]) == (0.05, 1e-4)
    saved_group = payload["optimizer"]["param_groups"][0]
    assert (saved_group["lr"], saved_group["weight_decay"]) == (0.05, 1e-4)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"optimizer": "adam"}, "optimizer: 'sgd' in the checkpoint, 'adam' now"),
        ({"grad_accumulation_steps": 2}, "grad_accumulation_steps: 1 in the checkpoint, 2 now"),
        ({"batch_size": 64}, "batch_size: 128 in the checkpoint, 64 now"),
        ({"lr_scheduler": "cosine"}, "lr_scheduler: None in the checkpoint, 'cosine' now"),
    ],
)
def test_refused_changes_name_option_values_and_file_and_load_nothing(
    saved_run, digits_flat, change, message
):
    trainer = _trainer(saved_run, digits_flat, resume="latest", num_epochs=2, **change)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    with pytest.raises(CheckpointError, match=r"checkpoint_.*\.pt' cannot be resumed") as info:
        trainer.train()
    assert message in str(info.value)
    assert trainer.engine.state.iteration == 0
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))


class OtherNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = make_mlp()

    def forward(self, x):
        return self.body(x)


def test_another_model_class_is_refused(saved_run, digits_flat):
    trainer = _trainer(saved_run, digits_flat, model=OtherNet(), resume="latest", num_epochs=2)
    with pytest.raises(CheckpointError, match=r"model 'model': 'torch.nn.modules.container"):
        trainer.train()


def test_warned_changes_are_named_in_one_warning(saved_run, digits_flat, caplog):
    trainer = _trainer(saved_run, digits_flat, resume="latest", num_epochs=2, seed=7)
    with caplog.at_level(logging.WARNING, logger="ignitrain"):
        trainer.train()
    (record,) = [r for r in caplog.records if "no longer equals" in r.getMessage()]
    assert "seed: 0 in the checkpoint, 7 now" in record.getMessage()
    assert trainer.engine.state.epoch == 2


@pytest.mark.parametrize("now", ["adamw", "sgd"])
def test_another_optimizer_class_from_adam_is_refused_before_any_step(tmp_path, digits_flat, now):
    # before: adam -> adamw resumed silently; adam -> sgd loaded, then the first step
    # crashed with KeyError: 'momentum'
    out = tmp_path / "run"
    _trainer(out, digits_flat, optimizer="adam", momentum=None).train()
    trainer = _trainer(
        out, digits_flat, optimizer=now, momentum=None, resume="latest", num_epochs=2
    )
    with pytest.raises(CheckpointError, match=f"optimizer: 'adam' in the checkpoint, '{now}' now"):
        trainer.train()
    assert trainer.engine.state.iteration == 0


def test_a_checkpoint_with_a_schedule_is_refused_into_a_run_without_one(tmp_path, digits_flat):
    # before: the saved LR schedule state was dropped without a word
    out = tmp_path / "run"
    _trainer(out, digits_flat, lr_scheduler="cosine").train()
    trainer = _trainer(out, digits_flat, resume="latest", num_epochs=2)
    with pytest.raises(CheckpointError, match="lr_scheduler: 'cosine' in the checkpoint, None now"):
        trainer.train()
