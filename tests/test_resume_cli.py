"""``ignitrain resume --set train.resume_allow=[batch_size]`` (issue 12 item 1): the
override is accepted for that resume and not recorded in the run's config.yaml, so the
next resume decides again. Real ``python -m ignitrain`` subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow  # four CLI runs (each imports torch)

REPO = Path(__file__).resolve().parents[1]
_JOB = REPO / "examples" / "configs" / "digits_mlp.yaml"


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "ignitrain", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_the_batch_size_override_applies_to_one_resume_only(tmp_path):
    out = str(tmp_path / "run")
    quiet = ("--set", "train.progress_bar=false", "--set", "train.tensorboard=false")
    first = _cli("train", str(_JOB), "--set", "train.num_epochs=1", "--set",
                 f"train.output_dir={out}", *quiet)  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    refused = _cli("resume", out, "--set", "train.batch_size=32", "--set", "train.num_epochs=2")
    assert refused.returncode != 0
    assert "batch_size: 64 in the checkpoint, 32 now" in refused.stderr + refused.stdout
    allowed = _cli("resume", out, "--set", "train.batch_size=32", "--set",
                   "train.resume_allow=[batch_size]", "--set", "train.num_epochs=2")  # fmt: skip
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    assert "Resume re-plans the epoch" in allowed.stderr
    recorded = yaml.safe_load((Path(out) / "config.yaml").read_text())
    assert recorded["train"]["batch_size"] == 32 and recorded["train"]["resume_allow"] == []
    again = _cli("resume", out, "--set", "train.batch_size=16", "--set", "train.num_epochs=3")
    assert again.returncode != 0
    assert "batch_size: 32 in the checkpoint, 16 now" in again.stderr + again.stdout
