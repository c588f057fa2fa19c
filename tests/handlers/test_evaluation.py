"""Evaluation sets with their own schedules, and one evaluator run on several data sets.

The second half is a script in the shape of Ignite's MNIST example (written here):
``create_supervised_trainer``/``create_supervised_evaluator``, validation handlers on
``EPOCH_COMPLETED`` that run *one* evaluator on the training set and then on the
validation set; digits data, no download. ignitrain's History, early stopping and best
checkpoints are attached before and after the example's handlers.
"""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events, create_supervised_evaluator, create_supervised_trainer
from ignite.metrics import Accuracy, Loss
from torch import nn
from torch.utils.data import DataLoader

import ignitrain
from ignitrain import TrainConfig
from ignitrain.handlers.checkpoint import CheckpointStore, attach_checkpoints
from ignitrain.handlers.evaluation import (
    SplitRouter,
    attach_evaluations,
    check_eval_every,
    eval_sets,
    name_splits,
    split_metric,
)
from ignitrain.handlers.history import History, attach_history
from ignitrain.handlers.logging import attach_tensorboard
from ignitrain.handlers.stopping import attach_early_stopping
from tests.conftest import config_maker, make_mlp

pytestmark = pytest.mark.usefixtures("one_thread")


cfg = config_maker(num_epochs=3, batch_size=64, progress_bar=False, seed=0, lr=0.01)


# -- several evaluation sets inside train() -------------------------------------------


def test_val_each_epoch_test_once_at_the_end_each_under_its_prefix(digits_flat, tmp_path):
    sets = {"val": digits_flat.val, "test": digits_flat.test}
    config = cfg(output_dir=str(tmp_path), best_metric="val/accuracy")
    trainer = ignitrain.create_classification_trainer(make_mlp(), config, digits_flat.train, sets)
    history = trainer.train()
    assert history.steps("val/accuracy") == [1, 2, 3]
    assert history.steps("test/accuracy") == [3]
    assert history.steps("test/loss") == [3]
    # the test numbers are the final model's on the test set
    assert history.latest("test/accuracy") == pytest.approx(
        trainer.evaluate(digits_flat.test)["accuracy"]
    )
    # best checkpoints rank by val/accuracy
    assert trainer.checkpoints.store.best_scores() == [pytest.approx(max(history["val/accuracy"]))]
    assert set(trainer.evaluators) == {"val", "test"}
    history.plot(tmp_path / "h.png")  # val and test share the accuracy panel


def test_test_set_still_runs_at_the_end_after_an_early_stop(digits_flat):
    sets = {"val": digits_flat.val, "test": digits_flat.test}
    config = cfg(num_epochs=30, lr=1e-6, early_stopping_patience=1)
    trainer = ignitrain.create_classification_trainer(make_mlp(), config, digits_flat.train, sets)
    history = trainer.train()
    assert history.meta["stop_reason"] != "completed"
    stopped = trainer.engine.state.epoch
    assert stopped < 30 and history.steps("test/accuracy") == [stopped]


def test_eval_every_and_a_decision_on_another_set(digits_flat):
    sets = {"holdout": digits_flat.val, "test": digits_flat.test}
    config = cfg(num_epochs=4, eval_every={"test": 2, "holdout": "end"}, best_metric="test/loss")
    trainer = ignitrain.create_classification_trainer(make_mlp(), config, digits_flat.train, sets)
    history = trainer.train()
    assert history.steps("test/accuracy") == [2, 4]
    assert history.steps("holdout/accuracy") == [4]
    assert "val" not in trainer.evaluators
    assert trainer.val_loader is not None and len(trainer.val_loader.dataset) == len(
        digits_flat.test
    )


def test_argument_validation(digits_flat):
    with pytest.raises(ValueError, match="no evaluation set 'tset'"):
        ignitrain.create_classification_trainer(
            make_mlp(), cfg(best_metric="tset/accuracy"), digits_flat.train,
            {"val": digits_flat.val, "test": digits_flat.test},
        )  # fmt: skip
    with pytest.raises(ValueError, match="eval_every names \\['tset'\\]"):
        eval_sets({"test": 1}, lambda d: d, eval_every={"tset": 1})
    with pytest.raises(ValueError, match="set name 'train'"):
        eval_sets({"train": 1}, lambda d: d)
    with pytest.raises(ValueError, match="val_data=\\{\\}"):
        eval_sets({}, lambda d: d)
    with pytest.raises(ValueError, match="'end'"):
        check_eval_every({"test": 0})
    with pytest.raises(TypeError, match="expected a mapping"):
        TrainConfig(eval_every=2)
    with pytest.raises(ValueError, match="loaders="):
        SplitRouter(ignitrain_engine(), {})
    assert split_metric("ema/val/accuracy", {"val": 0, "ema/val": 0}) == ("ema/val", "accuracy")
    assert split_metric("accuracy", {}, "val") == ("val", "accuracy")


