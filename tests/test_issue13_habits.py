"""Habits users bring from other trainers: aliases, metric names, callbacks, loss specs,
ranking by a training metric, seeding, visible output. Real tiny models and engines."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from torch import nn

import ignitrain
from ignitrain import TrainConfig, datasets
from ignitrain.aliases import ALIASES, alias_hint
from ignitrain.callbacks import EpochCallbacks, check_callbacks
from ignitrain.metric_names import canonical_metric
from tests.conftest import config_maker

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits():
    return datasets.digits(seed=0, image=False)


def _mlp():
    return nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


_cfg = config_maker(num_epochs=2, lr=0.01, batch_size=64, tensorboard=False, verbose=False)


# -- aliases ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alias", "field"),
    [
        ("learning_rate", "lr"),
        ("loss_function", "loss"),
        ("optim_function", "optimizer"),
        ("save_freq", "save_every"),
        ("epochs", "num_epochs"),
        ("n_epochs", "num_epochs"),
        ("train_batch_size", "batch_size"),
        ("best_model_metric", "best_metric"),
        ("create_scheduler_fn", "lr_scheduler"),
        ("save_interval", "save_every"),
    ],
)
def test_a_reference_trainer_option_name_is_refused_naming_our_field(alias, field):
    with pytest.raises(
        TypeError, match=rf"unknown option '{alias}'\. ignitrain calls it '{field}'"
    ):
        TrainConfig(**{alias: 1})
    with pytest.raises(TypeError, match=f"calls it '{field}'"):
        TrainConfig.from_dict({alias: 1})


def test_every_alias_names_a_real_field_and_none_is_a_field():
    fields = set(TrainConfig.field_names())
    assert {field for field, _ in ALIASES.values()} <= fields
    assert not set(ALIASES) & fields
    assert "epochs" in alias_hint("epochs") and alias_hint("no_such_option") is None
    # a typo of our own names still gets "did you mean"
    with pytest.raises(TypeError, match="Did you mean 'num_epochs'"):
        TrainConfig(num_epoch=3)


# -- metric names -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("eval_loss", "loss"),
        ("val/loss", "loss"),
        ("val_loss", "loss"),
        ("validation_accuracy", "accuracy"),
        ("train_loss", "train/loss"),
        ("train/loss", "train/loss"),
        ("accuracy", "accuracy"),
        ("val", "val"),
    ],
)
def test_metric_names_have_one_spelling(given, canonical):
    assert canonical_metric(given) == canonical


def test_the_config_normalises_best_metric_and_stop_when_once():
    cfg = TrainConfig(best_metric="eval_loss", stop_when={"val/accuracy": 0.9})
    assert cfg.best_metric == "loss" and cfg.stop_when == {"accuracy": 0.9}
    with pytest.raises(TypeError, match="expected a metric name"):
        canonical_metric(3)
    with pytest.raises(ValueError, match="expected a metric name"):
        canonical_metric("  ")


# -- callbacks --------------------------------------------------------------------------------


def recorded_callback(trainer, epoch, metrics):  # importable by path from a job file
    trainer.history.meta.setdefault("seen", []).append(epoch)


def test_callbacks_get_trainer_epoch_and_the_epochs_metrics(digits):
    calls = []
    cfg = _cfg(callbacks=[lambda t, e, m: calls.append((t, e, dict(m)))])
    trainer = ignitrain.create_classification_trainer(_mlp(), cfg, digits.train, digits.val)
    trainer.train()
    assert [e for _, e, _ in calls] == [1, 2] and all(t is trainer for t, _, _ in calls)
    assert calls[-1][2]["val/accuracy"] == trainer.history.latest("val/accuracy")
    assert "train/loss" in calls[-1][2]
    # a plain Ignite handler on the training engine: visible and removable
    handler = next(
        h
        for h, *_ in trainer.engine._event_handlers[Events.EPOCH_COMPLETED]
        if isinstance(h, EpochCallbacks)
    )
    assert trainer.engine.has_event_handler(handler, Events.EPOCH_COMPLETED)


def test_callbacks_by_import_path_and_bad_entries(digits):
    cfg = _cfg(callbacks=["tests.test_issue13_habits.recorded_callback"])
    trainer = ignitrain.create_classification_trainer(_mlp(), cfg, digits.train)
    trainer.train()
    assert trainer.history.meta["seen"] == [1, 2]
    assert check_callbacks(recorded_callback) == [recorded_callback]
    with pytest.raises(TypeError, match="callbacks contains 3"):
        TrainConfig(callbacks=[3])
    with pytest.raises(TypeError, match="expected a list of functions"):
        TrainConfig(callbacks={"a": 1})


# -- loss specs -------------------------------------------------------------------------------


def test_a_loss_spec_with_arguments_trains_and_is_recorded(digits, tmp_path):
    spec = {"name": "CrossEntropyLoss", "label_smoothing": 0.1}
    cfg = _cfg(loss=spec, output_dir=str(tmp_path))
    trainer = ignitrain.create_classification_trainer(_mlp(), cfg, digits.train, digits.val)
    trainer.train()
    payload = ignitrain.load_checkpoint(tmp_path)
    assert payload["config"]["loss"] == spec
    # a loss module's arguments are kept too (they were dropped before)
    module = TrainConfig(loss=nn.CrossEntropyLoss(label_smoothing=0.2, ignore_index=3))
    assert module.to_dict()["loss"] == {
        "name": "CrossEntropyLoss",
        "ignore_index": 3,
        "label_smoothing": 0.2,
    }
    assert TrainConfig.from_dict(cfg.to_dict()).loss == spec  # round trip
    with pytest.raises(ValueError, match="CrossEntropyLoss has no argument 'smoothing'"):
        TrainConfig(loss={"name": "ce", "smoothing": 0.1})
    with pytest.raises(ValueError, match="a loss spec needs a 'name'"):
        TrainConfig(loss={"label_smoothing": 0.1})


# -- best and early stopping by a training metric ---------------------------------------------


def test_best_checkpoint_and_early_stopping_by_train_loss_without_validation(digits, tmp_path):
    cfg = _cfg(
        num_epochs=30,
        lr=1e-6,  # hardly learns: the training loss stops improving by min_delta
        best_metric="train_loss",
        early_stopping_patience=2,
        early_stopping_min_delta=0.05,
        output_dir=str(tmp_path),
    )
    trainer = ignitrain.create_classification_trainer(_mlp(), cfg, digits.train)
    trainer.train()
    assert trainer.history.meta["stop_reason"] == "early_stopping"
    assert trainer.engine.state.epoch == 3
    best = sorted((tmp_path / "checkpoints").glob("checkpoint_best_train-loss=*.pt"))
    assert len(best) == 1
    without = _cfg(early_stopping_patience=2)
    with pytest.raises(ValueError, match="best_metric='train/loss'"):
        ignitrain.create_classification_trainer(_mlp(), without, digits.train)


# -- seeding ----------------------------------------------------------------------------------


def test_seed_everything_repeats_and_validates():
    ignitrain.seed_everything(3)
    a = torch.rand(3)
    ignitrain.seed_everything(3)
    assert torch.equal(a, torch.rand(3))
    with pytest.raises(TypeError, match="seed=1.5 is not allowed"):
        ignitrain.seed_everything(1.5)
    with pytest.raises(ValueError, match="seed=-1 is not allowed"):
        ignitrain.seed_everything(-1)


def test_a_model_factory_is_built_after_seeding(digits):
    weights = []
    for _ in range(2):
        torch.manual_seed(torch.seed())  # a different global stream each time
        trainer = ignitrain.create_classification_trainer(_mlp, _cfg(seed=5), digits.train)
        weights.append(trainer.model[0].weight.detach().clone())
    assert torch.equal(weights[0], weights[1])


# -- visible by default -----------------------------------------------------------------------

_SCRIPT = """
import torch
from torch import nn
import ignitrain
from ignitrain import TrainConfig, datasets
splits = datasets.digits(seed=0, image=False)
cfg = TrainConfig(num_epochs=2, batch_size=64, tensorboard=False, verbose={verbose})
model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
ignitrain.create_classification_trainer(model, cfg, splits.train, splits.val).train()
"""


@pytest.mark.slow
@pytest.mark.parametrize("verbose", [True, False])
def test_epoch_lines_and_final_line_print_without_logging_setup(verbose):
    script = textwrap.dedent(_SCRIPT.format(verbose=verbose))
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    if verbose:
        assert "Epoch 1/2 | val/accuracy" in result.stderr and "Epoch 2/2" in result.stderr
        assert "Finished 2 epochs" in result.stderr and "stopped: completed" in result.stderr
        # stderr is a pipe, not a terminal: no progress bar
        assert "it/s" not in result.stderr and "\r" not in result.stderr
    else:
        assert result.stderr == ""
    assert result.stdout == ""


@pytest.mark.slow
def test_a_users_own_logging_setup_decides_what_is_shown():
    script = "import logging\nlogging.basicConfig(level=logging.WARNING)\n" + textwrap.dedent(
        _SCRIPT.format(verbose=True)
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "Epoch 1/2" not in result.stderr and "Finished" not in result.stderr
