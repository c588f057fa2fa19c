"""The resume rules (ignitrain/resume_rules.py) for a sharded (FSDP) checkpoint folder,
on 2 real gloo processes (issue 12 item 1). Before, ``_resume_sharded`` loaded a folder
without comparing any option: another optimizer class resumed, a new ``weight_decay``
was silently replaced by the saved one. The job is tests/integration/_fsdp_resume_job.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

JOB = Path(__file__).with_name("_fsdp_resume_job.py")
pytestmark = pytest.mark.slow


def _job(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(JOB), str(out), "2", *extra],
        capture_output=True,
        text=True,
        timeout=400,
        start_new_session=True,
    )


def test_sharded_resume_refuses_another_optimizer_and_applies_a_new_weight_decay(tmp_path):
    out = tmp_path / "run"
    first = _job(out, "--options", json.dumps({"num_epochs": 1}))
    assert first.returncode == 0, first.stderr[-3000:]
    refused = _job(out, "--resume", "--options", json.dumps({"num_epochs": 2, "optimizer": "sgd"}))
    assert refused.returncode != 0
    assert "optimizer: 'adam' in the checkpoint, 'sgd' now" in refused.stderr, refused.stderr[
        -3000:
    ]
    applied = _job(
        out, "--resume", "--options", json.dumps({"num_epochs": 2, "weight_decay": 1e-4})
    )
    assert applied.returncode == 0, applied.stderr[-3000:]
    final = torch.load(out / "final.pt", weights_only=True)
    assert final["iteration"] == 2 * 20
    groups = final["optimizer"]["param_groups"]
    assert groups and all(g["weight_decay"] == 1e-4 for g in groups)
