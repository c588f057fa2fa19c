"""The preemption signals and the one exit status of a preempted run.

Shared by the in-process handler (:mod:`ignitrain.handlers.preemption`) and the
launcher (:mod:`ignitrain.spawn`); kept in a module of their own so the launcher does
not import the handlers package (which imports the checkpoint code, which imports
``ignitrain.distributed``, which imports the launcher).
"""

from __future__ import annotations

import signal

__all__ = ["DEFAULT_SIGNALS", "PREEMPTED_EXIT_STATUS"]

#: The exit status of a preempted run (and of its launcher), whichever signal it was.
PREEMPTED_EXIT_STATUS = 128 + int(signal.SIGTERM)  # 143

#: What schedulers send before they stop a job: SIGTERM (SLURM, Kubernetes) and SIGUSR1
#: (SLURM's ``--signal=USR1@...`` notice), where the platform has it.
DEFAULT_SIGNALS: tuple[int, ...] = (signal.SIGTERM,) + (
    (signal.SIGUSR1,) if hasattr(signal, "SIGUSR1") else ()
)
