"""Graceful preemption: on SIGTERM (or SIGUSR1) checkpoint, then exit with status 143.

Clusters (Slurm, Kubernetes, spot instances) announce a kill with SIGTERM and follow
with SIGKILL after a grace period. :func:`attach_preemption` turns that first signal
into a clean stop of any Ignite ``Engine``::

    signal arrives          handler records it; nothing else (no I/O in a signal handler)
    ITERATION_COMPLETED     save_fn() writes the "preempt" checkpoint, the previous signal
                            handlers come back, a warning is logged, engine.terminate()
                            -- at the epoch's last iteration this waits for EPOCH_COMPLETED,
                            so validation and history of that epoch are in the checkpoint
    TERMINATE               raise SystemExit(143), whichever signal it was

One exit status for every preemption, :data:`PREEMPTED_EXIT_STATUS` (143, the shell's
status of a process ended by SIGTERM): a job script or scheduler tests one number to
requeue (``[ $? -eq 143 ] && scontrol requeue ...``), whether the notice came as SIGTERM
(Kubernetes, Slurm's kill) or as Slurm's early ``--signal=USR1@60``. 128 + signum would
give 138 for SIGUSR1, which such a script reads as a failure and does not requeue (issue
12 asks 143 for both). The log line names the signal received.

The signal handlers are installed when the engine's run starts (``STARTED``) and the
previous ones restored when it ends (``COMPLETED``/``TERMINATE``), never at attach
time: a script that builds a trainer and never runs it keeps its own SIGTERM
behaviour. A run that ends with an exception fires neither event (and an
``EXCEPTION_RAISED`` handler would make Ignite swallow the exception), so
``Trainer.train()`` restores them in a ``finally``; with a plain engine call
:meth:`PreemptionHandler.restore` yourself after a failed ``run`` if the process goes
on. A signal that arrives while no run is active goes to the previous handler, as if
this one were not installed (a finished run must not ignore SIGTERM).

Ignite passes an exception raised inside ``Engine.run`` to the engine's
``EXCEPTION_RAISED`` handlers instead of raising it when there are any. With such
handlers the ``SystemExit`` may be swallowed and ``run`` returns: call
:meth:`PreemptionHandler.exit_if_requested` after ``run`` to exit anyway.

Several processes: every rank must stop at the same iteration. Pass ``agree``, a
function every rank calls at every iteration with its local flag and that returns the
flag agreed over all ranks (e.g. an all-reduce MAX); :attr:`PreemptionHandler.requested`
is the local flag.

Gradient accumulation under FSDP: pass ``boundary``, a predicate on the engine that is
true at the last micro-batch of an accumulation group. A stop agreed in the middle of a
group then runs on to that micro-batch (at most ``k - 1`` more iterations) and saves
there: FSDP2 keeps a group's gradients unsharded inside the module until its last
backward, where no checkpoint can reach them (issue 14).
"""

from __future__ import annotations

import logging
import signal
import threading
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from ignite.engine import Engine, Events

from ignitrain.errors import is_count
from ignitrain.signals import DEFAULT_SIGNALS, PREEMPTED_EXIT_STATUS

__all__ = ["DEFAULT_SIGNALS", "PREEMPTED_EXIT_STATUS", "PreemptionHandler", "attach_preemption"]


