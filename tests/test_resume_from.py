"""Trainer.resume (ignitrain/resume.py): Ignite's own files, errors naming the file."""

from __future__ import annotations

import logging

import pytest
import torch
from ignite.engine import Events
from ignite.handlers import Checkpoint, DiskSaver

import ignitrain
from ignitrain import TrainConfig, datasets
from ignitrain.handlers.checkpoint import CheckpointError, build_payload, save_atomic
from tests.conftest import make_mlp


@pytest.fixture(scope="module")
def digits():
    return datasets.digits(seed=0, image=False)


def make_trainer(digits, out, **options):
    config = TrainConfig(
        num_epochs=2,
        batch_size=64,
        lr=0.05,
        output_dir=str(out),
        progress_bar=False,
        tensorboard=False,
        seed=0,
        **options,
    )
    return ignitrain.create_classification_trainer(make_mlp(), config, digits.train, digits.val)


def test_resume_from_a_file_of_ignites_own_checkpoint(digits, tmp_path, caplog):
    first = make_trainer(digits, tmp_path / "a")
    to_save = {"model": first.model, "optimizer": first.optimizer, "trainer": first.engine}
    ignite_ckpt = Checkpoint(to_save, DiskSaver(tmp_path / "ignite", require_empty=False))
    first.engine.add_event_handler(Events.EPOCH_COMPLETED(once=1), ignite_ckpt)
    first.train()
    path = ignite_ckpt.last_checkpoint
    saved = torch.load(path, weights_only=True)
    assert set(saved) == {"model", "optimizer", "trainer"}  # Ignite's own layout

    second = make_trainer(digits, tmp_path / "b")
    with caplog.at_level(logging.WARNING, logger="ignitrain"):
        second.resume(path)
    assert "not written by ignitrain" in caplog.text and "history" in caplog.text
    assert second.engine.state.iteration == saved["trainer"]["iteration"]
    model = second.model.state_dict()
    assert all(torch.equal(model[k], v) for k, v in saved["model"].items())
    second.train()  # continues with epoch 2
    assert second.engine.state.epoch == 2


def test_resume_errors_name_the_file_and_load_nothing(digits, tmp_path):
    trainer = make_trainer(digits, tmp_path / "run", optimizer="sgd", momentum=0.9)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    other = make_mlp()
    adam = torch.optim.Adam(other.parameters())
    other(torch.randn(2, 64)).sum().backward()
    adam.step()
    path = save_atomic(
        build_payload({**trainer.checkpointables, "model": other, "optimizer": adam}),
        tmp_path / "adam.pt",
    )
    with pytest.raises(CheckpointError, match="another optimizer class") as info:
        trainer.resume(path)  # the trainer's optimizer is SGD
    assert str(path) in str(info.value) and "<payload>" not in str(info.value)
    assert all(torch.equal(trainer.model.state_dict()[k], v) for k, v in before.items())
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"(.")
    with pytest.raises(CheckpointError, match=str(garbage)):
        trainer.resume(garbage)
