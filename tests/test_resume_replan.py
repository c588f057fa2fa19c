"""Tests for ignitrain/resume_rules.py beyond the option table (issue 12 item 1): the
flavor and the epoch length recorded in a checkpoint, and the explicit batch-size
override ``TrainConfig.resume_allow`` that re-plans the epoch. Real trainers, real
checkpoints, real loaders."""

from __future__ import annotations

import logging

import pytest
import torch
from ignite.engine import Events
from torch.utils.data import DataLoader, TensorDataset

import ignitrain
from ignitrain import TrainConfig
from ignitrain.errors import CheckpointError, ConfigError
from ignitrain.resume_rules import OVERRIDABLE, check_resume_allow
from tests.conftest import make_mlp

pytestmark = pytest.mark.usefixtures("one_thread")

_BASE = dict(
    num_epochs=1,
    batch_size=128,
    optimizer="sgd",
    lr=0.1,
    progress_bar=False,
    tensorboard=False,
    seed=0,
    log_every=1000,
)


def _indexed(dataset: TensorDataset) -> TensorDataset:
    """The dataset with each sample's index in its last feature (to see the order)."""
    x, y = dataset.tensors
    x = x.clone()
    x[:, -1] = torch.arange(len(x), dtype=x.dtype)
    return TensorDataset(x, y)


def _classifier(out, train, val=None, **options):
    config = TrainConfig(output_dir=str(out), **{**_BASE, **options})
    return ignitrain.create_classification_trainer(make_mlp(), config, train, val)


def _seen_by_epoch(trainer) -> dict[int, list[int]]:
    seen: dict[int, list[int]] = {}

    @trainer.engine.on(Events.ITERATION_STARTED)
    def record(engine):
        seen.setdefault(engine.state.epoch, []).extend(
            int(i) for i in engine.state.batch[0][:, -1].tolist()
        )

    return seen


def test_a_regression_checkpoint_does_not_resume_into_a_classification_trainer(
    tmp_path, digits_flat
):
    out = tmp_path / "run"
    x, y = digits_flat.train.tensors
    targets = torch.nn.functional.one_hot(y, 10).float()
    config = TrainConfig(output_dir=str(out), **_BASE)
    regression = ignitrain.create_regression_trainer(make_mlp(), config, TensorDataset(x, targets))
    regression.train()
    last = max((out / "checkpoints").glob("checkpoint_last_*.pt"))
    assert torch.load(last, weights_only=True)["flavor"] == "regression"
    # before: same model class, so it loaded and trained on as a classifier
    trainer = _classifier(out, digits_flat.train, resume="latest", num_epochs=2)
    refused = "flavor: 'regression' in the checkpoint, 'classification' now"
    with pytest.raises(CheckpointError, match=refused) as info:
        trainer.train()
    assert "checkpoint_last_" in str(info.value)
    assert trainer.engine.state.iteration == 0


def test_a_checkpoint_without_a_flavor_record_resumes_unchecked(tmp_path, digits_flat):
    out = tmp_path / "run"
    _classifier(out, digits_flat.train).train()
    last = max((out / "checkpoints").glob("checkpoint_last_*.pt"))
    payload = torch.load(last, weights_only=True)
    del payload["flavor"]  # as ignitrain wrote it before the record
    torch.save(payload, last)
    trainer = _classifier(out, digits_flat.train, resume=str(last), num_epochs=2)
    trainer.train()
    assert trainer.engine.state.epoch == 2


def test_a_new_batch_size_is_refused_without_the_override_naming_the_epoch_length(
    tmp_path, digits_flat
):
    out = tmp_path / "run"
    _classifier(out, digits_flat.train).train()
    trainer = _classifier(out, digits_flat.train, resume="latest", num_epochs=2, batch_size=64)
    with pytest.raises(CheckpointError) as info:
        trainer.train()
    message = str(info.value)
    assert "batch_size: 128 in the checkpoint, 64 now" in message
    assert "resume_allow=['batch_size']" in message
    assert "epoch length (batches per epoch): 10 in the checkpoint, 20 now" in message


