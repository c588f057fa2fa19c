"""History: logging, best/latest, persistence round-trip, plotting, the Ignite handler."""

import json
import math

import pytest
import torch
from ignite.engine import Engine, Events

from ignitrain import History
from ignitrain.handlers.history import attach_history


def test_log_latest_best_and_missing_names():
    h = History()
    for step, (acc, loss) in enumerate([(0.5, 1.0), (0.9, 0.4), (0.8, 0.5)], start=1):
        h.log("val/accuracy", acc, step)
        h.log("val/loss", loss, step)
    assert h["val/accuracy"] == [0.5, 0.9, 0.8]
    assert h.steps("val/loss") == [1, 2, 3]
    assert h.latest("val/accuracy") == 0.8
    assert h.best("val/accuracy") == 0.9  # mode inferred: maximise
    assert h.best("val/loss") == 0.4  # "loss" minimises
    assert h.best("val/loss", mode="max") == 1.0
    with pytest.raises(KeyError, match="Did you mean 'val/accuracy'"):
        h["val/acuracy"]
    with pytest.raises(ValueError, match="mode='best' is not allowed"):
        h.best("val/loss", mode="best")


def test_nan_is_never_best_and_repeated_steps_replace():
    h = History()
    h.log("val/loss", math.nan, 1)
    h.log("val/loss", 0.7, 2)
    h.log("val/loss", 0.9, 3)
    h.log("val/loss", 0.6, 3)  # a resumed run logs step 3 again: one entry remains
    assert h["val/loss"][1:] == [0.7, 0.6]
    assert h.best("val/loss") == 0.6


def test_save_load_round_trip_is_atomic(tmp_path):
    h = History()
    h.log("train/loss", 0.25, 1)
    h.meta["stop_reason"] = "completed"
    path = tmp_path / "run" / "history.json"
    h.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["history.json"]  # no temp file left
    again = History.load(path.parent)
    assert again.to_dict() == h.to_dict()
    assert json.loads(path.read_text())["series"]["train/loss"]["values"] == [0.25]
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ValueError, match="not a history file"):
        History.load(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError):
        History.load(tmp_path / "none.json")


def test_plot_writes_png(tmp_path):
    h = History()
    for e in range(1, 4):
        h.log("train/loss", 1 / e, e)
        h.log("val/loss", 1.2 / e, e)
    out = h.plot(tmp_path / "curves.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="empty"):
        History().plot(tmp_path / "x.png")


def test_attach_history_on_a_plain_ignite_engine(tmp_path):
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = [torch.randn(4, 2) for _ in range(6)]

    def step(engine, x):
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        opt.step()
        return {"loss": loss.item()}

    trainer = Engine(step)
    evaluator = Engine(lambda e, x: model(x).pow(2).mean().item())

    @evaluator.on(Events.COMPLETED)
    def fake_metric(ev):
        ev.state.metrics["score"] = float(trainer.state.epoch)

    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: evaluator.run(data[:2]))
    h = attach_history(
        trainer,
        History(),
        evaluators={"val": evaluator},
        optimizer=opt,
        log_every=2,
        path=tmp_path / "history.json",
    )
    trainer.run(data, max_epochs=2)
    assert h.steps("train/batch_loss") == [2, 4, 6, 8, 10, 12]
    assert h["lr"] == [0.1] * 6
    assert h["val/score"] == [1.0, 2.0]
    assert History.load(tmp_path / "history.json")["val/score"] == [1.0, 2.0]
    with pytest.raises(ValueError, match="log_every=0"):
        attach_history(trainer, History(), log_every=0)
