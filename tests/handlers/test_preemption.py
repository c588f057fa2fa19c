"""Preemption: a signal becomes checkpoint-then-exit at an iteration boundary.

In-process tests send the signal to this process with ``os.kill`` from inside a run;
the slow test runs a real training script in a subprocess and sends it SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from torch import nn

from ignitrain.handlers.checkpoint import (
    CheckpointStore,
    RNGState,
    attach_checkpoints,
    load_checkpoint,
)
from ignitrain.handlers.preemption import attach_preemption

SIGUSR1 = getattr(signal, "SIGUSR1", None)
needs_sigusr1 = pytest.mark.skipif(SIGUSR1 is None, reason="platform without SIGUSR1")


@pytest.fixture
def previous_handler():
    """A Python SIGUSR1 handler installed before the test; restored afterwards."""
    calls = []

    def handler(signum, frame):
        calls.append(signum)

    handler.calls = calls
    original = signal.signal(SIGUSR1, handler)
    yield handler
    signal.signal(SIGUSR1, original)


def engine_signalling_at(iteration: int, signum: int) -> Engine:
    engine = Engine(lambda e, b: None)
    engine.add_event_handler(
        Events.ITERATION_STARTED(once=iteration), lambda _: os.kill(os.getpid(), signum)
    )
    return engine


@needs_sigusr1
def test_signal_saves_after_the_iteration_restores_handler_and_exits(previous_handler):
    engine = engine_signalling_at(3, SIGUSR1)
    saved = []
    handler = attach_preemption(engine, lambda: saved.append(engine.state.iteration) or "ckpt.pt")
    assert signal.getsignal(SIGUSR1) is previous_handler  # installed only while it runs
    during = []
    engine.add_event_handler(
        Events.ITERATION_STARTED(once=1), lambda _: during.append(signal.getsignal(SIGUSR1))
    )
    with pytest.raises(SystemExit) as info:
        engine.run(range(10), max_epochs=2)
    assert info.value.code == 143  # one preemption status, whichever signal (issue 12)
    assert saved == [3]  # the iteration during which the signal arrived was finished
    assert handler.requested and handler.signum == SIGUSR1 and handler.saved == "ckpt.pt"
    assert signal.getsignal(SIGUSR1) is previous_handler
    assert previous_handler.calls == []
    assert during and during[0] is not previous_handler


@needs_sigusr1
def test_signal_at_an_epochs_last_iteration_waits_for_epoch_completed(previous_handler):
    engine = engine_signalling_at(5, SIGUSR1)  # epoch_length 5: the epoch's last iteration
    validated = []
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: validated.append(e.state.epoch))
    saved = []
    attach_preemption(engine, lambda: saved.append(list(validated)))
    with pytest.raises(SystemExit):
        engine.run(range(5), max_epochs=3)
    assert saved == [[1]]  # the checkpoint saw epoch 1's EPOCH_COMPLETED handlers
    assert engine.state.iteration == 5


@needs_sigusr1
def test_exception_raised_handlers_swallow_the_exit_so_exit_if_requested_does_it(previous_handler):
    engine = engine_signalling_at(2, SIGUSR1)
    engine.add_event_handler(Events.EXCEPTION_RAISED, lambda e, exc: None)
    handler = attach_preemption(engine, lambda: None)
    engine.run(range(10), max_epochs=1)  # Ignite hands SystemExit to the handler: no raise
    assert engine.state.iteration == 2
    with pytest.raises(SystemExit) as info:
        handler.exit_if_requested()
    assert info.value.code == 143  # one preemption status, whichever signal (issue 12)


@needs_sigusr1
def test_outside_a_run_signals_go_to_the_previous_handler_and_detach_restores(previous_handler):
    engine = Engine(lambda e, b: None)
    saved = []
    handler = attach_preemption(engine, lambda: saved.append(1))
    os.kill(os.getpid(), SIGUSR1)  # before run: not ours to handle
    engine.run(range(3), max_epochs=1)
    os.kill(os.getpid(), SIGUSR1)  # after run
    assert previous_handler.calls == [SIGUSR1, SIGUSR1]
    assert saved == [] and not handler.requested
    handler.detach()
    assert signal.getsignal(SIGUSR1) is previous_handler
    assert not engine.has_event_handler(handler._iteration_completed, Events.ITERATION_COMPLETED)


@needs_sigusr1
def test_agree_stops_a_process_that_received_no_signal(previous_handler):
    engine = Engine(lambda e, b: None)
    seen = []

    def agree(flag: bool) -> bool:
        seen.append(flag)
        return engine.state.iteration >= 4  # as if another rank had been signalled

    handler = attach_preemption(engine, lambda: "saved", agree=agree)
    with pytest.raises(SystemExit) as info:
        engine.run(range(10), max_epochs=1)
    assert info.value.code == 143
    assert seen == [False] * 4 and not handler.requested and engine.state.iteration == 4


def test_outside_the_main_thread_it_warns_and_installs_nothing():
    before = signal.getsignal(signal.SIGTERM)
    result = {}

    def attach():
        with pytest.warns(RuntimeWarning, match="main thread"):
            result["handler"] = attach_preemption(Engine(lambda e, b: None), lambda: None)

    thread = threading.Thread(target=attach)
    thread.start()
    thread.join()
    assert not result["handler"].installed
    assert signal.getsignal(signal.SIGTERM) is before


def test_argument_validation():
    engine = Engine(lambda e, b: None)
    with pytest.raises(TypeError, match="expected an Ignite Engine"):
        attach_preemption(object(), lambda: None)
    with pytest.raises(TypeError, match="save_fn=3 is not allowed"):
        attach_preemption(engine, 3)
    with pytest.raises(ValueError, match="not SIGKILL"):
        attach_preemption(engine, lambda: None, signals=(signal.SIGKILL,))
    with pytest.raises(ValueError, match="signals=.* is not allowed"):
        attach_preemption(engine, lambda: None, signals=())
    with pytest.raises(TypeError, match="agree=1 is not allowed"):
        attach_preemption(engine, lambda: None, agree=1)


SCRIPT = textwrap.dedent(
    """
    import signal, sys, time
    from pathlib import Path
    import torch
    from torch import nn
    from ignite.engine import Engine, Events
    from ignitrain.handlers.checkpoint import CheckpointStore, RNGState, attach_checkpoints
    from ignitrain.handlers.preemption import attach_preemption

    out = Path(sys.argv[1])
    def previous(signum, frame):
        pass
    signal.signal(signal.SIGTERM, previous)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = [(torch.randn(4, 8), torch.randint(0, 2, (4,))) for _ in range(20)]

    def step(engine, batch):
        x, y = batch
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if engine.state.iteration == 3:
            (out / "running").touch()
        time.sleep(0.05)
        return loss.item()

    trainer = Engine(step)
    store = CheckpointStore(out / "checkpoints")
    objects = {"model": model, "optimizer": opt, "trainer": trainer, "rng": RNGState()}
    ckpt = attach_checkpoints(trainer, objects, store, save_every=0, save_last=True)
    attach_preemption(trainer, lambda: ckpt.save_now("preempt"))
    try:
        trainer.run(data, max_epochs=100)
    finally:
        restored = signal.getsignal(signal.SIGTERM) is previous
        (out / "restored").write_text(str(restored))
    """
)


@pytest.mark.slow
def test_sigterm_to_a_training_process_checkpoints_and_exits_143(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "running").exists():
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "training never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, output
    assert "Preempted (received SIGTERM)" in output and "status 143" in output
    assert (tmp_path / "restored").read_text() == "True"
    files = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.pt"))
    assert len(files) == 1 and files[0].startswith("checkpoint_preempt_iter"), files  # no "last"
    store = CheckpointStore(tmp_path / "checkpoints")
    path = store.latest_path()
    assert path == tmp_path / "checkpoints" / files[0]
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    payload = load_checkpoint(path, model=model)
    assert payload["trainer"]["iteration"] == payload["iteration"] >= 3
    assert f"iter{payload['iteration']:08d}" in path.name


def test_checkpoint_handler_save_now_writes_a_preempt_checkpoint(tmp_path):
    model = nn.Linear(2, 2)
    engine = Engine(lambda e, b: None)
    store = CheckpointStore(tmp_path)
    ckpt = attach_checkpoints(engine, {"model": model, "rng": RNGState()}, store, save_every=0)
    engine.add_event_handler(Events.ITERATION_COMPLETED(once=2), lambda _: ckpt.save_now("preempt"))
    engine.run(range(3), max_epochs=1)
    assert sorted(p.name for p in Path(tmp_path).glob("*.pt")) == [
        "checkpoint_last_iter00000003.pt",
        "checkpoint_preempt_iter00000002.pt",
    ]
    assert torch.equal(
        load_checkpoint(tmp_path / "checkpoint_preempt_iter00000002.pt")["model"]["weight"],
        model.weight,
    )
