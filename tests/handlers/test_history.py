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


def _journaled(path, epochs, start=1):
    h = History()
    h.journal_to(path)
    for e in range(start, start + epochs):
        h.log("train/loss", 1 / e, e)
        h.log("val/accuracy", math.nan if e == 2 else e / 10, e)
    return h


def test_checkpoint_state_is_a_journal_position_not_the_values(tmp_path):
    journal = tmp_path / "history.jsonl"
    h = _journaled(journal, 50)
    state = h.state_dict()
    assert set(state) == {"journal", "meta"} and "series" not in state
    assert state["journal"]["records"] == 100
    assert state["journal"]["bytes"] == journal.stat().st_size  # flushed by state_dict
    # the state does not grow with the run
    more = _journaled(tmp_path / "long.jsonl", 5000)
    assert len(json.dumps(more.state_dict())) < len(json.dumps(state)) + 10
    again = History()
    again.load_state_dict(state)
    assert json.dumps(again.to_dict(), allow_nan=True) == json.dumps(h.to_dict(), allow_nan=True)


def test_resume_cuts_what_a_killed_run_appended_after_its_checkpoint(tmp_path):
    journal = tmp_path / "history.jsonl"
    h = _journaled(journal, 3)
    h.meta["note"] = "kept"
    saved = h.state_dict()  # what the checkpoint holds
    want = h.to_dict()
    h.log("train/loss", 0.01, 4)  # logged after the checkpoint, flushed, then SIGKILL
    h.log("train/loss", 0.02, 5)
    h.flush()
    assert History.load(journal)["train/loss"][-1] == 0.02
    resumed = History()
    resumed.journal_to(journal)
    resumed.load_state_dict(saved)
    assert json.dumps(resumed.to_dict(), allow_nan=True) == json.dumps(want, allow_nan=True)
    resumed.log("train/loss", 0.5, 4)
    resumed.flush()  # the first write cuts the killed run's tail
    assert journal.read_bytes().count(b"\n") == saved["journal"]["records"] + 1
    resumed.close()
    assert History.load(tmp_path)["train/loss"][-2:] == [1 / 3, 0.5]
    assert History.load(tmp_path).meta == {"note": "kept"}


def test_snapshot_and_rollback_before_a_resume_leave_the_journal_alone(tmp_path):
    # a checkpoint loader snapshots each object and restores the snapshot when a later
    # object fails: neither may destroy the killed run's journal
    journal = tmp_path / "history.jsonl"
    saved = _journaled(journal, 3).state_dict()
    before = journal.read_bytes()
    fresh = History()
    fresh.journal_to(journal)
    snapshot = fresh.state_dict()
    fresh.load_state_dict(saved)
    fresh.load_state_dict(snapshot)  # rolled back
    assert journal.read_bytes() == before
    fresh.load_state_dict(saved)  # the retried resume
    assert fresh["train/loss"] == [1.0, 0.5, 1 / 3]


def test_resume_into_another_directory_copies_the_journal(tmp_path):
    h = _journaled(tmp_path / "a" / "history.jsonl", 4)
    saved = h.state_dict()
    other = History()
    other.journal_to(tmp_path / "b" / "history.jsonl")
    other.load_state_dict(saved)
    other.log("train/loss", 0.1, 5)
    other.close()
    assert History.load(tmp_path / "b")["train/loss"] == h["train/loss"] + [0.1]
    assert (tmp_path / "a" / "history.jsonl").stat().st_size == saved["journal"]["bytes"]


def test_full_state_loads_and_rewrites_the_journal(tmp_path):
    plain = _journaled(tmp_path / "x.jsonl", 3)
    full = plain.to_dict()
    h = History()
    h.journal_to(tmp_path / "history.jsonl")
    h.load_state_dict(full)  # a checkpoint written before journals existed
    h.close()
    assert (
        History.load(tmp_path / "history.jsonl").to_dict()["series"].keys() == full["series"].keys()
    )
    assert History.load(tmp_path / "history.jsonl")["train/loss"] == plain["train/loss"]


def test_bad_journal_state_and_cut_journal_raise(tmp_path):
    h = _journaled(tmp_path / "history.jsonl", 3)
    state = h.state_dict()
    with pytest.raises(ValueError, match="journal=.*is not allowed"):
        History().load_state_dict({"journal": {"path": 3, "bytes": -1}})
    (tmp_path / "history.jsonl").write_bytes(b"")
    with pytest.raises(ValueError, match="holds 0 bytes of history, the checkpoint needs"):
        History().load_state_dict(state)
    state["journal"]["path"] = str(tmp_path / "gone.jsonl")
    with pytest.raises(ValueError, match="does not exist"):
        History().load_state_dict(state)


