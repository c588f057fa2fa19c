"""TensorBoard logs read back with TensorBoard's own reader equal the History."""

import logging
from pathlib import Path

import pytest
from ignite.engine import Engine, Events
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import ignitrain
from ignitrain import History, TrainConfig
from ignitrain.handlers.logging import (
    ScalarEventWriter,
    attach_epoch_summary,
    attach_progress_bar,
    attach_tensorboard,
)
from tests.conftest import make_mlp


def _read(log_dir):
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_scalars_equal_history(digits_flat, tmp_path, caplog):
    cfg = TrainConfig(
        num_epochs=3,
        batch_size=64,
        log_every=4,
        lr_scheduler="cosine",
        output_dir=str(tmp_path),
        progress_bar=False,
    )
    trainer = ignitrain.create_classification_trainer(
        make_mlp(), cfg, digits_flat.train, digits_flat.val
    )
    history = trainer.train()
    scalars = _read(tmp_path / "tb")
    assert {"train/batch_loss", "lr", "train/loss", "val/accuracy", "val/loss"} <= set(scalars)
    for name in ("train/batch_loss", "lr", "train/loss", "val/accuracy", "val/loss"):
        # float32 in the event file
        assert [v for _, v in scalars[name]] == pytest.approx(history[name], rel=1e-6), name
    # one x axis: the training iteration, never going backwards
    steps = [s for s, _ in scalars["val/accuracy"]]
    assert steps == sorted(steps) and steps[-1] == trainer.engine.state.iteration
    assert [s for s, _ in scalars["train/batch_loss"]] == history.steps("train/batch_loss")
    # the LR really follows the cosine schedule (decreasing)
    lrs = history["lr"]
    assert lrs[0] > lrs[-1]
    # one summary line per epoch
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Epoch ")]
    assert len(lines) == 3 and "val/accuracy" in lines[-1] and "train/loss" in lines[-1]


def test_tensorboard_handler_on_a_plain_engine(tmp_path):
    engine = Engine(lambda e, b: None)
    history = History()
    attach_tensorboard(engine, history, tmp_path / "tb")

    @engine.on(Events.ITERATION_COMPLETED)
    def log(e):
        history.log("custom/value", e.state.iteration * 0.5, e.state.iteration)

    engine.run([0] * 4, max_epochs=1)
    assert _read(tmp_path / "tb")["custom/value"] == [(1, 0.5), (2, 1.0), (3, 1.5), (4, 2.0)]


def test_progress_bar_off_without_a_terminal_and_summary_logs(caplog):
    engine = Engine(lambda e, b: {"loss": 1.0})
    assert attach_progress_bar(engine, enabled=True) is None  # pytest's stderr is not a TTY
    history = History()
    attach_epoch_summary(engine, history)
    with caplog.at_level(logging.INFO, logger="ignitrain"):
        engine.run([0, 0], max_epochs=2)
    assert [r.getMessage().split(" |")[0] for r in caplog.records if r.name == "ignitrain"] == [
        "Epoch 1/2",
        "Epoch 2/2",
    ]


def test_scalar_writer_flush_puts_every_scalar_on_disk_and_purges_on_resume(tmp_path):
    # What a checkpoint relies on: after flush() every scalar added so far is readable,
    # with no writer thread still holding some (SIGKILL may come next).
    first = ScalarEventWriter(tmp_path)
    for step in range(1, 201):
        first.add_scalar("loss", 1.0 / step, step)
    first.flush()
    assert [s for s, _ in _read(tmp_path)["loss"]] == list(range(1, 201))
    # the run dies here (no close); its resumption from step 120 purges 121..200
    resumed = ScalarEventWriter(tmp_path, purge_step=121)
    for step in range(121, 151):
        resumed.add_scalar("loss", 2.0, step)
    resumed.close()
    loss = _read(tmp_path)["loss"]
    assert [s for s, _ in loss] == list(range(1, 151))
    assert [v for s, v in loss if s > 120] == [2.0] * 30
    assert len(list(tmp_path.iterdir())) == 2  # a second file, the first one kept whole


def test_scalars_are_encoded_at_flush_not_when_added(tmp_path):
    writer = ScalarEventWriter(tmp_path, max_queue=50)
    size = Path(writer.path).stat().st_size  # the file-version record only
    for step in range(1, 50):
        writer.add_scalar("loss", float(step), step)
    assert Path(writer.path).stat().st_size == size  # queued as numbers
    writer.add_scalar("loss", 50.0, 50)  # the 50th: a full queue flushes
    assert Path(writer.path).stat().st_size > size
    assert _read(tmp_path)["loss"] == [(s, float(s)) for s in range(1, 51)]
    writer.close()
    with pytest.raises(ValueError, match="max_queue=0 is not allowed"):
        ScalarEventWriter(tmp_path, max_queue=0)


def test_native_crc32c_is_installed():
    # tensorboardX falls back to a pure-Python CRC (measured ~40 us per record, two per
    # scalar) when the crc32c package is missing
    from tensorboardX import crc32c

    assert crc32c.crc32c is not crc32c._crc32c


def _records(path):
    # the raw records of a TensorBoard event file: (length, crc, data, crc) each
    import struct

    data, out = Path(path).read_bytes(), []
    while data:
        (length,) = struct.unpack("Q", data[:8])
        out.append(data[12 : 12 + length])
        data = data[16 + length :]
    return out


def test_scalar_events_are_the_bytes_tensorboardx_writes(tmp_path):
    # the Summary is built without tensorboardX's summary.scalar() (its numpy
    # conversion costs most of a scalar's encoding): the event bytes must not change
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.summary import scalar

    writer = ScalarEventWriter(tmp_path)
    added = [("val/accuracy", 0.91, 3), ("/lead slash", -2.5, 4), ("bad name!", 1e30, 5)]
    for tag, value, step in added:
        writer.add_scalar(tag, value, step)
    writer.close()
    events = [Event.FromString(data) for data in _records(writer.path)[1:]]
    assert len(events) == len(added)
    for event, (tag, value, step) in zip(events, added):
        assert event.step == step
        assert event.summary.SerializeToString() == scalar(tag, value).SerializeToString()


def test_flush_with_nothing_new_writes_nothing(tmp_path):
    writer = ScalarEventWriter(tmp_path)
    writer.add_scalar("loss", 1.0, 1)
    writer.flush()
    size = Path(writer.path).stat().st_size
    writer.flush()  # a second checkpoint in the same epoch: nothing queued
    writer.flush()
    assert Path(writer.path).stat().st_size == size
    writer.add_scalar("loss", 0.5, 2)
    writer.close()
    assert _read(tmp_path)["loss"] == [(1, 1.0), (2, 0.5)]
