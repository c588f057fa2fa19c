"""Preemption in the middle of an accumulation group under ``parallel="fsdp"`` (issue 14).

FSDP2 keeps a group's gradients unsharded inside the module until the group's last
backward (``set_requires_gradient_sync(False)``; the sharded ``p.grad`` is ``None``), so
a checkpoint taken mid-group cannot hold them. A SIGTERM mid-group therefore finishes
the group, then saves: the resumed run equals an uninterrupted one bit for bit.
"""

import json
import signal

import pytest

from tests.conftest import assert_same_tree
from tests.integration._jobs import load_final
from tests.integration.test_fsdp_resume import _job

pytestmark = pytest.mark.slow

# 20 iterations per epoch, groups of 4: iterations 21-24 are one group of epoch 2
OPTIONS = json.dumps({"grad_accumulation_steps": 4, "num_epochs": 2, "save_every": 0})


def test_sigterm_mid_group_saves_at_the_group_end_and_resumes_exactly(tmp_path_factory):
    reference = tmp_path_factory.mktemp("fsdp_accum_reference")
    _job(reference, 2, "--options", OPTIONS)
    run = tmp_path_factory.mktemp("fsdp_accum_preempted")
    stopped = _job(run, 2, "--term-at", "22", "--options", OPTIONS, check=False)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    assert "checkpoint written after iteration 24 (epoch 2)" in stopped.stderr
    latest = json.loads((run / "checkpoints" / "sharded_latest.json").read_text())
    assert latest == {"folder": "checkpoint_preempt_iter00000024"}
    assert "accumulation group under FSDP" not in stopped.stderr  # nothing was lost
    _job(run, 2, "--resume", "--options", OPTIONS)
    want, got = load_final(reference), load_final(run)
    assert got["iteration"] == want["iteration"] == 40
    assert_same_tree(got["model"], want["model"], "model")
    assert_same_tree(got["optimizer"], want["optimizer"], "optimizer")
    # every logged value too (the checkpointed History names each run's own journal)
    assert _series(run) == _series(reference)


def _series(out):
    return json.loads((out / "history.json").read_text())["series"]