def test_load_reads_the_newer_of_json_and_journal_and_a_torn_last_line(tmp_path):
    h = _journaled(tmp_path / "history.jsonl", 2)
    h.close()
    h.save(tmp_path / "old.json")
    h.log("train/loss", 0.3, 3)
    h.flush()
    with open(tmp_path / "history.jsonl", "ab") as fh:
        fh.write(b'["train/loss", 4, 0.')  # a write cut short by SIGKILL
    assert History.load(tmp_path)["train/loss"] == [1.0, 0.5, 0.3]  # no history.json
    h.save(tmp_path / "history.json")
    assert History.load(tmp_path / "history.json")["train/loss"] == [1.0, 0.5, 0.3]
    (tmp_path / "bad.jsonl").write_text('["a", 1, 1.0]\n{nope\n["a", 2, 2.0]\n')
    with pytest.raises(ValueError, match="not a history file"):
        History.load(tmp_path / "bad.jsonl")


def test_attach_history_journals_each_epoch_and_writes_json_at_the_end(tmp_path):
    model = torch.nn.Linear(2, 1)
    data = [torch.randn(4, 2) for _ in range(5)]
    trainer = Engine(lambda e, x: {"loss": model(x).pow(2).mean().item()})
    h = attach_history(trainer, History(), log_every=1, path=tmp_path / "history.json")
    sizes, documents = [], []

    @trainer.on(Events.EPOCH_COMPLETED)
    def look(_):
        sizes.append(len((tmp_path / "history.jsonl").read_text().splitlines()))
        documents.append((tmp_path / "history.json").exists())

    trainer.run(data, max_epochs=3)
    assert sizes == [5, 10, 15]  # each epoch appends its 5 batch losses
    assert documents == [False] * 3  # history.json: at COMPLETED only
    assert History.load(tmp_path / "history.json").to_dict() == h.to_dict()
    assert History.load(tmp_path / "history.jsonl").to_dict()["series"] == h.to_dict()["series"]


def test_a_checkpoint_taken_before_anything_was_journaled_resumes(tmp_path):
    # A preemption at iteration 4 with log_every=10: the checkpoint's journal position is
    # 0 bytes and no history.jsonl was ever written; resume failed with "does not exist".
    journal = tmp_path / "history.jsonl"
    h = History()
    h.journal_to(journal)
    saved = h.state_dict()
    assert saved["journal"]["bytes"] == 0
    journal.unlink(missing_ok=True)
    resumed = History()
    resumed.journal_to(journal)
    resumed.load_state_dict(saved)
    assert len(resumed) == 0
    resumed.log("train/loss", 0.5, 10)
    resumed.close()
    assert History.load(journal)["train/loss"] == [0.5]


def test_the_journal_is_fsynced_before_each_checkpoint_that_points_into_it(
    digits_flat, tmp_path, monkeypatch
):
    # A checkpoint holds an offset into history.jsonl: a power loss must never leave a
    # durable checkpoint and a journal shorter than that offset (resume would refuse
    # it). The store fsyncs the journal first; the History no longer fsyncs it on a
    # worker thread of its own each epoch, unordered with the checkpoint (issue 16).
    import os
    import time

    import ignitrain
    from ignitrain import TrainConfig
    from tests.conftest import make_mlp

    events, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):  # logged once done; the journal's is slow (a busy disk)
        target = os.readlink(f"/proc/self/fd/{fd}")
        name = os.path.basename(target) if target.startswith(str(tmp_path)) else ""
        if name == "history.jsonl":
            time.sleep(0.05)
        real_fsync(fd)
        if name == "history.jsonl" or name.startswith(".checkpoint_periodic"):
            events.append("fsync " + ("journal" if name == "history.jsonl" else "checkpoint"))

    def replace(src, dst, *args, **kwargs):
        if str(dst).startswith(str(tmp_path)) and "checkpoint_periodic" in str(dst):
            events.append("rename periodic")
        real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    cfg = TrainConfig(num_epochs=2, batch_size=128, output_dir=str(tmp_path), progress_bar=False,
                      tensorboard=False, save_best=False)  # fmt: skip
    trainer = ignitrain.create_classification_trainer(
        make_mlp(), cfg, digits_flat.train, digits_flat.val
    )
    trainer.train()
    monkeypatch.undo()
    renames = [i for i, e in enumerate(events) if e == "rename periodic"]
    assert len(renames) == 2, events
    start = 0
    for end in renames:  # each checkpoint: the journal durable before its file is
        segment = events[start:end]
        assert segment.index("fsync journal") < segment.index("fsync checkpoint"), events
        start = end + 1
    assert events.count("fsync journal") == 3, events  # the third: close() at the end
