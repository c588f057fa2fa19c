"""``output_dir/run.json``: environment, git commit, each start and resume; in the report."""

from __future__ import annotations

import json
import subprocess

import ignite
import pytest
import torch
from ignite.engine import Engine

import ignitrain
from ignitrain.report import write_report
from ignitrain.run_record import attach_run_record, git_commit, read_run_record
from tests.conftest import config_maker, make_mlp

cfg = config_maker(num_epochs=1, batch_size=64, progress_bar=False, seed=0)


def test_start_then_resume_are_recorded_with_the_environment(digits_flat, tmp_path):
    out = tmp_path / "run"
    for epochs, resume in ((1, None), (2, "latest")):
        trainer = ignitrain.create_classification_trainer(
            make_mlp(), cfg(num_epochs=epochs, output_dir=str(out), resume=resume),
            digits_flat.train, digits_flat.val,
        )  # fmt: skip
        trainer.train()
    record = json.loads((out / "run.json").read_text())
    assert record["torch"] == torch.__version__ and record["ignite"] == ignite.__version__
    assert record["ignitrain"] == ignitrain.__version__
    assert record["world_size"] == 1 and record["device"] == "cpu"
    assert record["host"] and record["python"].count(".") == 2
    starts = record["starts"]
    assert [s["kind"] for s in starts] == ["start", "resume"]
    assert starts[1]["epoch"] == 1 and starts[1]["iteration"] > 0
    page = write_report(out).read_text()
    assert "Run record" in page and "resume" in page and torch.__version__ in page


def test_git_commit_of_a_repository_and_outside_one(tmp_path, monkeypatch):
    assert git_commit(tmp_path) == (None, None)
    repo = tmp_path / "repo"
    repo.mkdir()
    run = lambda *a: subprocess.run(["git", *a], cwd=repo, check=True, capture_output=True)  # noqa: E731
    run("init", "-q")
    (repo / "f.txt").write_text("x")
    run("add", "f.txt")
    run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "m")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True)
    assert git_commit(repo) == (head.stdout.strip(), False)
    (repo / "f.txt").write_text("y")
    assert git_commit(repo)[1] is True
    # the record names the commit of the working directory
    monkeypatch.chdir(repo)
    engine = Engine(lambda e, b: None)
    attach_run_record(engine, tmp_path / "out")
    engine.run([0], max_epochs=1)
    assert read_run_record(tmp_path / "out")["git_commit"] == head.stdout.strip()


def test_argument_validation(tmp_path):
    with pytest.raises(TypeError, match="ignite Engine"):
        attach_run_record("engine", tmp_path)
    with pytest.raises(TypeError, match="output_dir must be a path"):
        attach_run_record(Engine(lambda e, b: None), 3)
    (tmp_path / "run.json").write_text("{not json")
    assert read_run_record(tmp_path) is None
