"""Ignite's own handlers on ``trainer.engine``: each works, or is refused with a clear error.

One test per handler: ``FastaiLRFinder``, ``ParamScheduler``, ``ModelCheckpoint``,
``EarlyStopping``, ``TensorboardLogger``, ``ProgressBar``, ``TerminateOnNan``,
``TimeLimit``. Real tiny models on digits, real files.
"""

from __future__ import annotations

import logging
import math
import signal

import pytest
import torch
from ignite.engine import Events
from ignite.handlers import (
    EarlyStopping,
    FastaiLRFinder,
    LRScheduler,
    ModelCheckpoint,
    PiecewiseLinear,
    TerminateOnNan,
    TimeLimit,
)

import ignitrain
from ignitrain import TrainConfig
from tests.conftest import make_mlp

pytestmark = pytest.mark.usefixtures("one_thread")


def _trainer(digits_flat, tmp_path=None, **options):
    cfg = TrainConfig(
        num_epochs=options.pop("num_epochs", 2),
        lr=0.05,
        batch_size=128,
        output_dir=str(tmp_path) if tmp_path is not None else None,
        progress_bar=False,
        tensorboard=False,
        **options,
    )
    return ignitrain.create_classification_trainer(
        make_mlp(), cfg, digits_flat.train, digits_flat.val
    )


def test_fastai_lr_finder_on_the_run_engine_is_refused(digits_flat, tmp_path):
    trainer = _trainer(digits_flat, tmp_path, lr_scheduler="cosine")
    finder = FastaiLRFinder()
    to_save = {"model": trainer.model, "optimizer": trainer.optimizer}
    with pytest.raises(RuntimeError, match=r"FastaiLRFinder.*trainer\.find_lr\(\)"):
        with finder.attach(trainer.engine, to_save=to_save, num_iter=5) as engine:
            engine.run(trainer.train_loader, max_epochs=1)
    assert not list((tmp_path / "checkpoints").glob("*.pt"))  # nothing written into the run
    # the supported way: a private engine, the run untouched
    result = trainer.find_lr(num_iter=10)
    assert len(result.lrs) == 10 and trainer.engine.state.iteration == 0
    assert not list((tmp_path / "checkpoints").glob("*.pt")) and not trainer.history.names()


def test_param_scheduler_beside_lr_scheduler_is_refused_and_alone_works(digits_flat):
    trainer = _trainer(digits_flat, lr_scheduler="cosine")
    ramp = PiecewiseLinear(trainer.optimizer, "lr", [(0, 0.1), (10, 0.01)])
    trainer.engine.add_event_handler(Events.ITERATION_STARTED, ramp)
    with pytest.raises(RuntimeError, match=r"PiecewiseLinear.*TrainConfig\(lr_scheduler="):
        trainer.train()

    # without an ignitrain schedule the user's scheduler drives the LR
    trainer = _trainer(digits_flat)
    step = torch.optim.lr_scheduler.StepLR(trainer.optimizer, step_size=3, gamma=0.5)
    scheduler = LRScheduler(step)
    trainer.engine.add_event_handler(Events.ITERATION_STARTED, scheduler)
    trainer.train()
    assert trainer.optimizer.param_groups[0]["lr"] < 0.05

    # and given as lr_scheduler= it is driven (and checkpointed) by ignitrain
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    ramp = PiecewiseLinear(optimizer, "lr", [(0, 0.1), (10, 0.01)])
    cfg = TrainConfig(num_epochs=2, batch_size=128, lr_scheduler=ramp, progress_bar=False)
    trainer = ignitrain.create_classification_trainer(
        model, cfg, digits_flat.train, optimizer=optimizer
    )
    trainer.train()
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.01)
    assert trainer.history["lr"][0] == pytest.approx(0.1 - 0.09 * 9 / 10)  # logged at iter 10


def test_model_checkpoint_works_beside_ignitrains(digits_flat, tmp_path):
    trainer = _trainer(digits_flat, tmp_path / "run")
    saver = ModelCheckpoint(tmp_path / "ignite", "net", n_saved=2, require_empty=False)
    trainer.engine.add_event_handler(Events.EPOCH_COMPLETED, saver, {"model": trainer.model})
    trainer.train()
    files = sorted(p.name for p in (tmp_path / "ignite").iterdir())
    assert files == ["net_model_10.pt", "net_model_20.pt"]
    state = torch.load(tmp_path / "ignite" / files[-1], weights_only=True)
    assert all(torch.equal(v, state[k]) for k, v in trainer.model.state_dict().items())
    assert list((tmp_path / "run" / "checkpoints").glob("*.pt"))


