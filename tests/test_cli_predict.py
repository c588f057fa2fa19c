"""``ignitrain predict RUN_DIR --data ... --out preds.pt`` on a real run."""

from __future__ import annotations

import pytest
import torch
import yaml

from ignitrain import datasets
from ignitrain.cli import main

JOB = {
    "flavor": "classification",
    "model": {"class": "examples.models.DigitsMLP", "args": {"hidden": 8}},
    "data": {"factory": "ignitrain.datasets.digits", "args": {"seed": 0, "image": False}},
    "train": {"num_epochs": 1, "batch_size": 64, "seed": 0, "progress_bar": False},
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    job = dict(JOB, train=dict(JOB["train"], output_dir=str(root / "run")))
    (root / "job.yaml").write_text(yaml.safe_dump(job))
    assert main(["train", str(root / "job.yaml")]) == 0
    return root / "run"


def test_predict_writes_logits_and_targets_of_the_split(run_dir, tmp_path, capsys):
    out = tmp_path / "preds.pt"
    assert main(["predict", str(run_dir), "--data", "digits:test", "--out", str(out),
                 "--targets"]) == 0  # fmt: skip
    payload = torch.load(out, weights_only=True)
    test = datasets.digits(seed=0, image=False).test
    assert payload["predictions"].shape == (len(test), 10)
    assert torch.equal(payload["targets"], test.tensors[1])
    assert payload["data"] == "ignitrain.datasets.digits:test"
    assert "predictions of" in capsys.readouterr().out


def test_predict_argmax_and_bad_run_dir(run_dir, tmp_path, capsys):
    out = tmp_path / "labels.pt"
    assert main(["predict", str(run_dir), "--out", str(out), "--argmax"]) == 0
    labels = torch.load(out, weights_only=True)["predictions"]
    assert labels.dtype == torch.long and labels.dim() == 1
    assert main(["predict", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["predict", str(run_dir), "--out", str(out), "--ema"]) == 2
    assert "needs TrainConfig.ema_decay" in capsys.readouterr().err


def test_predict_on_a_full_disk_keeps_the_previous_file_whole(
    run_dir, tmp_path, monkeypatch, capsys
):
    # the predictions file is written like a checkpoint: temp file, fsync, rename
    import builtins
    import errno

    out = tmp_path / "labels.pt"
    assert main(["predict", str(run_dir), "--out", str(out), "--argmax"]) == 0
    before = out.read_bytes()
    real_open = builtins.open

    def full_disk(file, mode="r", *args, **kwargs):
        if str(file).endswith(".tmp") and "w" in mode:
            raise OSError(errno.ENOSPC, "No space left on device", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", full_disk)
    assert main(["predict", str(run_dir), "--out", str(out)]) == 1
    monkeypatch.undo()
    assert "No space left on device" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.pt"]
