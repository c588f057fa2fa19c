"""Checkpoints that survive crashes, load safely and resume a run where it stopped.

Works on any Ignite ``Engine``. The parts, from the bottom up:

* :func:`save_atomic` / :func:`safe_load`: one file written so that a crash never
  leaves a partial file under the final name, and read back with
  ``torch.load(weights_only=True)`` only, every failure turned into one
  :class:`CheckpointError` that names the file and what is wrong with it.
* :func:`build_payload` / :func:`load_objects` / :func:`load_checkpoint`: what goes in a
  file (``state_dict`` of each object, plus plain metadata) and how it goes back, all
  checked before anything is loaded.
* :class:`CheckpointDir` / :class:`CheckpointStore`: a directory of checkpoints read
  (files, marks, the ``latest`` one) and written (naming, background commit, pointer).
* :func:`attach_checkpoints`: Ignite's own ``Checkpoint`` objects (periodic, best, last,
  preempt) with :class:`DurableSaver`, a ``BaseSaveHandler`` writing through the store.

What Ignite does here and what stays ours (each defect has a test in
``tests/handlers/test_checkpoint.py``):

* Ignite's ``Checkpoint`` decides what to keep (``n_saved``, scores) and names the files
  (``filename_pattern``, ``global_step_transform``); ``Checkpoint.load_objects`` reads our
  files.
* ``DurableSaver``: Ignite's ``Checkpoint`` calls ``remove()`` before it writes, so with
  ``DiskSaver`` and ``n_saved=1`` a failed write leaves no file; ``DiskSaver`` neither
  fsyncs the file nor the directory. Eviction waits until the next file is durable.
* :func:`nan_safe_score`: Ignite ranks a NaN score as best (and then nothing beats it).
* :func:`safe_load`: ``torch.load`` checks no CRC (a bit flip loads silently) and lets
  ``IndexError``/``KeyError`` escape on garbage.
* :func:`load_objects`: ``Checkpoint.load_objects`` loads object by object, so a failure
  half-way leaves the first ones loaded; ``Optimizer.load_state_dict`` takes another
  class's state (Adam's into SGD) and fails only at ``step()``.
* The decisions: the best checkpoint is decided on the evaluator's ``COMPLETED`` (not in
  the trainer's handler order) and the save points run after every handler of their
  event.

Files in a store's directory::

    {prefix}_{kind}_{tag}.pt       one checkpoint
    {prefix}_latest.json           {"file": ..., "kind": ..., "iteration": ..., "epoch": ...}
    .{file}.{random}.tmp           a write in progress; a crash leaves it behind and the
                                   next run's start (or successful save) removes it

    kind       tag                             written
    periodic   iter{N:08d} / epoch{E:04d}      every save_every optimizer steps / each epoch
    best       {metric}={value:.6g}_iter{N:08d}  when the metric is among the n_saved best
    last       iter{N:08d}                     when the training engine completes
    preempt    iter{N:08d}                     on SIGTERM (see ignitrain.handlers.preemption)

e.g. ``checkpoint_periodic_epoch0003.pt``, ``checkpoint_best_accuracy=0.9512_iter00000300.pt``.

A checkpoint file is a flat dict (format version 2), the layout of Ignite's own
checkpoints plus metadata, so ``Checkpoint.load_objects(to_load, torch.load(path,
weights_only=True))`` restores it::

    {"model": model.state_dict(), "optimizer": ..., "trainer": ..., ...,   # the objects
     "ignitrain_format": 2, "ignitrain_objects": ["model", "optimizer", ...],
     "checkpoint": {"kind": ..., "tag": ..., "score": ..., "resumable": ...},
     "iteration": ..., "epoch": ..., "metrics": {...}, "world_size": ...,
     "config": {...}, "model_description": {"class": "pkg.mod.Class", "args": {...}}}

Version 1 (ignitrain 0.1.0: the objects nested under ``"state"``) is converted on load.
Every value is a tensor or plain Python data, so ``torch.load(path, weights_only=True)``
reads it without widening torch's safe globals. RNG states are stored as tensors and
lists (:class:`RNGState`), never as numpy objects.
"""

from ignitrain.handlers.checkpoint.adapter import CheckpointHandler, CheckpointOptions
from ignitrain.handlers.checkpoint.attach import attach_checkpoints
from ignitrain.handlers.checkpoint.files import IN_MEMORY_LIMIT, save_atomic
from ignitrain.handlers.checkpoint.format import (
    FORMAT_KEY,
    FORMAT_VERSION,
    KINDS,
    OBJECTS_KEY,
    CheckpointError,
    as_payload,
    saved_states,
)
from ignitrain.handlers.checkpoint.latest import latest_checkpoint, latest_in, load_checkpoint
from ignitrain.handlers.checkpoint.listing import CheckpointDir
from ignitrain.handlers.checkpoint.loading import safe_load
from ignitrain.handlers.checkpoint.payload import build_payload, payload_from_states, safe_state
from ignitrain.handlers.checkpoint.restore import load_objects
from ignitrain.handlers.checkpoint.rng import RNGState, capture_rng_state, restore_rng_state
from ignitrain.handlers.checkpoint.saver import DurableSaver, nan_safe_score
from ignitrain.handlers.checkpoint.store import CheckpointStore, best_tag
from ignitrain.handlers.modes import infer_mode

__all__ = [
    "CheckpointDir",
    "CheckpointError",
    "CheckpointHandler",
    "CheckpointOptions",
    "CheckpointStore",
    "DurableSaver",
    "FORMAT_KEY",
    "FORMAT_VERSION",
    "IN_MEMORY_LIMIT",
    "KINDS",
    "OBJECTS_KEY",
    "RNGState",
    "as_payload",
    "attach_checkpoints",
    "best_tag",
    "build_payload",
    "capture_rng_state",
    "infer_mode",
    "latest_checkpoint",
    "latest_in",
    "load_checkpoint",
    "load_objects",
    "nan_safe_score",
    "payload_from_states",
    "restore_rng_state",
    "safe_load",
    "safe_state",
    "save_atomic",
    "saved_states",
]
