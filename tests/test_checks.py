"""Tests for ignitrain/checks.py: failures found at factory time, not after an epoch
(issue 12 item 5). Real factories, real data, real directories."""

from __future__ import annotations

import logging
import os

import pytest
import torch
from torch.utils.data import TensorDataset

import ignitrain
from ignitrain import TrainConfig
from ignitrain.checks import SEED_MAX, check_run_config
from ignitrain.config import ConfigError
from tests.conftest import make_mlp

_BASE = dict(num_epochs=2, batch_size=128, progress_bar=False, tensorboard=False)


def _create(digits, train=None, val="default", **options):
    config = TrainConfig(**{**_BASE, **options})
    return ignitrain.create_classification_trainer(
        make_mlp(),
        config,
        digits.train if train is None else train,
        digits.val if val == "default" else val,
    )


def test_seed_out_of_torch_range_is_a_clear_config_error(digits_flat):
    # before: OverflowError "Overflow when unpacking long long" from torch.manual_seed
    with pytest.raises(ConfigError, match=r"TrainConfig.seed=18446744073709551616 is not allowed"):
        _create(digits_flat, seed=2**64)
    with pytest.raises(ConfigError, match="expected an integer in 0..18446744073709551615"):
        check_run_config(TrainConfig(seed=2**64 + 5))
    assert check_run_config(TrainConfig(seed=SEED_MAX)).seed == SEED_MAX


def test_resume_typo_gets_a_suggestion(tmp_path, digits_flat):
    with pytest.raises(ConfigError, match="Did you mean 'latest'"):
        _create(digits_flat, output_dir=str(tmp_path / "run"), resume="latset")
    with pytest.raises(ConfigError, match="Did you mean 'latest'"):
        TrainConfig(resume="latset")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_unwritable_output_dir_fails_at_the_factory(tmp_path, digits_flat):
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="cannot be created or written"):
            _create(digits_flat, output_dir=str(locked / "run"))
    finally:
        locked.chmod(0o700)


def test_output_dir_under_a_file_fails_at_the_factory(tmp_path, digits_flat):
    # (a path that cannot be a directory: works for root too)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match=r"output_dir=.*file/run' is not allowed: it cannot be"):
        _create(digits_flat, output_dir=str(blocker / "run"))


def test_output_dir_is_created_at_the_factory(tmp_path, digits_flat):
    out = tmp_path / "new" / "run"
    _create(digits_flat, output_dir=str(out))
    assert out.is_dir() and list(out.iterdir()) == []  # the probe left nothing


def test_generator_as_training_data_for_several_epochs_is_refused(digits_flat):
    batches = [(x, y) for x, y in torch.utils.data.DataLoader(digits_flat.train, batch_size=128)]
    # before: epochs 2-3 were empty and the run reported "completed"
    with pytest.raises(ValueError, match=r"one-pass iterator \(generator\).*epochs 2..2"):
        _create(digits_flat, train=(b for b in batches))
    trainer = _create(digits_flat, train=batches)  # a list is fine
    assert trainer.train().meta["stop_reason"] == "completed"


def test_empty_validation_data_fails_at_the_factory(digits_flat):
    empty = TensorDataset(torch.zeros(0, 64), torch.zeros(0, dtype=torch.long))
    # before: Ignite's "zero size" error after epoch 1
    with pytest.raises(ValueError, match="val_data gives no batches"):
        _create(digits_flat, val=empty)


def test_save_best_without_validation_data_warns(tmp_path, digits_flat, caplog):
    with caplog.at_level(logging.WARNING, logger="ignitrain"):
        _create(digits_flat, val=None, output_dir=str(tmp_path / "run"))
    assert "save_best=True without validation data" in caplog.text
