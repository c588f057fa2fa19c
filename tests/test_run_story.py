"""ignitrain/run_story.py: a run's story in words, and the best value of a series."""

import math

from ignitrain import History
from ignitrain.run_story import best_of, read_run_record, resume_rows, wall_time_text


def _history(name, values):
    history = History()
    for step, value in enumerate(values, start=1):
        history.log(name, value, step=step)
    return history


def test_best_of_skips_nan_follows_the_mode_and_keeps_the_first_best():
    accuracy = _history("val/accuracy", [0.5, math.nan, 0.9, 0.9, 0.7])
    assert best_of(accuracy, "val/accuracy") == (0.9, 3)
    loss = _history("val/loss", [0.9, 0.4, math.nan, 0.4, 0.6])
    assert best_of(loss, "val/loss") == (0.4, 2)
    assert best_of(loss, "val/loss", mode="max") == (0.9, 1)


def test_best_of_is_none_without_a_number():
    assert best_of(None, "val/loss") is None
    assert best_of(_history("val/loss", [0.1]), "val/accuracy") is None
    assert best_of(_history("val/loss", [math.nan, math.nan]), "val/loss") is None


def test_wall_time_text_accepts_only_non_negative_numbers():
    assert wall_time_text(4.25) == "4.2 s"
    assert wall_time_text(83) == "1 min 23 s"
    assert wall_time_text(7300) == "2 h 1 min"
    for bad in (True, -1, "12", None):
        assert wall_time_text(bad) is None


def test_the_run_record_reader_is_the_run_records_and_tolerates_damage(tmp_path):
    from ignitrain import run_record

    assert read_run_record is run_record.read_run_record
    assert read_run_record(tmp_path) is None
    (tmp_path / "run.json").write_text("{not json")
    assert read_run_record(tmp_path) is None
    (tmp_path / "run.json").write_bytes(b"\xff\xfe")
    assert read_run_record(tmp_path) is None
    assert resume_rows({"starts": [{"kind": "resume", "extra": [1, 2]}]}) == [
        {"kind": "resume", "extra": "[1, 2]"}
    ]
