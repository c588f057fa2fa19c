"""The README's quick start runs as printed and repeats exactly (issue 13)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

from tests._pool import job_pool

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def quick_start() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Quick start") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_quick_start_prints_and_repeats_exactly(tmp_path):
    code = quick_start()
    assert "ignitrain.seed_everything(0)" in code and 'output_dir="runs/quickstart"' in code
    # same code, a fresh output_dir each time (a second run in the same one would be a
    # different thing: its checkpoints are there); two processes at once, one per core
    calls = {
        name: partial(_run, code.replace("runs/quickstart", str(tmp_path / name)), ROOT)
        for name in ("first", "second")
    }
    with job_pool(calls) as futures:
        runs = [future.result() for future in futures.values()]
    results = []
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
        assert "Epoch 1/10" in run.stderr and "Finished " in run.stderr
        results.append(re.search(r"test accuracy (\S+)", run.stdout).group(1))
    assert results[0] == results[1]
    assert float(results[0]) > 0.85
