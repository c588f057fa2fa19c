"""ignitrain/cli/offline.py: loading a run's job and checkpoint without training it."""

import json

import pytest
import torch
import yaml

from ignitrain import jobs
from ignitrain.cli.offline import (
    job_of_checkpoint,
    parse_data_arg,
    resolve_checkpoint,
    restore_offline,
    run_dir_of,
)
from ignitrain.errors import JobError
from ignitrain.handlers.checkpoint import safe_load

pytestmark = pytest.mark.usefixtures("one_thread")

JOB = {
    "flavor": "classification",
    "model": {"class": "examples.models.DigitsMLP", "args": {"hidden": 8}},
    "data": {"factory": "ignitrain.datasets.digits", "args": {"seed": 0, "image": False}},
    "train": {
        "num_epochs": 1,
        "lr": 0.01,
        "batch_size": 64,
        "save_every": -1,
        "seed": 0,
        "progress_bar": False,
        "verbose": False,
        "tensorboard": False,
    },
}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A real one-epoch digits run: ``(job, run directory, its checkpoint)``."""
    run = tmp_path_factory.mktemp("offline") / "run"
    job = json.loads(json.dumps(JOB))
    job["train"]["output_dir"] = str(run)
    path = run.parent / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    job = jobs.load_job(path)
    jobs.build_trainer(job).train()
    jobs.write_job(job, run / "config.yaml")
    # the one written when training completed (besides the periodic and the best copy)
    (checkpoint,) = (run / "checkpoints").glob("checkpoint_last_*.pt")
    return job, run, checkpoint


def test_parse_data_arg_defaults_to_the_test_split_and_checks_the_split():
    assert parse_data_arg(None) == (None, "test")
    assert parse_data_arg("iris") == ("iris", "test")
    assert parse_data_arg("digits:val") == ("digits", "val")
    assert parse_data_arg(":train") == (None, "train")
    with pytest.raises(JobError, match="split 'dev' must be train, val or test"):
        parse_data_arg("digits:dev")


def test_run_dir_of_a_checkpoint(tmp_path):
    assert run_dir_of(tmp_path / "run" / "checkpoints" / "a.pt") == tmp_path / "run"
    assert run_dir_of(tmp_path / "loose" / "a.pt") == tmp_path / "loose"


def test_missing_job_file_and_checkpoint_are_named(tmp_path):
    lone = tmp_path / "lone.pt"
    lone.write_bytes(b"")
    with pytest.raises(JobError, match="no config.yaml next to .*lone.pt.*--config JOB.yaml"):
        job_of_checkpoint(lone, None)
    with pytest.raises(JobError, match="checkpoint '.*nothing.pt' does not exist"):
        resolve_checkpoint(str(tmp_path / "nothing.pt"))
    with pytest.raises(JobError, match="no valid checkpoint"):
        resolve_checkpoint(str(tmp_path))


def test_job_of_checkpoint_reads_the_runs_config(trained_run):
    job, run, checkpoint = trained_run
    assert job_of_checkpoint(checkpoint, None)["train"]["output_dir"] == str(run)
    assert resolve_checkpoint(str(run)) == checkpoint  # the newest valid one


@pytest.mark.parametrize("whole_state", [False, True])
def test_restore_offline_loads_the_checkpoint_weights_and_writes_nothing(trained_run, whole_state):
    job, run, checkpoint = trained_run
    before = sorted(p.name for p in run.rglob("*"))
    restored = restore_offline(job, checkpoint, data="digits:val", whole_state=whole_state)
    saved = safe_load(checkpoint)
    assert (restored.epoch, restored.iteration) == (saved["epoch"], saved["iteration"]) != (0, 0)
    weights = restored.trainer.model.state_dict()
    for key, value in saved["model"].items():
        assert torch.equal(weights[key].cpu(), value), key
    assert restored.label == "ignitrain.datasets.digits:val"
    assert restored.trainer.config.output_dir is None
    assert sorted(p.name for p in run.rglob("*")) == before


@pytest.mark.parametrize("whole_state", [False, True])
def test_restore_offline_turns_a_corrupt_checkpoint_into_a_job_error(
    trained_run, tmp_path, whole_state
):
    job, _, _ = trained_run
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(JobError, match="cannot load checkpoint '.*bad.pt'"):
        restore_offline(job, bad, whole_state=whole_state)
