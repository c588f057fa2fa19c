"""A resume with a changed training length re-plans the schedule (issue 12 item 1).

Real trainers on digits, real checkpoints: a cosine run of 2 epochs resumed with
``num_epochs=4`` must not let its LR climb back up (before: the saved 2-epoch cycle
ended and Ignite's cosine restarted at the base LR), must decay from the LR it stopped
at to the schedule's end value at the new end, and must record the config it used.
"""

from __future__ import annotations

import logging
import math

import pytest
import torch
from ignite.engine import Events

import ignitrain
from ignitrain import TrainConfig
from tests.conftest import make_mlp

pytestmark = pytest.mark.usefixtures("one_thread")

_BASE = dict(
    batch_size=128,
    optimizer="sgd",
    lr=0.1,
    momentum=0.9,
    progress_bar=False,
    tensorboard=False,
    seed=0,
)


def _run(out, digits, **options):
    config = TrainConfig(output_dir=str(out), **{**_BASE, **options})
    trainer = ignitrain.create_classification_trainer(make_mlp(), config, digits.train, digits.val)
    lrs: list[float] = []
    # after the schedule's ITERATION_STARTED handler: the LR this iteration trains with
    trainer.engine.add_event_handler(
        Events.ITERATION_STARTED, lambda e: lrs.append(trainer.optimizer.param_groups[0]["lr"])
    )
    return trainer, lrs


def test_cosine_extended_on_resume_decays_to_its_end_without_jumping_up(
    tmp_path, digits_flat, caplog
):
    out = tmp_path / "run"
    first, before = _run(out, digits_flat, num_epochs=2, lr_scheduler="cosine")
    first.train()
    steps_per_epoch = len(before) // 2

    second, after = _run(out, digits_flat, num_epochs=4, lr_scheduler="cosine", resume="latest")
    with caplog.at_level(logging.INFO, logger="ignitrain"):
        second.train()
    assert second.engine.state.epoch == 4
    assert len(after) == 2 * steps_per_epoch
    lrs = before + after
    assert all(b <= a for a, b in zip(lrs, lrs[1:])), "the LR rose across the resume"
    # continues from the LR it stopped at, over the remaining steps, to eta_min = 0
    remaining = 4 * steps_per_epoch - (len(before) - 1)
    start = before[-1]
    expected = [start * (1 + math.cos(math.pi * j / remaining)) / 2 for j in range(1, remaining)]
    assert after == pytest.approx(expected, rel=1e-9, abs=1e-15)
    # one more step of the plan is its end value: the schedule reaches 0 at the new end
    assert start * (1 + math.cos(math.pi * remaining / remaining)) / 2 == pytest.approx(0.0)
    assert after[-1] < 0.01 * start
    replans = [r.getMessage() for r in caplog.records if "re-planned" in r.getMessage()]
    assert len(replans) == 1
    assert f"planned for {2 * steps_per_epoch} steps, now {4 * steps_per_epoch}" in replans[0]
    last = max((out / "checkpoints").glob("checkpoint_last_*.pt"))
    assert torch.load(last, weights_only=True)["config"]["num_epochs"] == 4


def test_replanned_schedule_resumes_exactly_again(tmp_path, digits_flat):
    # The re-planned state is what the checkpoint holds: a second resume with the same
    # length continues it (no second re-plan, the same values as without the kill).
    out, full_out = tmp_path / "run", tmp_path / "full"
    for where in (out, full_out):
        _run(where, digits_flat, num_epochs=1, lr_scheduler="cosine")[0].train()
    full, full_lrs = _run(
        full_out, digits_flat, num_epochs=3, lr_scheduler="cosine", resume="latest"
    )
    full.train()

    part, part_lrs = _run(out, digits_flat, num_epochs=3, lr_scheduler="cosine", resume="latest")
    part.engine.add_event_handler(Events.EPOCH_COMPLETED(once=2), lambda e: e.terminate())
    part.train()
    rest, rest_lrs = _run(out, digits_flat, num_epochs=3, lr_scheduler="cosine", resume="latest")
    rest.train()
    assert part_lrs + rest_lrs == full_lrs


def test_step_schedule_keeps_its_plan_and_says_so(tmp_path, digits_flat, caplog):
    out = tmp_path / "run"
    _run(out, digits_flat, num_epochs=2, lr_scheduler="step")[0].train()
    second, after = _run(out, digits_flat, num_epochs=3, lr_scheduler="step", resume="latest")
    with caplog.at_level(logging.INFO, logger="ignitrain"):
        second.train()
    assert any("keeps its saved plan" in r.getMessage() for r in caplog.records)
    assert max(after) <= 0.1
