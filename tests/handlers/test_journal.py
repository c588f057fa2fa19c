"""The append-only history journal: format, position, prefix checks, replay."""

import json
import math

import pytest

from ignitrain.handlers.journal import (
    JOURNAL_NAME,
    Journal,
    JournalPosition,
    newest_history_file,
    read_prefix,
    replay,
)


def _replayed(data, path):
    got = []
    meta = replay(data, path, lambda name, value, step: got.append((name, step, value)))
    return got, meta


def test_write_appends_records_and_meta_changes_and_replays_them(tmp_path):
    path = tmp_path / JOURNAL_NAME
    journal = Journal(path)
    journal.add("train/loss", 1, 0.5)
    journal.add("val/loss", 1, math.nan)
    journal.write({"run": "a"})
    journal.write({"run": "a"})  # nothing new, same meta: nothing written
    first = journal.position()
    assert first == {"path": str(path.resolve()), "bytes": path.stat().st_size, "records": 3}
    journal.add("train/loss", 2, 0.25)
    journal.write({"run": "b"})
    journal.close()
    lines = path.read_bytes().splitlines()
    assert json.loads(lines[0]) == ["train/loss", 1, 0.5]
    assert json.loads(lines[2]) == {"meta": {"run": "a"}}
    records, meta = _replayed(path.read_bytes(), path)
    assert [(n, s) for n, s, _ in records] == [
        ("train/loss", 1),
        ("val/loss", 1),
        ("train/loss", 2),
    ]
    assert math.isnan(records[1][2]) and meta == {"run": "b"}
    # a checkpoint's position reads back exactly the first write
    position = JournalPosition.from_state(first)
    prefix = read_prefix(path, position)
    assert _replayed(prefix, path)[1] == {"run": "a"}


def test_restart_replaces_the_file_at_the_next_write(tmp_path):
    path = tmp_path / JOURNAL_NAME
    path.write_text('["stale", 1, 9.0]\n["stale", 2, 9.0]\n')
    journal = Journal(path)
    journal.restart([("kept", 3, 1.0)])
    assert "stale" in path.read_text()  # nothing destroyed before the write
    journal.write({})
    journal.close()
    assert _replayed(path.read_bytes(), path)[0] == [("kept", 3, 1.0)]


def test_bad_positions_and_replaced_journals_raise(tmp_path):
    with pytest.raises(ValueError, match="journal=.*is not allowed"):
        JournalPosition.from_state({"path": "h.jsonl", "bytes": -1, "records": 0})
    with pytest.raises(ValueError, match="is not allowed"):
        JournalPosition.from_state("h.jsonl")
    path = tmp_path / JOURNAL_NAME
    path.write_bytes(b'["a", 1, 1.0]\n')
    with pytest.raises(ValueError, match="the checkpoint needs 100"):
        read_prefix(path, JournalPosition(str(path), 100, 1))
    with pytest.raises(ValueError, match="not the 2 history records"):
        read_prefix(path, JournalPosition(str(path), 14, 2))
    with pytest.raises(ValueError, match="record 1 is not a history record"):
        replay(b'{"other": 1}\n', path, lambda *_: None)


def test_a_torn_last_line_is_dropped_a_torn_middle_line_is_an_error(tmp_path):
    path = tmp_path / JOURNAL_NAME
    records, _ = _replayed(b'["a", 1, 1.0]\n["a", 2, 2.0]\n["a", 3,', path)
    assert records == [("a", 1, 1.0), ("a", 2, 2.0)]
    with pytest.raises(ValueError, match="not a history file"):
        replay(b'["a", 1,\n["a", 2, 2.0]\n', path, lambda *_: None)


def test_newest_history_file_prefers_the_newer_of_json_and_journal(tmp_path):
    document, journal = tmp_path / "history.json", tmp_path / JOURNAL_NAME
    assert newest_history_file(tmp_path) == document  # neither exists: the document
    journal.write_text("")
    assert newest_history_file(tmp_path) == journal
    document.write_text("{}")
    newer = journal.stat().st_mtime_ns + 1_000_000
    import os

    os.utime(document, ns=(newer, newer))
    assert newest_history_file(document) == document
    assert newest_history_file(journal) == journal  # a journal asked for by name
