"""``profile=True``: Ignite's HandlersTimeProfiler, profile.csv, summary in log and report."""

from __future__ import annotations

import csv
import logging
import time

import pytest
from ignite.engine import Engine, Events

import ignitrain
from ignitrain import TrainConfig
from ignitrain.handlers.profile import attach_profiler, profile_rows, profile_summary
from ignitrain.report import write_report
from tests.conftest import make_mlp


def test_profile_csv_summary_and_report(digits_flat, tmp_path, caplog):
    config = TrainConfig(num_epochs=2, batch_size=64, progress_bar=False, profile=True,
                         output_dir=str(tmp_path))  # fmt: skip
    trainer = ignitrain.create_classification_trainer(
        make_mlp(), config, digits_flat.train, digits_flat.val
    )
    with caplog.at_level(logging.INFO, logger="ignitrain"):
        trainer.train()
    with open(tmp_path / "profile.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    names = [r["handler"] for r in rows]
    assert "step" in names and "data loading" in names
    assert any("record_epoch" in n for n in names)  # History's handler, by name
    assert sum(float(r["share"]) for r in rows) == pytest.approx(1.0, abs=1e-6)
    summary = [m for m in caplog.messages if m.startswith("Profile: ")]
    assert summary and "step" in summary[0] and "data loading" in summary[0]
    assert "Profile" in write_report(tmp_path).read_text()


def test_a_slow_handler_tops_the_table():
    engine = Engine(lambda e, b: None)

    def slow(engine):
        time.sleep(0.05)

    engine.add_event_handler(Events.EPOCH_COMPLETED, slow)
    profiler = attach_profiler(engine, None)
    engine.run(range(5), max_epochs=2)
    rows = profile_rows(profiler)
    assert rows[0]["event"] == "EPOCH_COMPLETED" and rows[0]["share"] > 0.5
    assert "top handlers:" in profile_summary(rows)
    # Ignite's profiler restored the original handlers at COMPLETED
    assert engine.has_event_handler(slow, Events.EPOCH_COMPLETED)


def test_argument_validation():
    with pytest.raises(TypeError, match="ignite Engine"):
        attach_profiler("engine", None)
    with pytest.raises(TypeError, match="profile"):
        TrainConfig(profile="yes")
