"""Every example script runs end to end, shortened, as a user runs it: a subprocess.

The full-length runs and their metrics are in the README and the closing notes; here
each script trains an epoch or two on a slice of its data so that a change that breaks
an example fails CI, and checks what the script promises to write and print.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch

from tests._pool import job_pool, selected_params

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# script, shortening arguments, a line the script prints, files it writes
CASES = {
    "classify_digits": (["--epochs", "2"], "test accuracy", ["history.json", "history.png"]),
    "regress_diabetes": (["--epochs", "3"], "test (original units)", ["history.json"]),
    "autoencoder_digits": (["--epochs", "2"], "test pixel MSE", ["reconstructions.png"]),
    "gan_mixture": (["--epochs", "20", "--train-size", "16384"], "modes covered", ["samples"]),
    "seq2seq_reverse": (["--epochs", "1", "--train-size", "2000"], "exact-match", []),
    "language_model": (
        ["--epochs", "1", "--train-bytes", "60000", "--val-bytes", "10000"],
        "val perplexity per byte",
        [],
    ),
}


# the figure each shortened run must reach (measured: classify_digits 0.944, diabetes
# R2 0.397, autoencoder MSE 0.077, seq2seq token accuracy 0.148 (chance ~0.1), language
# model 91 per byte (uniform: 256), GAN 5/8 modes and 46.7% of samples within 3 std at
# seed 0 (seeds 1, 2: 6/8 67.4%, 5/8 59.2%; a collapsed GAN covers 1-2 modes; one short
# epoch covers none: 1280 steps are the fewest found to cover most modes, ~50 s loaded)
FIGURES = {
    "classify_digits": (r"test accuracy ([0-9.]+)", ">=", 0.90),
    "regress_diabetes": (r"test \(original units\):.*R2 ([-0-9.]+)", ">=", 0.25),
    "autoencoder_digits": (r"test pixel MSE ([0-9.]+)", "<=", 0.10),
    "seq2seq_reverse": (r"token accuracy ([0-9.]+)", ">=", 0.12),
    "language_model": (r"val perplexity per byte ([0-9.]+)", "<=", 200.0),
    "gan_mixture": [
        (r"(\d)/8 modes covered", ">=", 4),
        (r"([0-9.]+)% of samples within 3 std", ">=", 35.0),
    ],
}


# One torch thread per job: the jobs of this module run two at a time (tests/_pool.py), one
# per core, instead of one at a time on two threads of tiny ops that leave a core idle.
_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run_example(name: str, out: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "examples" / f"{name}.py"), "--output-dir", str(out)]
    return subprocess.run(
        [*cmd, *CASES[name][0]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,  # a hang guard: ~50 s idle, but two at a time on a loaded machine
        env=_ENV,
        check=False,
    )


def _pooled_runs(request, tmp_path_factory, argname, run):
    """The selected values of ``argname``, each run as ``run(value, output_dir)`` two at a
    time: value -> (output dir, future of the finished process)."""
    outs = {
        value: tmp_path_factory.mktemp(value.split(".")[0]) / "run"
        for value in selected_params(request, argname)
    }
    return outs, job_pool({value: partial(run, value, out) for value, out in outs.items()})


@pytest.fixture(scope="module")
def example_runs(request, tmp_path_factory):
    """Every selected example's shortened run: name -> (output dir, future)."""
    outs, pool = _pooled_runs(request, tmp_path_factory, "name", _run_example)
    with pool as futures:
        yield {name: (outs[name], futures[name]) for name in outs}


@pytest.mark.parametrize("name", sorted(CASES))
def test_example_runs_and_writes_its_outputs(name, example_runs):
    _, printed, files = CASES[name]
    out, future = example_runs[name]
    result = future.result()
    assert result.returncode == 0, result.stderr[-3000:]
    assert printed in result.stdout, result.stdout[-2000:]
    assert "Traceback" not in result.stderr and "UserWarning" not in result.stderr
    for path in files:
        assert (out / path).exists(), f"{name} did not write {path}"
    if name in FIGURES:  # the stated result, printed by the script
        figures = FIGURES[name] if isinstance(FIGURES[name], list) else [FIGURES[name]]
        for pattern, op, bound in figures:
            value = float(re.search(pattern, result.stdout).group(1))
            assert value >= bound if op == ">=" else value <= bound, (name, value, op, bound)
    # every example checkpoints into its output dir, readable without unpickling code
    latest = json.loads((out / "checkpoints" / "checkpoint_latest.json").read_text())
    payload = torch.load(out / "checkpoints" / latest["file"], weights_only=True)
    assert payload["iteration"] > 0 and "config" in payload


# -- every shipped job reaches its stated figure (the README's examples table) --------------

# job file -> (test metric, the figure it must reach, "min" when lower is better)
JOB_FIGURES = {
    "digits_cnn.yaml": ("accuracy", 0.97, "max"),
    "digits_mlp.yaml": ("accuracy", 0.87, "max"),
    "diabetes_mlp.yaml": ("r2", 0.50, "max"),
    "breast_cancer_mlp.json": ("accuracy", 0.95, "max"),
}


def _run_job(job: str, out: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ignitrain", "train", f"examples/configs/{job}"]
    return subprocess.run(
        [*cmd, "--set", f"train.output_dir={out}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=_ENV,
        check=False,
    )


@pytest.fixture(scope="module")
def job_runs(request, tmp_path_factory):
    """Every selected shipped job's full run: job file -> (output dir, future)."""
    outs, pool = _pooled_runs(request, tmp_path_factory, "job", _run_job)
    with pool as futures:
        yield {job: (outs[job], futures[job]) for job in outs}


@pytest.mark.parametrize("job", sorted(JOB_FIGURES))
def test_each_shipped_job_reaches_its_stated_test_figure(job, job_runs):
    metric, figure, mode = JOB_FIGURES[job]
    out, future = job_runs[job]
    result = future.result()
    assert result.returncode == 0, result.stderr[-3000:]
    # printed: the summary's test line names the metric and the checkpoint it used
    test_line = next(line for line in result.stdout.splitlines() if line.startswith("test "))
    assert f"{metric} " in test_line and "best" in test_line, test_line
    value = json.loads((out / "evaluation.json").read_text())["metrics"][metric]
    assert (value >= figure) if mode == "max" else (value <= figure), (job, metric, value)
    # the epoch lines and the final line reach stderr
    assert "Epoch 1/" in result.stderr and "Finished " in result.stderr
