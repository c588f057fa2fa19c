"""``ignitrain._files``: the one atomic writer and the one background writer."""

import threading

import pytest

from ignitrain._files import BackgroundWriter, write_atomic
from ignitrain.errors import is_count, is_number, suggest


def test_write_atomic_replaces_whole_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "out.json"
    write_atomic(path, "old")
    write_atomic(path, b"new")
    assert path.read_text() == "new"
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.json"]


def test_write_atomic_failure_keeps_old_content(tmp_path):
    path = tmp_path / "out.txt"
    write_atomic(path, "old")
    with pytest.raises(TypeError):
        write_atomic(path, 123)  # not bytes or str: the write raises
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_background_writer_runs_in_order_and_raises_at_next_call():
    writer = BackgroundWriter()
    seen = []
    writer.submit(seen.append, 1)
    writer.submit(seen.append, 2)
    writer.wait()
    assert seen == [1, 2]

    def fail():
        raise OSError("disk full")

    writer.submit(fail)
    with pytest.raises(OSError, match="disk full"):
        writer.wait()


def test_background_writer_coalesces_while_busy():
    writer = BackgroundWriter()
    gate, calls = threading.Event(), []

    def slow(tag):
        gate.wait(5)
        calls.append(tag)

    writer.submit_coalesced(slow, "a")
    writer.submit_coalesced(slow, "b")
    writer.submit_coalesced(slow, "c")  # replaces "b": one later run covers both
    gate.set()
    writer.wait()
    assert calls == ["a", "c"]


def test_number_checks_and_suggestions():
    assert is_number(1e-3) and is_number(3) and not is_number(True) and not is_number("1")
    assert is_count(3) and not is_count(3.0) and not is_count(False)
    assert suggest("lerning_rate", ["learning_rate", "lr"]) == " Did you mean 'learning_rate'?"
    assert suggest("zzz", ["lr"]) == ""
