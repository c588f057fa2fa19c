"""Tests for ignitrain/checks.py: failures found at factory time, not after an epoch
(issue 12 item 5). Real factories, real data, real directories."""

from __future__ import annotations

import logging
import os

import ignite.engine
import pytest
import torch
from torch.utils.data import TensorDataset

import ignitrain
from ignitrain import TrainConfig
from ignitrain.checks import (
    SEED_MAX,
    check_run_config,
    first_batch_checked,
    first_batch_checked_eval,
    top_k_of,
)
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


# -- issue 12 item 5: the first batch, save_every, top-k --------------------------------


def _labelled(digits, label_fn):
    x, y = digits.train.tensors
    return TensorDataset(x, label_fn(y.clone()))


def test_out_of_range_labels_are_named_on_the_first_batch(digits_flat):
    def bad(y):
        y[3], y[100] = 12, -1
        return y

    # before: IndexError "Target 12 is out of bounds." from torch (on CUDA: a device assert)
    trainer = _create(digits_flat, train=_labelled(digits_flat, bad), val=None, shuffle=False)
    with pytest.raises(ValueError, match=r"target labels \[-1, 12\] are out of range for logits "
                       r"\[128, 10\]: with 10 classes labels must be in \[0, 10\)"):  # fmt: skip
        trainer.train()
    assert trainer.engine.state.iteration == 1


def test_ignore_index_labels_are_allowed(digits_flat):
    def ignored(y):
        y[:5] = -100  # CrossEntropyLoss's default ignore_index
        return y

    trainer = _create(digits_flat, train=_labelled(digits_flat, ignored), val=None, num_epochs=1)
    assert trainer.train().meta["stop_reason"] == "completed"


def test_targets_of_the_wrong_shape_are_named(digits_flat):
    # before: RuntimeError "0D or 1D target tensor expected, multi-target not supported"
    trainer = _create(digits_flat, train=_labelled(digits_flat, lambda y: y[:, None]), val=None)
    with pytest.raises(ValueError, match=r"logits\) \[128, 10\] and targets \[128, 1\] do not "
                       r"match: expected targets of shape \[128\].*y.squeeze\(1\)"):  # fmt: skip
        trainer.train()


def test_logits_without_a_class_dimension_are_named(digits_flat):
    model = torch.nn.Sequential(make_mlp(out=1), torch.nn.Flatten(0))
    config = TrainConfig(**_BASE)
    trainer = ignitrain.create_classification_trainer(model, config, digits_flat.train)
    with pytest.raises(ValueError, match=r"logits\) has shape \[128\], expected \[N, C\]"):
        trainer.train()


def _regression(model, train, **options):
    return ignitrain.create_regression_trainer(model, TrainConfig(**{**_BASE, **options}), train)


def test_regression_broadcasting_mistake_is_named(diabetes_splits):
    x, y = diabetes_splits.train.tensors
    assert y.dim() == 2  # targets [N, 1]
    flat = torch.nn.Sequential(make_mlp(in_features=x.shape[1], out=1), torch.nn.Flatten(0))
    # before: MSELoss warned and averaged an [N, N] matrix of wrong differences
    trainer = _regression(flat, diabetes_splits.train, batch_size=32)
    shapes = r"model output \[32\] and target \[32, 1\] have different shapes"
    with pytest.raises(ValueError, match=shapes + r": torch would broadcast them to \[32, 32\]"):
        trainer.train()
    assert trainer.engine.state.iteration == 1


def test_first_batch_check_runs_once_and_only_for_known_losses():
    loss = first_batch_checked(torch.nn.CrossEntropyLoss())
    logits = torch.zeros(4, 3)
    loss(logits, torch.tensor([0, 1, 2, 0]))
    # the check is gone after the first call: torch's own error again
    with pytest.raises(IndexError, match="out of bounds"):
        loss(logits, torch.tensor([0, 1, 2, 7]))
    custom = torch.nn.BCEWithLogitsLoss()  # multi-label: shapes the check does not know
    assert first_batch_checked(custom) is custom


def test_save_every_without_output_dir_fails_at_the_factory(digits_flat):
    # before: accepted silently, no checkpoint was ever written
    with pytest.raises(ConfigError, match=r"save_every=5 is not allowed without output_dir"):
        _create(digits_flat, save_every=5)
    _create(digits_flat, save_every=0)  # never: fine
    _create(digits_flat, save_every=-1)  # the default: fine


