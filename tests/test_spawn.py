"""Tests for ignitrain/spawn.py: spawned workers' set-up, signal forwarding, the join.

Real processes throughout (``torch.multiprocessing.start_processes`` with the spawn
method, and plain subprocesses for signals).
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.multiprocessing as mp
from torch.multiprocessing import ProcessExitedException

from ignitrain import spawn

_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

import _dist_workers as workers  # noqa: E402


def test_threads_per_process_divides_the_cores():
    cores = len(os.sched_getaffinity(0))
    assert spawn.threads_per_process(1) == cores
    assert spawn.threads_per_process(cores) == 1
    assert spawn.threads_per_process(cores * 4) == 1  # never 0
    with pytest.raises(ValueError, match="Argument nproc must be >= 1, got 0"):
        spawn.threads_per_process(0)


def test_preemption_exit_codes():
    assert spawn.is_preemption_exit(143) and spawn.is_preemption_exit(-15)
    assert spawn.is_preemption_exit(128 + signal.SIGUSR1)
    assert not spawn.is_preemption_exit(1) and not spawn.is_preemption_exit(None)
    assert not spawn.is_preemption_exit(0) and not spawn.is_preemption_exit(-9)
    assert spawn.exit_status(-15) == 143 and spawn.exit_status(138) == 138
    # a SIGUSR1 kill of a rank is a preemption too; the launcher's status is 143 for all
    assert spawn.is_preemption_exit(-signal.SIGUSR1)
    assert spawn.PREEMPTED_EXIT_STATUS == 143


def test_spawned_worker_validates_and_pickles():
    with pytest.raises(TypeError, match="Argument fn must be callable"):
        spawn.SpawnedWorker(3)
    with pytest.raises(ValueError, match="num_threads must be an int >= 1 or None, got 0"):
        spawn.SpawnedWorker(workers.exit_after, num_threads=0)
    worker = spawn.SpawnedWorker(
        workers.exit_after, num_threads=2, logging_setup=spawn.LoggingSetup.of_this_process()
    )
    copy = pickle.loads(pickle.dumps(worker))
    assert copy.fn is workers.exit_after and copy.num_threads == 2


def test_logging_setup_rebuilds_console_handlers_only():
    log = logging.getLogger("ignitrain")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    file_handler = logging.FileHandler(os.devnull)
    # only this test's handlers (an earlier trainer in this process may have added the
    # console handler of ignitrain.console)
    earlier, log.handlers = log.handlers, [handler, file_handler]
    try:
        setup = pickle.loads(pickle.dumps(spawn.LoggingSetup.of_this_process()))
    finally:
        log.handlers = earlier
        file_handler.close()
    (spec,) = setup.handlers["ignitrain"]
    assert (spec.stream, spec.fmt) == ("stderr", "%(levelname)s %(message)s")
    # rebuilt on a logger without handlers (what a spawned interpreter has)
    before = list(log.handlers)
    log.handlers = []
    try:
        setup.apply()
        (rebuilt,) = log.handlers
        assert rebuilt.stream is sys.stderr
        assert rebuilt.formatter._fmt == "%(levelname)s %(message)s"
    finally:
        log.handlers = before


_CHILD = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda s, f: (print("got", s, flush=True), sys.exit(0)))
print("ready", flush=True)
time.sleep(60)
"""


def test_forward_signals_passes_a_signal_on_and_restores_the_handler():
    child = subprocess.Popen([sys.executable, "-c", _CHILD], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    before = signal.getsignal(signal.SIGTERM)
    with spawn.forward_signals([child.pid]) as received:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)  # the handler runs in this (main) thread between bytecodes
    assert received == [signal.SIGTERM]
    assert child.wait(timeout=30) == 0
    assert child.stdout.readline().strip() == f"got {int(signal.SIGTERM)}"
    assert signal.getsignal(signal.SIGTERM) is before


def _start(codes: list[int], delays: list[float]):
    return mp.start_processes(
        workers.exit_after, args=(codes, delays), nprocs=len(codes), join=False
    )


@pytest.mark.slow
def test_join_lets_the_other_ranks_finish_their_preemption_exit():
    # torch's ProcessContext.join SIGTERMs rank 1 as soon as rank 0 exits 143; rank 1
    # would die (-15) in the middle of its own preemption save.
    context = _start([143, 143], [0.0, 3.0])
    with pytest.raises(SystemExit) as info:
        spawn.join_workers(context, preempt_grace_s=60)
    assert info.value.code == 143
    assert [p.exitcode for p in context.processes] == [143, 143]


@pytest.mark.slow
def test_join_stops_the_others_after_the_grace_and_raises_on_a_failure():
    context = _start([143, 0], [0.0, 60.0])
    start = time.monotonic()
    with pytest.raises(SystemExit):
        spawn.join_workers(context, preempt_grace_s=2)
    assert time.monotonic() - start < 30
    assert context.processes[1].exitcode == -signal.SIGTERM
    failed = _start([0, 3], [0.0, 0.0])
    with pytest.raises(ProcessExitedException, match="process 1 terminated with exit code 3"):
        spawn.join_workers(failed, preempt_grace_s=60)
    everyone_fine = _start([0, 0], [0.0, 0.5])
    assert spawn.join_workers(everyone_fine, preempt_grace_s=60) is None