logger = logging.getLogger(__name__)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class PreemptionHandler:
    """Turns a termination signal into checkpoint-and-exit at an iteration boundary.

    ``engine.state.stop_reason`` becomes ``"signal"`` when it stops the run.

    Created by :func:`attach_preemption`; see the module docstring for the sequence.

    Attributes:
        engine: The engine it stops.
        save_fn: Called once, outside the signal handler, to write the checkpoint.
        signals: The signal numbers it handles.
        exit_code: :data:`PREEMPTED_EXIT_STATUS` (143) once it acted, else ``None``.
        saved: What ``save_fn`` returned (e.g. the checkpoint path), once it acted.
    """

    stop_reason = "signal"  # read by ignitrain.handlers.stopping.record_stop_reasons

    def __init__(
        self,
        engine: Engine,
        save_fn: Callable[[], Any],
        signals: tuple[int, ...],
        agree: Callable[[bool], bool] | None = None,
        boundary: Callable[[Engine], bool] | None = None,
    ):
        self.engine = engine
        self.boundary = boundary
        self.save_fn = save_fn
        self.signals = signals
        self.agree = agree
        self.exit_code: int | None = None
        self.saved: Any = None
        self._signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._running = False
        self._deferred = False
        self._agreed_stop = False  # agreed mid-group: act at the group's end (boundary)
        self._main_thread = True
        self._handlers: list[tuple[Any, Callable]] = []

    # -- signals ------------------------------------------------------------------

    @property
    def requested(self) -> bool:
        """Whether this process received one of the signals."""
        return self._signum is not None

    @property
    def signum(self) -> int | None:
        """The first signal received, or ``None``."""
        return self._signum

    @property
    def installed(self) -> bool:
        """Whether the signal handlers are in place."""
        return bool(self._previous)

    def install(self) -> None:
        """Install the signal handlers; warn and do nothing outside the main thread."""
        if self.installed:
            return
        if threading.current_thread() is not threading.main_thread():
            if self._main_thread:
                warnings.warn(
                    "attach_preemption: signal handlers can only be installed from the main "
                    "thread; preemption signals will not be handled",
                    RuntimeWarning,
                    stacklevel=3,
                )
            self._main_thread = False
            return
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def restore(self) -> None:
        """Put the previous signal handlers back (the run is over for this handler)."""
        self._running = False
        previous, self._previous = self._previous, {}
        for signum, handler in previous.items():
            # None: the previous handler was not installed from Python; the default is
            # the closest we can restore.
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)

    def _on_signal(self, signum: int, frame: Any) -> None:
        # Runs between two bytecodes of the main thread: record, nothing more.
        if self._running:
            if self._signum is None:
                self._signum = signum
            return
        self._forward(signum, frame)

    def _forward(self, signum: int, frame: Any) -> None:
        previous = self._previous.get(signum)
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_IGN:
            return
        else:  # the default action (terminate): let the kernel do it
            signal.signal(signum, signal.SIG_DFL)
            self._previous.pop(signum, None)
            signal.raise_signal(signum)

    # -- engine events ------------------------------------------------------------

    def _on(self, event: Any, fn: Callable) -> None:
        self.engine.add_event_handler(event, fn)
        self._handlers.append((event, fn))

    def attach(self) -> PreemptionHandler:
        """Register the engine handlers (the signal handlers come with each run)."""
        if threading.current_thread() is not threading.main_thread():
            self.install()  # only warns: a run in this thread cannot handle signals
        self._on(Events.STARTED, self._started)
        self._on(Events.ITERATION_COMPLETED, self._iteration_completed)
        self._on(Events.EPOCH_COMPLETED, self._epoch_completed)
        self._on(Events.COMPLETED, self._stopped)
        self._on(Events.TERMINATE, self._stopped)
        return self

    def detach(self) -> None:
        """Restore the previous signal handlers and remove the engine handlers."""
        self.restore()
        for event, fn in self._handlers:
            if self.engine.has_event_handler(fn, event):
                self.engine.remove_event_handler(fn, event)
        self._handlers = []
        if self.engine.has_event_handler(self._raise_exit, Events.TERMINATE):
            self.engine.remove_event_handler(self._raise_exit, Events.TERMINATE)

    def _started(self, _: Engine) -> None:
        self._running = True
        self._deferred = self._agreed_stop = False
        self.install()

    def _stopped(self, _: Engine) -> None:
        self._running = False
        self.restore()

    def _agreed(self) -> bool:
        if self.agree is None:
            return self.requested
        return bool(self.agree(self.requested))

    def _iteration_completed(self, engine: Engine) -> None:
        # Runs every iteration (issue 16): in one process a single attribute read
        # unless a signal arrived; with ``agree`` every rank still calls it at every
        # iteration, so that all ranks stop at the same one.
        if self.agree is None and self._signum is None:
            return
        if self.exit_code is not None or self._deferred:
            return
        # once agreed (the same iteration on every rank) no rank calls agree again
        if not self._agreed_stop and not self._agreed():
            return
        self._agreed_stop = True
        if self.boundary is not None and not self.boundary(engine):
            return  # finish the accumulation group first
        length = engine.state.epoch_length
        if length and engine.state.iteration % length == 0:
            # Saving now would skip this epoch's EPOCH_COMPLETED handlers on resume.
            self._deferred = True
            return
        self._act(engine)

    def _epoch_completed(self, engine: Engine) -> None:
        if self._deferred and self.exit_code is None:
            self._act(engine)

    def _act(self, engine: Engine) -> None:
        try:
            self.saved = self.save_fn()
        finally:
            self.restore()
        signum = self._signum if self._signum is not None else signal.SIGTERM
        self.exit_code = PREEMPTED_EXIT_STATUS  # one status for every signal (module doc)
        where = f"iteration {engine.state.iteration} (epoch {engine.state.epoch})"
        saved = f": {self.saved}" if self.saved is not None else ""
        reason = (
            f"received {_signal_name(signum)}"
            if self.requested
            else "another process was preempted"
        )
        logger.warning(
            "Preempted (%s): checkpoint written after %s%s. Stopping training and exiting "
            "with status %d; resume from this checkpoint.",
            reason,
            where,
            saved,
            self.exit_code,
        )
        engine.add_event_handler(Events.TERMINATE, self._raise_exit)
        engine.terminate()

    def _raise_exit(self, engine: Engine) -> None:
        engine.remove_event_handler(self._raise_exit, Events.TERMINATE)
        raise SystemExit(self.exit_code)

    def exit_if_requested(self) -> None:
        """Raise ``SystemExit(143)`` if the handler stopped the run.

        Needed after ``engine.run`` only when the engine has ``EXCEPTION_RAISED``
        handlers, which make Ignite swallow the ``SystemExit`` raised at TERMINATE.
        """
        if self.exit_code is not None:
            raise SystemExit(self.exit_code)