@pytest.mark.parametrize("name", ["top0", "top00", "top-1", "topk"])
def test_invalid_top_k_fails_at_the_factory(digits_flat, name):
    # before: 'top0' passed the factory (TopKCategoricalAccuracy(k=0)) and failed later
    with pytest.raises(ConfigError, match=rf"contains '{name}'.*topK with K >= 1"):
        _create(digits_flat, metrics=[name])


def test_validation_labels_out_of_range_are_named_before_any_metric_sees_them(digits_flat):
    # before: the first validation raised torch's raw "Target 12 is out of bounds" from
    # Ignite's Loss (after a whole epoch), and Accuracy counted label 12 as a plain miss
    x, y = digits_flat.val.tensors
    bad_val = TensorDataset(x, y.masked_fill(y == 3, 12))
    trainer = _create(digits_flat, val=bad_val, num_epochs=1)
    message = (
        r"evaluation data, first batch: classification: target labels \[12\] are out of "
        r"range for logits \[128, 10\]"
    )
    with pytest.raises(ValueError, match=message):
        trainer.train()
    # and trainer.evaluate checks the first batch of its own data too
    with pytest.raises(ValueError, match=message):
        trainer.evaluate(bad_val)
    assert set(trainer.evaluate(digits_flat.val)) >= {"accuracy", "loss"}


def test_validation_target_shape_is_named_for_regression(diabetes_splits):
    train, val = diabetes_splits.train, diabetes_splits.val
    x, y = val.tensors
    flat_val = TensorDataset(x, y.reshape(len(y), -1)[:, :1].repeat(1, 2))
    config = TrainConfig(**{**_BASE, "num_epochs": 1, "batch_size": 32})
    model = torch.nn.Linear(x.shape[1], y.reshape(len(y), -1).shape[1])
    trainer = ignitrain.create_regression_trainer(model, config, train, flat_val)
    with pytest.raises(ValueError, match=r"evaluation data, first batch: regression: model "
                       r"output \[32, 1\] and target \[32, 2\] have different shapes"):  # fmt: skip
        trainer.train()


def test_evaluation_check_keeps_other_losses_and_runs_on_each_first_batch():
    calls = []

    def eval_fn(engine, batch):
        calls.append(engine.state.iteration)
        return batch

    custom = torch.nn.BCEWithLogitsLoss()
    assert first_batch_checked_eval(eval_fn, custom) is eval_fn
    checked = first_batch_checked_eval(eval_fn, torch.nn.CrossEntropyLoss())
    engine = ignite.engine.Engine(checked)
    good = (torch.zeros(2, 3), torch.tensor([0, 2]))
    bad = (torch.zeros(2, 3), torch.tensor([0, 5]))
    engine.run([good, bad], max_epochs=1)  # the second batch is not checked
    with pytest.raises(ValueError, match=r"target labels \[5\] are out of range"):
        engine.run([bad, good], max_epochs=1)  # a new run checks its first batch


def test_a_loader_that_passed_the_evaluation_check_is_not_checked_again():
    # issue 16: the check costs ~0.1 ms a run; the validation loader is the same object
    # every epoch, so only its first run pays it. New data is checked again.
    checked = first_batch_checked_eval(lambda e, b: b, torch.nn.CrossEntropyLoss())
    engine = ignite.engine.Engine(checked)
    y = torch.tensor([0, 2])
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.zeros(2, 3), y), batch_size=2
    )
    engine.run(loader, max_epochs=1)
    y[1] = 5  # now out of range: this loader passed already, so it is not looked at again
    engine.run(loader, max_epochs=1)
    again = torch.utils.data.DataLoader(loader.dataset, batch_size=2)
    with pytest.raises(ValueError, match=r"target labels \[5\] are out of range"):
        engine.run(again, max_epochs=1)


def test_top_k_above_the_number_of_classes_is_named_on_the_first_batch(digits_flat):
    # before: metrics=["top50"] on 10 classes trained a whole epoch, then torch's topk
    # raised a raw "selected index k out of range" at the first validation
    trainer = _create(digits_flat, metrics=["top50", "f1"])
    with pytest.raises(ValueError, match=r"top50 accuracy, but the model output \[128, 10\] "
                       r"scores only 10 classes: choose K <= 10"):  # fmt: skip
        trainer.train()
    assert trainer.engine.state.iteration == 1  # the first step, before any update
    assert top_k_of(["top5", "f1", "top10"]) == 10 and top_k_of([]) is None