def test_a_loader_of_another_length_is_refused_even_with_the_same_config(tmp_path, digits_flat):
    # before: Ignite kept the saved epoch_length, cutting every epoch of the new loader
    out = tmp_path / "run"
    loader = DataLoader(digits_flat.train, batch_size=128)
    _classifier(out, loader).train()
    smaller = DataLoader(digits_flat.train, batch_size=64)
    trainer = _classifier(out, smaller, resume="latest", num_epochs=2)
    with pytest.raises(CheckpointError, match=r"epoch length .*: 10 in the checkpoint, 20 now"):
        trainer.train()


def test_batch_size_override_at_an_epoch_end_continues_exactly(tmp_path, digits_flat, caplog):
    train = _indexed(digits_flat.train)
    out = tmp_path / "run"
    _classifier(out, train).train()  # one epoch of batch 128: 10 iterations
    resumed = _classifier(
        out, train, resume="latest", num_epochs=2, batch_size=64, resume_allow=["batch_size"]
    )
    seen = _seen_by_epoch(resumed)
    with caplog.at_level(logging.WARNING, logger="ignitrain"):
        resumed.train()
    state = resumed.engine.state
    assert (state.epoch, state.epoch_length, state.iteration) == (2, 20, 40)
    (record,) = [r for r in caplog.records if "re-plans the epoch" in r.getMessage()]
    assert "saved iteration 10 becomes 20" in record.getMessage()
    assert "restarts" not in record.getMessage()
    # epoch 2 in batches of 64: every sample once, in the order of an uninterrupted run
    reference = _classifier(tmp_path / "ref", train, num_epochs=2, batch_size=64)
    expected = _seen_by_epoch(reference)
    reference.train()
    assert seen[2] == expected[2]
    assert sorted(seen[2]) == list(range(len(train)))
    # the checkpoint written after the resume records the batch size the run used
    last = max((out / "checkpoints").glob("checkpoint_last_*.pt"))
    payload = torch.load(last, weights_only=True)
    assert payload["config"]["batch_size"] == 64 and payload["trainer"]["epoch_length"] == 20


def test_batch_size_override_mid_epoch_restarts_the_epoch_and_says_so(
    tmp_path, digits_flat, caplog
):
    train = _indexed(digits_flat.train)
    out = tmp_path / "run"
    _classifier(out, train, max_steps=3).train()  # stops after 3 of the epoch's 10 batches
    resumed = _classifier(out, train, resume="latest", batch_size=64, resume_allow=["batch_size"])
    seen = _seen_by_epoch(resumed)
    with caplog.at_level(logging.WARNING, logger="ignitrain"):
        resumed.train()
    (record,) = [r for r in caplog.records if "re-plans the epoch" in r.getMessage()]
    assert "saved iteration 3 becomes 0" in record.getMessage()
    assert "restarts from its first sample (3 iteration(s) of it are trained again)" in (
        record.getMessage()
    )
    assert (resumed.engine.state.epoch, resumed.engine.state.iteration) == (1, 20)
    assert sorted(seen[1]) == list(range(len(train)))  # the whole epoch, each sample once


def test_batch_size_override_with_an_lr_schedule_is_refused(tmp_path, digits_flat):
    out = tmp_path / "run"
    _classifier(out, digits_flat.train, lr_scheduler="cosine").train()
    trainer = _classifier(
        out,
        digits_flat.train,
        resume="latest",
        num_epochs=2,
        batch_size=64,
        lr_scheduler="cosine",
        resume_allow=["batch_size"],
    )
    with pytest.raises(CheckpointError, match="saved LR schedule counts iterations"):
        trainer.train()


def test_resume_allow_is_checked_at_factory_time(tmp_path, digits_flat):
    assert check_resume_allow("batch_size") == ["batch_size"]
    assert set(OVERRIDABLE) == {"batch_size"}
    refused = r"'optimizer' cannot be overridden on resume; allowed: \['batch_size'\]"
    with pytest.raises(
        ConfigError, match=r"resume_allow=\['optimizer'\] is not allowed: " + refused
    ):
        _classifier(tmp_path / "run", digits_flat.train, resume_allow=["optimizer"])
    with pytest.raises(ConfigError, match=r"resume_allow=3 is not allowed: expected a list"):
        _classifier(tmp_path / "run", digits_flat.train, resume_allow=3)