def test_ignite_early_stopping_stops_and_is_recorded(digits_flat):
    trainer = _trainer(digits_flat, num_epochs=20)
    rule = EarlyStopping(1, lambda engine: -engine.state.epoch, trainer.engine)  # never improves
    trainer.evaluators["val"].add_event_handler(Events.COMPLETED, rule)
    history = trainer.train()
    assert trainer.engine.state.epoch == 2
    assert history.meta["stop_reason"] == "EarlyStopping"
    assert trainer.engine.state.stop_reason == "EarlyStopping"


def test_tensorboard_logger_works(digits_flat, tmp_path):
    from ignite.handlers.tensorboard_logger import OutputHandler, TensorboardLogger

    trainer = _trainer(digits_flat)
    logger = TensorboardLogger(log_dir=tmp_path / "tb")
    logger.attach(
        trainer.engine,
        OutputHandler(tag="train", output_transform=lambda out: {"loss": out["loss"]}),
        Events.ITERATION_COMPLETED,
    )
    trainer.train()
    logger.close()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_progress_bar_works(digits_flat, capsys):
    from ignite.handlers import ProgressBar

    trainer = _trainer(digits_flat)
    ProgressBar(persist=True).attach(trainer.engine, output_transform=lambda out: out["loss"])
    trainer.train()
    assert "Epoch [2/2]" in capsys.readouterr().err


def test_terminate_on_nan_stops_and_is_recorded(digits_flat):
    trainer = _trainer(digits_flat, num_epochs=3, stop_on_nan=False)
    trainer.engine.add_event_handler(
        Events.ITERATION_COMPLETED(once=4), lambda e: e.state.output.update(loss=math.nan)
    )
    trainer.engine.add_event_handler(
        Events.ITERATION_COMPLETED, TerminateOnNan(lambda out: out["loss"])
    )
    history = trainer.train()
    assert trainer.engine.state.iteration == 4
    assert history.meta["stop_reason"] == "TerminateOnNan"


def test_time_limit_stops_and_is_recorded(digits_flat):
    trainer = _trainer(digits_flat, num_epochs=50)
    limit = TimeLimit(1)
    limit.start_time -= 5  # as if the limit had been reached (Ignite counts from here)
    trainer.engine.add_event_handler(Events.ITERATION_COMPLETED, limit)
    history = trainer.train()
    assert trainer.engine.state.iteration == 1
    assert history.meta["stop_reason"] == "TimeLimit"


def test_a_users_terminate_is_named_by_its_function(digits_flat):
    trainer = _trainer(digits_flat, num_epochs=5)

    @trainer.engine.on(Events.EPOCH_COMPLETED(once=2))
    def enough(engine):
        engine.terminate()

    assert trainer.train().meta["stop_reason"] == "enough"


def test_ignite_engine_logging_is_left_as_ignite_sets_it_up(digits_flat, caplog):
    trainer = _trainer(digits_flat, num_epochs=1)
    assert trainer.engine.logger.name == "ignite.engine.engine.Engine"
    with caplog.at_level(logging.INFO, logger="ignite.engine.engine.Engine"):
        trainer.train()
    assert any("Epoch[1] Complete" in r.getMessage() for r in caplog.records)


def test_signal_handlers_only_while_training(digits_flat, tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    trainer = _trainer(digits_flat, tmp_path)
    assert signal.getsignal(signal.SIGTERM) is before  # not at factory time
    during = []
    trainer.engine.add_event_handler(
        Events.ITERATION_COMPLETED(once=1),
        lambda e: during.append(signal.getsignal(signal.SIGTERM)),
    )
    trainer.train()
    assert during and during[0] is not before
    assert signal.getsignal(signal.SIGTERM) is before

    # restored also when the run raises
    trainer = _trainer(digits_flat, tmp_path / "2")

    @trainer.engine.on(Events.ITERATION_COMPLETED(once=2))
    def boom(engine):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        trainer.train()
    assert signal.getsignal(signal.SIGTERM) is before