def attach_preemption(
    engine: Engine,
    save_fn: Callable[[], Any],
    signals: Iterable[int] = DEFAULT_SIGNALS,
    *,
    agree: Callable[[bool], bool] | None = None,
    boundary: Callable[[Engine], bool] | None = None,
) -> PreemptionHandler:
    """Checkpoint and exit with status 143 when a preemption signal arrives.

    Attach it after the validation and history handlers (see the module docstring).

    Args:
        engine: The training engine (any Ignite ``Engine``).
        save_fn: Writes the checkpoint, e.g.
            ``lambda: checkpoints.save_now("preempt")``; its return value is logged.
        signals: Signals to handle (default: SIGTERM, and SIGUSR1 where it exists).
        agree: Optional ``flag -> flag`` function called on every rank at every
            iteration to agree on stopping (an all-reduce); ``None`` for one process.
        boundary: Optional ``engine -> bool``: save only at iterations where it is true
            (the last micro-batch of an accumulation group under FSDP); a stop agreed
            elsewhere waits for the next such iteration. ``None``: any iteration.

    Returns:
        The :class:`PreemptionHandler` (``requested``, ``detach()``,
        ``exit_if_requested()``).

    Raises:
        TypeError, ValueError: A bad argument, named with what is allowed.

    Example:
        >>> handler = attach_preemption(trainer, lambda: ckpt.save_now("preempt"))  # doctest: +SKIP
        >>> trainer.run(loader, max_epochs=10)  # exits 143 on SIGTERM/SIGUSR1  # doctest: +SKIP
    """
    if not isinstance(engine, Engine):
        raise TypeError(f"Argument engine={engine!r} is not allowed: expected an Ignite Engine")
    if not callable(save_fn):
        raise TypeError(f"Argument save_fn={save_fn!r} is not allowed: expected a callable")
    if agree is not None and not callable(agree):
        raise TypeError(f"Argument agree={agree!r} is not allowed: expected a callable or None")
    chosen = tuple(signals)
    allowed = {int(s) for s in signal.valid_signals()} - {
        int(getattr(signal, n)) for n in ("SIGKILL", "SIGSTOP") if hasattr(signal, n)
    }
    bad = [s for s in chosen if not is_count(s) or s not in allowed]
    if not chosen or bad:
        raise ValueError(
            f"Argument signals={signals!r} is not allowed: expected catchable signal numbers "
            "such as signal.SIGTERM (not SIGKILL/SIGSTOP)"
        )
    if boundary is not None and not callable(boundary):
        raise TypeError(
            f"Argument boundary={boundary!r} is not allowed: expected a callable or None"
        )
    return PreemptionHandler(engine, save_fn, chosen, agree, boundary).attach()