def ignitrain_engine():
    from ignite.engine import Engine

    return Engine(lambda e, b: None)


def test_attach_evaluations_schedules_on_a_plain_engine():
    from ignite.engine import Engine

    from ignitrain.handlers.evaluation import EvalSet

    runs = []
    evaluator = Engine(lambda e, b: None)
    evaluator.add_event_handler(Events.COMPLETED, lambda e: runs.append(e.state.dataloader))
    sets = [EvalSet("a", evaluator, ["a"], 2), EvalSet("b", evaluator, ["b"], "end")]
    trainer = Engine(lambda e, b: None)
    detach = attach_evaluations(trainer, sets)
    trainer.run([0], max_epochs=5)
    assert runs == [["a"], ["a"], ["a"], ["b"]]  # epochs 2, 4, the last (5), then the end
    detach()
    runs.clear()
    trainer.state.max_epochs = None
    trainer.run([0], max_epochs=1)
    assert runs == []


# -- Ignite's MNIST example shape: one evaluator on train, then val ---------------------


def mnist_shaped(digits_flat, tmp_path, *, route, ignitrain_first, val_first=False):
    """Ignite-example training with ignitrain's handlers attached before or after the
    example's validation handlers; returns what each decided on."""
    torch.manual_seed(0)
    model = make_mlp(dropout=0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    criterion = nn.CrossEntropyLoss()
    trainer = create_supervised_trainer(model, optimizer, criterion)
    evaluator = create_supervised_evaluator(
        model, metrics={"accuracy": Accuracy(), "loss": Loss(criterion)}
    )
    gen = torch.Generator().manual_seed(0)
    train_loader = DataLoader(digits_flat.train, batch_size=64, shuffle=True, generator=gen)
    # a small train subset evaluated, so train and val accuracies clearly differ
    train_eval_loader = DataLoader(torch.utils.data.Subset(digits_flat.train, range(128)), 256)
    val_loader = DataLoader(digits_flat.val, batch_size=256)
    seen = {"train": [], "val": []}

    def example_handlers():
        @trainer.on(Events.EPOCH_COMPLETED)
        def log_results(engine):
            order = [("val", val_loader), ("train", train_eval_loader)]
            for split, loader in order if val_first else order[::-1]:
                evaluator.run(loader)
                seen[split].append(evaluator.state.metrics["accuracy"])

    history = History()

    def ignitrain_handlers():
        decide = evaluator
        if route:
            router = name_splits(evaluator, train_eval=train_eval_loader, val=val_loader)
            decide = router.view("val")
        attach_history(trainer, history, evaluators={"val": evaluator})
        attach_tensorboard(trainer, history, tmp_path / "tb")
        stop = attach_early_stopping(trainer, decide, "accuracy", patience=50)
        store = CheckpointStore(tmp_path / "ckpt", n_saved=1)
        checkpoints = attach_checkpoints(
            trainer, {"model": model}, store, evaluator=decide, best_metric="accuracy",
            save_last=False,
        )  # fmt: skip
        return stop, store, checkpoints

    if ignitrain_first:
        stop, store, _ = ignitrain_handlers()
        example_handlers()
    else:
        example_handlers()
        stop, store, _ = ignitrain_handlers()
    trainer.run(train_loader, max_epochs=3)
    return seen, history, stop, store


@pytest.mark.parametrize("ignitrain_first", [True, False])
@pytest.mark.parametrize("val_first", [True, False])
def test_routed_runs_are_recorded_per_split_and_only_val_decides(
    digits_flat, tmp_path, ignitrain_first, val_first
):
    seen, history, stop, store = mnist_shaped(
        digits_flat, tmp_path, route=True, ignitrain_first=ignitrain_first, val_first=val_first
    )
    assert history["val/accuracy"] == pytest.approx(seen["val"])
    assert history["train_eval/accuracy"] == pytest.approx(seen["train"])
    assert seen["val"] != seen["train"]
    assert stop.best == pytest.approx(max(seen["val"]))
    assert store.best_scores() == [pytest.approx(max(seen["val"]))]
    # TensorBoard: one val/accuracy point per epoch, the validation run's
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.value for e in events.Scalars("val/accuracy")] == pytest.approx(seen["val"])
    assert len(events.Scalars("train_eval/accuracy")) == 3


def test_without_routing_the_train_run_decides(digits_flat, tmp_path):
    # the defect the routing fixes: train runs first, so early stopping (which takes
    # one evaluation per training iteration count) and History see train accuracy
    seen, history, stop, _ = mnist_shaped(digits_flat, tmp_path, route=False, ignitrain_first=False)
    assert seen["val"] != seen["train"]
    assert stop.best == pytest.approx(max(seen["train"]))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    assert len(events.Scalars("val/accuracy")) == 6  # two points per step
