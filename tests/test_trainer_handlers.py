"""trainer.handlers: every handler ignitrain attached, by name, visible and removable."""

from __future__ import annotations

import pytest

import ignitrain
from ignitrain import TrainConfig
from ignitrain.handlers.attached import AttachedHandlers
from tests.conftest import make_mlp

EVERYTHING = {
    "stop_reasons",
    "epoch_mean_loss",
    "optimizer_lr_schedule",
    "optimizer_momentum_schedule",
    "lr_writers",
    "validation",
    "stop_report",
    "console",
    "history",
    "early_stopping",
    "stop_when",
    "time_limit",
    "max_steps",
    "tensorboard",
    "epoch_summary",
    "checkpoints",
    "preemption",
    "run_record",
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _everything(digits_flat, tmp_path, **overrides):
    options = dict(
        num_epochs=3,
        optimizer="SGD",
        lr=0.05,
        momentum=0.9,
        batch_size=128,
        output_dir=str(tmp_path),
        lr_scheduler="cosine",
        momentum_scheduler="cyclic_momentum",
        early_stopping_patience=5,
        stop_when={"accuracy": 0.9999},
        time_limit=3600,
        max_steps=10_000,
        tensorboard=True,
        progress_bar=True,
    )
    options.update(overrides)
    return ignitrain.create_classification_trainer(
        make_mlp(), TrainConfig(**options), digits_flat.train, digits_flat.val
    )


def test_every_attached_handler_is_listed_and_registered(digits_flat, tmp_path):
    trainer = _everything(digits_flat, tmp_path)
    assert isinstance(trainer.handlers, AttachedHandlers)
    assert set(trainer.handlers) == EVERYTHING
    for name, entry in trainer.handlers.items():
        assert entry.events, name
        for engine, event, fn in entry.events:
            assert engine.has_event_handler(fn, event), (name, event)
    assert trainer.handlers["early_stopping"].handler is trainer.checkpointables["early_stopping"]
    assert trainer.handlers["checkpoints"].handler is trainer.checkpoints
    with pytest.raises(TypeError):
        trainer.handlers["mine"] = None  # read-only
    with pytest.raises(KeyError, match="'histroy'.*attached: stop_reasons"):
        trainer.handlers["histroy"]


@pytest.mark.parametrize("name", sorted(EVERYTHING))
def test_each_entry_is_removable(digits_flat, tmp_path, name):
    trainer = _everything(digits_flat, tmp_path)
    entry = trainer.handlers[name]
    engine, event, fn = entry.events[0]
    engine.remove_event_handler(fn, event)  # Ignite's own call
    assert not engine.has_event_handler(fn, event)
    entry.detach()  # the rest of this part
    assert not entry.attached
    others = [e for n, e in trainer.handlers.items() if n != name]
    assert all(e.attached for e in others)


def test_progress_bar_is_listed_when_attached(digits_flat, tmp_path, monkeypatch):
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # the bar needs a terminal
    trainer = _everything(digits_flat, tmp_path)
    entry = trainer.handlers["progress_bar"]
    assert type(entry.handler).__name__ == "ProgressBar"
    assert all(engine.has_event_handler(fn, event) for engine, event, fn in entry.events)
    entry.detach()
    assert not entry.attached


def test_detached_early_stopping_no_longer_stops(digits_flat, tmp_path):
    trainer = _everything(
        digits_flat, tmp_path, early_stopping_patience=1, stop_when={}, num_epochs=4
    )
    trainer.handlers["early_stopping"].detach()
    history = trainer.train()
    assert trainer.engine.state.epoch == 4 and history.meta["stop_reason"] == "completed"


def test_max_steps_count_optimizer_steps_under_accumulation(digits_flat, tmp_path):
    # 1257 samples / 128 = 10 micro-batches per epoch; 4 per step -> 3 steps per epoch
    trainer = _everything(
        digits_flat,
        tmp_path,
        grad_accumulation_steps=4,
        max_steps=4,
        early_stopping_patience=None,
        stop_when={},
        lr_scheduler={"name": "linear", "total_iters": "{NUM_UPDATE_STEPS_PER_EPOCH}"},
        momentum_scheduler=None,
    )
    seen = []
    trainer.engine.add_event_handler(
        ignitrain_events().ITERATION_STARTED,
        lambda e: seen.append(trainer.optimizer.param_groups[0]["lr"]),
    )
    history = trainer.train()
    # step 4 ends at micro-batch 4 of epoch 2: iteration 10 + 4
    assert trainer.engine.state.iteration == 14 and history.meta["stop_reason"] == "max_steps"
    # the LR changes once per optimizer step (every 4 micro-batches, the epoch's last
    # group shorter), linear to 0 over the 3 update steps of an epoch
    assert seen[:4] == [seen[0]] * 4 and seen[4] < seen[0]
    assert seen[8] < seen[4] and seen[10] == 0.0


def ignitrain_events():
    from ignite.engine import Events

    return Events
