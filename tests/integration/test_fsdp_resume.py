"""Trainer-level sharded checkpoints under ``parallel="fsdp"`` with 2 real gloo processes.

A run killed with SIGKILL mid-epoch and resumed equals an uninterrupted FSDP run bit for
bit; its checkpoint folders resume on 1 process (resharded, with a warning), load into
an ordinary model on one process, and export to a weights_only-loadable file.
"""

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import assert_same_tree
from tests.integration._jobs import load_final, run_job

JOB = Path(__file__).with_name("_fsdp_resume_job.py")
pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _job(out, nproc, *extra, check=True):
    # a session of its own: --kill-at kills the job's whole process group
    return run_job([sys.executable, JOB, out, str(nproc), *extra], timeout=400, check=check)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp_reference")
    _job(out, 2)
    return out


def _plain_model():
    sys.path.insert(0, str(JOB.parent))
    try:
        from _fsdp_resume_job import make_model
    finally:
        sys.path.remove(str(JOB.parent))
    return make_model()


def test_uninterrupted_run_writes_complete_sharded_folders_only(reference):
    ckpt = reference / "checkpoints"
    assert not list(ckpt.glob("*.pt")), "no single file (it would hold rank 0's shard only)"
    assert not [p for p in ckpt.iterdir() if p.name.startswith(".")], "no temp folder left"
    folders = sorted(p.name for p in ckpt.iterdir() if p.is_dir())
    # n_saved=2 periodic (every 7 steps) and best, and the last one
    assert [f for f in folders if "_periodic_" in f] == [
        "checkpoint_periodic_iter00000049",
        "checkpoint_periodic_iter00000056",
    ]
    assert "checkpoint_last_iter00000060" in folders
    assert len([f for f in folders if "_best_" in f]) == 2
    latest = json.loads((ckpt / "sharded_latest.json").read_text())
    assert latest == {"folder": "checkpoint_last_iter00000060"}
    doc = json.loads((ckpt / "checkpoint_last_iter00000060" / "ignitrain_sharded.json").read_text())
    assert doc["world_size"] == 2 and doc["sharded"] == ["model", "optimizer"]
    assert {"trainer", "rng", "history", "ignitrain_meta"} <= set(doc["extra"])
    assert len(list((ckpt / "checkpoint_last_iter00000060").glob("*.distcp"))) == 2


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(reference, tmp_path):
    # 20 iterations per epoch: killed at 17, resumed from the periodic folder of 14
    killed = _job(tmp_path, 2, "--kill-at", "17", check=False)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "final.pt").exists()
    latest = json.loads((tmp_path / "checkpoints" / "sharded_latest.json").read_text())
    assert latest == {"folder": "checkpoint_periodic_iter00000014"}
    _job(tmp_path, 2, "--resume")
    want, got = load_final(reference), load_final(tmp_path)
    assert got["iteration"] == want["iteration"] == 60
    assert_same_tree(got["model"], want["model"], "model")
    assert_same_tree(got["optimizer"], want["optimizer"], "optimizer")
    assert_same_tree(got["history"], want["history"], "history")


def test_load_checkpoint_of_a_run_dir_gives_an_ordinary_model_the_full_weights(reference):
    import ignitrain

    model = _plain_model()
    with pytest.warns(UserWarning, match="written by 2 process"):
        payload = ignitrain.load_checkpoint(reference, model=model)
    assert payload["iteration"] == 60 and payload["epoch"] == 3
    assert payload["config"]["parallel"] == "fsdp"
    assert_same_tree(model.state_dict(), load_final(reference)["model"], "model")


def test_save_checkpoint_by_hand_under_fsdp_is_a_sharded_folder(reference):
    import ignitrain
    from ignitrain.handlers.sharded import is_sharded_checkpoint
    from ignitrain.resume import find_checkpoint_in_dir

    folder = reference / "manual" / "checkpoint2"
    assert is_sharded_checkpoint(folder)
    assert find_checkpoint_in_dir(folder) == folder
    model = _plain_model()
    with pytest.warns(UserWarning, match="resharded"):
        payload = ignitrain.load_checkpoint(folder, model=model)
    assert payload["iteration"] == 60
    assert_same_tree(model.state_dict(), load_final(reference)["model"], "model")


def test_export_of_a_trainer_run_dir_opens_with_weights_only(reference, tmp_path):
    out = tmp_path / "model.pt"
    proc = subprocess.run(
        [sys.executable, "-m", "ignitrain", "export", str(reference), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    weights = torch.load(out, weights_only=True)
    assert_same_tree(weights, load_final(reference)["model"], "export")
    _plain_model().load_state_dict(weights)


def test_two_process_checkpoint_resumes_on_one_process_with_a_warning(reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "final.pt").unlink()
    # one more epoch on one process: resharded from the folder of iteration 60
    resumed = _job(run, 1, "--resume", "--options", json.dumps({"num_epochs": 4}))
    assert "is loaded by 1: its tensors are resharded" in resumed.stderr
    assert "Resuming a sharded run saved with 2 process(es) on 1" in resumed.stderr
    got, want = load_final(run), load_final(reference)
    assert got["iteration"] == 80  # one more epoch of 20 iterations
    # the three epochs of the 2-process run are kept, the fourth appended
    for name in ("val/accuracy", "train/loss"):
        series, before = got["history"]["series"][name], want["history"]["series"][name]
        assert series["steps"] == [1, 2, 3, 4]
        assert series["values"][:3] == before["values"]
    # on one process nothing is sharded: single files now, newer than the folders,
    # and "latest" (one rule for files and folders) is the newest of them
    from ignitrain.handlers.sharded_run import latest_checkpoint

    newest = latest_checkpoint(run)
    assert newest.suffix == ".pt" and "_last_" in newest.name


def test_one_process_checkpoint_resumes_on_two_sharded_processes(tmp_path):
    # one process: parallel="fsdp" trains like "auto" and writes single files
    _job(tmp_path, 1, "--options", json.dumps({"num_epochs": 2}))
    saved = torch.load(
        tmp_path / "checkpoints" / "checkpoint_last_iter00000040.pt", weights_only=True
    )
    # nothing left to train: the state loaded into the shards is gathered back unchanged
    _job(tmp_path, 2, "--resume", "--options", json.dumps({"num_epochs": 2}))
    got = load_final(tmp_path)
    assert got["iteration"] == 40
    assert_same_tree(got["model"], saved["model"], "model")
    # the file's optimizer state is keyed by parameter id, the gathered one by name
    names = list(got["model"])
    by_name = {names[i]: v for i, v in saved["optimizer"]["state"].items()}
    assert_same_tree(got["optimizer"]["state"], by_name, "optimizer")
    # and training goes on, sharded, from there
    resumed = _job(tmp_path, 2, "--resume", "--options", json.dumps({"num_epochs": 3}))
    assert "Resuming a run saved with 1 process(es) on 2" in resumed.stderr
    assert load_final(tmp_path)["iteration"] == 60
    assert (tmp_path / "checkpoints" / "checkpoint_last_iter00000060" / "extra.pt").is_file()
