"""ignitrain.attach on plain Ignite engines: a script in the shape of Ignite's MNIST example.

The script (written here, not copied) builds ``create_supervised_trainer`` and
``create_supervised_evaluator``, logs the training loss, and on ``EPOCH_COMPLETED``
runs the one evaluator on the training data, then on the validation data -- as
Ignite's example does. ignitrain's stack is attached before or after those handlers.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ignite.engine import Events, create_supervised_evaluator, create_supervised_trainer
from ignite.metrics import Accuracy, Loss
from torch import nn
from torch.utils.data import DataLoader

import ignitrain
from ignitrain.datasets import digits
from ignitrain.stack import Attached, SplitView

EPOCHS = 3
LR = 0.4  # large: validation accuracy is not monotonic, so the best epoch is not the last


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    return digits(image=True, seed=0)


class Net(nn.Module):
    """A small CNN ending in log-probabilities (the example's model shape, shrunk)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, kernel_size=3, padding=1)
        self.dropout = nn.Dropout(0.25)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.conv(x)), 2)
        x = self.dropout(x.flatten(1))
        return nn.functional.log_softmax(self.fc(x), dim=-1)


def mnist_like_run(data, out_dir: Path, *, ignitrain_first: bool, stop_at=None, resume=None):
    """Train EPOCHS epochs as Ignite's MNIST example does; return (model, attached, log)."""
    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    criterion = nn.NLLLoss()
    trainer = create_supervised_trainer(model, optimizer, criterion)
    evaluator = create_supervised_evaluator(
        model, metrics={"accuracy": Accuracy(), "nll": Loss(criterion)}
    )
    config = ignitrain.TrainConfig(
        num_epochs=EPOCHS,
        batch_size=64,
        seed=0,
        output_dir=str(out_dir),
        best_metric="accuracy",
        save_every=7,
        progress_bar=False,
        tensorboard=False,
        resume=resume,
    )
    train_loader = ignitrain.resumable_loader(data.train, trainer, config)
    train_eval_loader = DataLoader(data.train, batch_size=256)
    val_loader = DataLoader(data.val, batch_size=256)
    log: dict[str, list] = {"loss": [], "train": [], "val": []}

    def example_handlers() -> None:
        @trainer.on(Events.ITERATION_COMPLETED(every=10))
        def log_training_loss(engine):
            log["loss"].append(engine.state.output)

        @trainer.on(Events.EPOCH_COMPLETED)
        def log_results(engine):
            evaluator.run(train_eval_loader)
            log["train"].append(dict(evaluator.state.metrics))
            evaluator.run(val_loader)
            log["val"].append({**evaluator.state.metrics, "weights": _copy(model.state_dict())})

    def stack() -> Attached:
        return ignitrain.attach(
            trainer,
            config,
            model=model,
            optimizer=optimizer,
            evaluator=evaluator,
            val_data=val_loader,
            train_data=train_loader,
            splits={"train_eval": train_eval_loader},
        )

    if ignitrain_first:
        attached = stack()
        example_handlers()
    else:
        example_handlers()
        attached = stack()
    if stop_at is not None:
        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=stop_at), lambda e: e.terminate())
    trainer.run(train_loader, max_epochs=EPOCHS)
    # a final test run on the same evaluator must not reach any decision
    evaluator.run(DataLoader(data.test, batch_size=256))
    return model, attached, log


def _copy(state):
    return {k: v.detach().clone() for k, v in state.items()}


def _best_file(out_dir: Path) -> Path:
    files = sorted((out_dir / "checkpoints").glob("*best*.pt"))
    assert len(files) == 1, files
    return files[0]


# "before" needs the checkpoint rework of branch a1 (best decided at the evaluator's
# COMPLETED, saved with the evaluated weights): it passes once a1 is merged -- then
# drop this xfail.


@pytest.mark.parametrize(
    "ignitrain_first",
    [pytest.param(True, id="before"), pytest.param(False, id="after")],
)
def test_best_checkpoint_holds_the_evaluated_weights_in_any_order(data, tmp_path, ignitrain_first):
    model, attached, log = mnist_like_run(data, tmp_path, ignitrain_first=ignitrain_first)
    history = attached.history
    # one point per epoch and split: the train-set run is not recorded as validation
    val_acc = [float(m["accuracy"]) for m in log["val"]]
    assert history["val/accuracy"] == pytest.approx(val_acc)
    assert history["train_eval/accuracy"] == pytest.approx(
        [float(m["accuracy"]) for m in log["train"]]
    )
    assert len(history["val/accuracy"]) == EPOCHS
    best_epoch = max(range(EPOCHS), key=lambda e: val_acc[e])
    assert best_epoch < EPOCHS - 1  # else the final weights would pass for the best ones
    restored = Net()
    ignitrain.load_checkpoint(_best_file(tmp_path), model=restored)
    for key, value in restored.state_dict().items():
        assert torch.equal(value, log["val"][best_epoch]["weights"][key]), key


def test_resume_mid_epoch_is_exact(data, tmp_path):
    full, _, _ = mnist_like_run(data, tmp_path / "full", ignitrain_first=True)
    # stopped in the middle of epoch 2, then continued by a fresh script from "latest"
    steps = len(ignitrain.resumable_loader(data.train, _dummy_engine(), {"batch_size": 64}))
    mnist_like_run(data, tmp_path / "cut", ignitrain_first=False, stop_at=steps + 3)
    resumed, attached, _ = mnist_like_run(
        data, tmp_path / "cut", ignitrain_first=False, resume="latest"
    )
    assert attached.trainer.engine.state.epoch == EPOCHS
    for key, value in resumed.state_dict().items():
        assert torch.equal(value, full.state_dict()[key]), key
    assert attached.history.meta["stop_reason"] == "completed"


def _dummy_engine():
    from ignite.engine import Engine

    return Engine(lambda e, b: None)


def test_attached_entries_are_ignite_handlers_and_removable(data, tmp_path):
    _, attached, _ = mnist_like_run(data, tmp_path, ignitrain_first=True)
    assert {"history", "checkpoints", "preemption", "splits", "stop_reasons"} <= set(attached)
    assert isinstance(attached.trainer.evaluators["val"], SplitView)
    for name, entry in attached.items():
        assert entry.events, name
        for engine, event, fn in entry.events:
            assert engine.has_event_handler(fn, event), (name, fn)
    entry = attached["history"]
    entry.detach()
    assert not entry.attached
    with pytest.raises(TypeError):
        attached["new"] = entry  # read-only


def test_attach_argument_validation(data):
    trainer = _dummy_engine()
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="engine='trainer'"):
        ignitrain.attach("trainer", {}, model=model, optimizer=opt)
    with pytest.raises(TypeError, match="model=.*torch.nn.modules.module.Module"):
        ignitrain.attach(trainer, {}, model="net", optimizer=opt)
    with pytest.raises(ValueError, match="need an evaluator"):
        ignitrain.attach(trainer, {}, model=model, optimizer=opt, val_data=[1])
    with pytest.raises(ValueError, match="evaluator= needs val_data"):
        ignitrain.attach(trainer, {}, model=model, optimizer=opt, evaluator=_dummy_engine())
    with pytest.raises(TypeError, match="expected a torch Dataset"):
        ignitrain.resumable_loader(DataLoader(data.train), trainer, {})
