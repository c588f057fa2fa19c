"""Checkpoints that survive crashes, load safely and resume a run where it stopped.

Works on any Ignite ``Engine``. The parts, from the bottom up:

* :func:`save_atomic` / :func:`safe_load`: one file written so that a crash never
  leaves a partial file under the final name, and read back with
  ``torch.load(weights_only=True)`` only, every failure turned into one
  :class:`CheckpointError` that names the file and what is wrong with it.
* :func:`build_payload` / :func:`load_objects` / :func:`load_checkpoint`: what goes in a
  file (``state_dict`` of each object, plus plain metadata) and how it goes back, all
  checked before anything is loaded.
* :class:`CheckpointStore`: a directory of checkpoints with a naming scheme, a
  background commit and a ``latest`` pointer.
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

from __future__ import annotations

import contextlib
import copy
import io
import itertools
import json
import math
import os
import pickle
import random
import re
import secrets
import shutil
import warnings
import zipfile
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers.checkpoint import BaseSaveHandler, Checkpoint
from torch import nn

from ignitrain.distributed import own_rank_state, with_rank_states
from ignitrain.handlers._modes import infer_mode, resolve_mode

__all__ = [
    "FORMAT_KEY",
    "FORMAT_VERSION",
    "KINDS",
    "CheckpointError",
    "save_atomic",
    "safe_load",
    "capture_rng_state",
    "restore_rng_state",
    "RNGState",
    "build_payload",
    "load_objects",
    "load_checkpoint",
    "latest_in",
    "CheckpointStore",
    "CheckpointHandler",
    "DurableSaver",
    "OBJECTS_KEY",
    "as_payload",
    "attach_checkpoints",
    "nan_safe_score",
    "payload_from_states",
    "safe_state",
    "saved_states",
    "infer_mode",
    "best_tag",
]

FORMAT_KEY = "ignitrain_format"
FORMAT_VERSION = 2
#: Names of the saved objects in a version-2 file (the other top-level keys are metadata).
OBJECTS_KEY = "ignitrain_objects"
KINDS = ("periodic", "best", "last", "preempt")
_RESERVED_KEYS = (FORMAT_KEY, OBJECTS_KEY, "checkpoint")


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the objects it should be loaded into."""


# -- atomic writing ------------------------------------------------------------------


def _temp_path(path: Path) -> Path:
    # Same directory, so os.replace is a rename within one filesystem (atomic).
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _fsync_dir(dirname: Path) -> None:
    # The rename itself lives in the directory entry: without this a power loss can
    # undo it. Some platforms (Windows) cannot open a directory; nothing to do there.
    try:
        fd = os.open(dirname, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_temp(obj: Any, path: Path) -> Path:
    """``torch.save`` ``obj`` to a fresh temp file next to ``path`` (flushed, not yet fsynced)."""
    tmp = _temp_path(path)
    try:
        # A Python file object (not a path) so a full disk surfaces as OSError(ENOSPC).
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
    except BaseException:
        _remove_quietly(tmp)
        raise
    return tmp


#: A background store serialises checkpoints holding up to this many bytes of tensor
#: data to memory and leaves the file write to its worker; a larger state is written
#: by the caller. Measured on the CPU: to memory is 3-4x faster up to 16 MiB, about
#: even at 64 MiB (the growing buffer copies itself) and slower beyond; nor does a big
#: model then need a second copy of its state in RAM.
IN_MEMORY_LIMIT = 32 * 2**20


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(_tensor_bytes(v) for v in obj.values())
    # lists of plain values (History series, RNG states) can be long: not walked
    if isinstance(obj, (list, tuple)) and obj and not isinstance(obj[0], _PLAIN_LEAVES):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _serialize(obj: Any) -> memoryview:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getbuffer()


def _write_bytes_temp(data: memoryview, path: Path) -> Path:
    """``data`` to a fresh temp file next to ``path`` in one write (flushed, not fsynced)."""
    tmp = _temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
    except BaseException:
        _remove_quietly(tmp)
        raise
    return tmp


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDWR)  # Windows needs write access to flush
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _commit(tmp: Path, path: Path, *, synced: bool = False) -> None:
    """Make a finished temp file durable, rename it onto ``path``, make the rename durable.

    Kept apart from the write so a background store can run it off the training thread.
    ``synced``: the temp file's data is already on disk (a hard link to a committed file).
    """
    try:
        if not synced:
            _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise
    _fsync_dir(path.parent)


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` ``obj`` to ``path`` so that ``path`` is never a partial file.

    Writes a temp file (``.{name}.{random}.tmp``) in the same directory, flushes and
    fsyncs it, renames it onto ``path`` with ``os.replace`` and fsyncs the directory. On
    any error the temp file is removed and the error re-raised; ``path`` keeps its
    previous content.

    Args:
        obj: What to save (a payload from :func:`build_payload`, or anything
            ``torch.save`` takes).
        path: The final file name.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OSError: The write, fsync or rename failed (e.g. ``ENOSPC``).
    """
    path = Path(path)
    _commit(_write_temp(obj, path), path)
    return path


def _write_json_atomic(data: Mapping[str, Any], path: Path) -> None:
    tmp = _temp_path(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f)
    except BaseException:
        _remove_quietly(tmp)
        raise
    _commit(tmp, path)


# -- safe loading --------------------------------------------------------------------


def _verify_zip(path: Path) -> None:
    """Check every record's CRC-32: ``torch.load`` does not, so flipped bits load silently."""
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                # CRC 0 on a non-empty record: written with torch's CRC turned off
                # (torch.serialization.set_crc32_options(False)); nothing to compare.
                if info.CRC == 0 and info.file_size:
                    continue
                with zf.open(info) as record:
                    while record.read(1 << 24):
                        pass
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError) as e:
        raise CheckpointError(
            f"Checkpoint {path} is corrupted (truncated or bit-flipped): {e}"
        ) from e
    except Exception as e:  # zlib.error, UnicodeDecodeError on garbled names...
        raise CheckpointError(f"Checkpoint {path} is corrupted: {type(e).__name__}: {e}") from e


def _explain_unpickling(path: Path, error: Exception) -> CheckpointError:
    text = str(error)
    unsafe = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"[Uu]nsupported global", text)
    if unsafe:
        name = unsafe.group(1) if unsafe.groups() else "a Python object"
        return CheckpointError(
            f"Checkpoint {path} was refused as unsafe: loading it would import and call "
            f"{name}, which could run arbitrary code. ignitrain only loads with "
            "torch.load(weights_only=True); do not load this file unless you wrote it."
        )
    with open(path, "rb") as f:
        head = f.read(64).lstrip()
    if head[:1] in (b"{", b"["):
        what = "looks like a JSON/text file"
    else:
        what = "is not a PyTorch checkpoint (or is a pickle that weights_only loading refuses)"
    detail = text.split("WeightsUnpickler error:")[-1].strip().splitlines()
    reason = detail[0] if detail else text[:200]
    return CheckpointError(f"Checkpoint {path} {what}: {reason}")


def _upgrade_v1(obj: dict, source: str) -> dict:
    """An ignitrain 0.1.0 file (objects nested under ``"state"``) in today's flat layout."""
    state = obj["state"]
    meta = {k: v for k, v in obj.items() if k not in (FORMAT_KEY, "state")}
    clash = sorted(set(state) & set(meta))
    if clash:
        raise CheckpointError(
            f"Checkpoint {source} (format 1) cannot be converted: object name(s) {clash} "
            "clash with metadata keys"
        )
    return {FORMAT_KEY: FORMAT_VERSION, OBJECTS_KEY: list(state), **state, **meta}


def _from_foreign(obj: Any, source: str) -> dict:
    """A file written by Ignite's ``Checkpoint``/``ModelCheckpoint`` as a payload.

    Ignite saves ``{name: state_dict}`` (or one object's ``state_dict`` alone); every
    top-level dict value is taken as an object's state, the rest as metadata.
    """
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"Checkpoint {source} is not a checkpoint: it holds a {type(obj).__name__}, "
            "expected a dict"
        )
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        obj = {"model": obj}  # ModelCheckpoint of one model: the bare state_dict
    names = [k for k, v in obj.items() if isinstance(k, str) and isinstance(v, Mapping)]
    if not names:
        raise CheckpointError(f"Checkpoint {source} holds no state_dict of any object")
    return {FORMAT_KEY: FORMAT_VERSION, OBJECTS_KEY: names, **obj, "foreign": True}


def as_payload(obj: Any, source: str, *, foreign: bool = False) -> dict:
    """Check a loaded checkpoint and return it in the current (flat) layout.

    Version 2 is returned as is, version 1 (ignitrain 0.1.0) converted; with ``foreign``
    a file without ignitrain's marker (Ignite's own checkpoints) is accepted too.

    Raises:
        CheckpointError: ``obj`` is none of these, naming ``source``.
    """
    if isinstance(obj, dict) and FORMAT_KEY not in obj and foreign:
        return _from_foreign(obj, source)
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"Checkpoint {source} is not an ignitrain checkpoint: it holds a "
            f"{type(obj).__name__}, expected a dict with {FORMAT_KEY!r}: {FORMAT_VERSION}"
        )
    if FORMAT_KEY not in obj:
        keys = ", ".join(repr(k) for k in list(obj)[:8]) or "none"
        raise CheckpointError(
            f"Checkpoint {source} is not an ignitrain checkpoint: no {FORMAT_KEY!r} key "
            f"(keys: {keys}). A bare state_dict loads with "
            "model.load_state_dict(torch.load(path, weights_only=True)); a file of Ignite's "
            "ModelCheckpoint with trainer.resume(path) or load_checkpoint(path, ...)."
        )
    version = obj[FORMAT_KEY]
    if version == 1 and isinstance(obj.get("state"), dict):
        return _upgrade_v1(obj, source)
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"Checkpoint {source} has format version {version!r}; this ignitrain "
            f"reads versions 1 and {FORMAT_VERSION}"
        )
    names = obj.get(OBJECTS_KEY)
    if not (isinstance(names, list) and all(isinstance(n, str) and n in obj for n in names)):
        raise CheckpointError(
            f"Checkpoint {source} has no valid {OBJECTS_KEY!r} list of its saved objects"
        )
    return obj


def saved_states(payload: Mapping[str, Any]) -> dict[str, Any]:
    """``{name: state_dict}`` of the objects saved in a payload (metadata left out)."""
    return {name: payload[name] for name in payload[OBJECTS_KEY]}


def safe_load(path: str | os.PathLike, *, foreign: bool = False) -> dict:
    try:
        return _safe_load(Path(path), foreign)
    except OSError as e:  # unreadable (permissions, a vanished file, a FIFO...)
        raise CheckpointError(f"Checkpoint {path} cannot be read: {e}") from e


safe_load.__doc__ = None  # set below, after _safe_load


def _safe_load(path: Path, foreign: bool) -> dict:
    """Read an ignitrain checkpoint with ``torch.load(weights_only=True)`` and check it.

    Besides the format, every zip record's CRC-32 is verified, because ``torch.load``
    does not check them and a bit flip in tensor data would otherwise load silently.

    Args:
        path: The checkpoint file.
        foreign: Also accept a file written by Ignite's ``Checkpoint``/``ModelCheckpoint``
            (see :func:`as_payload`).

    Returns:
        The payload dict in the current layout (see :func:`as_payload`), tensors on the CPU.

    Raises:
        CheckpointError: Naming ``path`` and the problem: missing, empty, truncated or
            corrupted, not a torch file, refused as unsafe (a pickle that would run
            code), or not an ignitrain checkpoint.
    """
    if not path.exists():
        raise CheckpointError(f"Checkpoint {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"Checkpoint {path} is a directory, not a checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"Checkpoint {path} is empty (0 bytes): the write that produced it did not finish"
        )
    if zipfile.is_zipfile(path):
        _verify_zip(path)
    else:
        with open(path, "rb") as f:
            if f.read(4) == b"PK\x03\x04":
                raise CheckpointError(
                    f"Checkpoint {path} is truncated: its zip archive has no end record "
                    "(the write did not finish, or the file was cut short)"
                )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise _explain_unpickling(path, e) from e
    except Exception as e:
        # torch's unpickler lets IndexError, KeyError, AttributeError... escape on
        # garbage such as b"(." or /etc/passwd: every one of them is a bad file.
        raise CheckpointError(
            f"Checkpoint {path} is truncated or corrupted: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}"
        ) from e
    return as_payload(obj, str(path), foreign=foreign)


safe_load.__doc__ = _safe_load.__doc__


# -- RNG state as tensors and lists ----------------------------------------------------


def _python_rng_to_safe(state: tuple) -> list:
    version, internal, gauss = state
    return [int(version), [int(x) for x in internal], gauss]


def _python_rng_from_safe(state: list) -> tuple:
    version, internal, gauss = state
    return (int(version), tuple(int(x) for x in internal), gauss)


def _numpy_rng_to_safe(state: tuple) -> dict:
    name, keys, pos, has_gauss, cached = state[:5]
    return {
        "bit_generator": str(name),
        "key": torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def _numpy_rng_from_safe(state: Mapping[str, Any]) -> tuple:
    keys = np.asarray(state["key"].numpy(), dtype=np.uint32)
    return (
        state["bit_generator"],
        keys,
        int(state["pos"]),
        int(state["has_gauss"]),
        float(state["cached_gaussian"]),
    )


def capture_rng_state() -> dict:
    """The global RNG states of Python ``random``, numpy, torch CPU and CUDA.

    Returns:
        ``{"python": [...], "numpy": {...}, "torch": tensor, "cuda": [tensor, ...]}``,
        only tensors and plain lists/ints/floats/strings (``"cuda"`` only when CUDA is
        initialised), so ``torch.load(weights_only=True)`` reads it.
    """
    state = {
        "python": _python_rng_to_safe(random.getstate()),
        "numpy": _numpy_rng_to_safe(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    # Only when CUDA is already in use: asking earlier would initialise it.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def _rng_problems(state: Any) -> list[str]:
    if not isinstance(state, Mapping):
        return [f"RNG state must be a dict, found {type(state).__name__}"]
    missing = [k for k in ("python", "numpy", "torch") if k not in state]
    if missing:
        return [f"RNG state lacks {', '.join(missing)}"]
    problems = []
    py = state["python"]
    if not (isinstance(py, (list, tuple)) and len(py) == 3 and isinstance(py[1], (list, tuple))):
        problems.append("RNG state 'python' is not [version, [ints], gauss]")
    npst = state["numpy"]
    if not (isinstance(npst, Mapping) and isinstance(npst.get("key"), torch.Tensor)):
        problems.append("RNG state 'numpy' is not {'key': tensor, ...}")
    if not (isinstance(state["torch"], torch.Tensor) and state["torch"].dtype == torch.uint8):
        problems.append("RNG state 'torch' is not a uint8 tensor")
    return problems


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Set the global RNGs from :func:`capture_rng_state`'s output.

    CUDA states are restored when CUDA is available (as many devices as both have); a
    checkpoint written on a GPU machine restores its CPU RNGs on a CPU-only one.

    Raises:
        CheckpointError: ``state`` is not such a dict.
    """
    problems = _rng_problems(state)
    if problems:
        raise CheckpointError("; ".join(problems))
    random.setstate(_python_rng_from_safe(state["python"]))
    np.random.set_state(_numpy_rng_from_safe(state["numpy"]))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        n = min(len(cuda), torch.cuda.device_count())
        for device in range(n):
            torch.cuda.set_rng_state(cuda[device].cpu(), device)


class RNGState:
    """The global RNG states as a checkpointable object.

    Put one in the objects to save (``objects["rng"] = RNGState()``): the states are
    captured when the checkpoint is written and restored when it is loaded.

    Under a process group every rank draws its own streams (``seed + rank``, its own
    dropout masks), so :meth:`state_dict` gathers all ranks' states into ``"ranks"``
    (a collective: every rank must save at the same point, as the checkpoint handlers
    do) and each rank restores its own when the world size is unchanged. With another
    world size every rank restores rank 0's, the top-level one.
    """

    def state_dict(self) -> dict:
        """:func:`capture_rng_state` now, plus every rank's under a process group."""
        return with_rank_states(capture_rng_state())

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """:func:`restore_rng_state` of this rank's state (rank 0's on another world size).

        Raises:
            CheckpointError: ``state`` (or this rank's entry) is not such a dict.
        """
        restore_rng_state(own_rank_state(state))


# -- payload: objects -> plain data -> objects --------------------------------------------

# Exact types: subclasses (IntEnum, str enums, namedtuples) pickle by class reference,
# which weights_only loading refuses.
_PLAIN_LEAVES = (str, bytes, bytearray, bool, int, float, complex, type(None))
_TORCH_LEAVES = (torch.Tensor, torch.dtype, torch.device, torch.Size)


def _make_safe(obj: Any, where: str, *, arrays_to_tensors: bool) -> Any:
    """Return ``obj`` with numpy scalars made Python scalars; refuse what weights_only can't read.

    Containers are copied only when something inside changed, so a module's
    ``state_dict`` (with its ``_metadata``) is saved as is.
    """
    if isinstance(obj, np.generic):
        return obj.item()
    if type(obj) in _PLAIN_LEAVES or isinstance(obj, _TORCH_LEAVES):
        return obj
    if isinstance(obj, np.ndarray):
        if arrays_to_tensors:
            return torch.from_numpy(obj.copy())
        raise CheckpointError(
            f"Cannot checkpoint {where}: a numpy array, which torch.load(weights_only=True) "
            "refuses. Store it as a tensor or a list in state_dict()."
        )
    if isinstance(obj, dict):
        if type(obj) not in (dict, OrderedDict, Counter):
            obj = dict(obj)  # defaultdict and other dict subclasses load back as dict
        items = {
            k: _make_safe(v, f"{where}[{k!r}]", arrays_to_tensors=arrays_to_tensors)
            for k, v in obj.items()
        }
        if all(items[k] is obj[k] for k in obj):
            return obj
        out = type(obj)(items)
        if hasattr(obj, "_metadata"):
            out._metadata = obj._metadata
        return out
    if type(obj) in (list, tuple, set):
        items = [
            _make_safe(v, f"{where}[{i}]", arrays_to_tensors=arrays_to_tensors)
            for i, v in enumerate(obj)
        ]
        if all(a is b for a, b in zip(items, obj)):
            return obj
        return type(obj)(items)
    raise CheckpointError(
        f"Cannot checkpoint {where}: a {type(obj).__module__}.{type(obj).__qualname__}, which "
        "torch.load(weights_only=True) refuses. Keep state_dict() to tensors and plain "
        "Python data (dict, list, tuple, str, int, float, bool, None)."
    )


def _unwrap_module(module: nn.Module) -> nn.Module:
    """The model inside DDP / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            module = module.module
        elif type(module).__name__ == "OptimizedModule" and isinstance(
            getattr(module, "_orig_mod", None), nn.Module
        ):
            module = module._orig_mod
        else:
            return module


def _engine_state(engine: Engine) -> dict:
    state = dict(engine.state_dict())
    # DeterministicEngine keeps [python, torch, numpy] RNG states; numpy's is an ndarray.
    rng = state.get("rng_states")
    if isinstance(rng, (list, tuple)) and len(rng) == 3:
        state["rng_states"] = {
            "python": _python_rng_to_safe(rng[0]),
            "torch": rng[1].cpu(),
            "numpy": _numpy_rng_to_safe(rng[2]),
        }
    return state


def _engine_state_back(state: Mapping[str, Any]) -> dict:
    state = dict(state)
    rng = state.get("rng_states")
    if isinstance(rng, Mapping) and {"python", "torch", "numpy"} <= set(rng):
        state["rng_states"] = [
            _python_rng_from_safe(rng["python"]),
            rng["torch"],
            _numpy_rng_from_safe(rng["numpy"]),
        ]
    return state


def _state_of(obj: Any) -> Any:
    if isinstance(obj, nn.Module):
        return _unwrap_module(obj).state_dict()
    if isinstance(obj, Engine):
        return _engine_state(obj)
    return obj.state_dict()


def _check_objects(objects: Any, *, need: str) -> None:
    if not isinstance(objects, Mapping):
        raise TypeError(
            f"Argument objects={objects!r} is not allowed: expected a dict of name -> object "
            f"with {need}()"
        )
    for name, obj in objects.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"Argument objects has key {name!r}: expected a non-empty str")
        if not callable(getattr(obj, need, None)):
            raise TypeError(
                f"Argument objects[{name!r}]={type(obj).__name__} is not allowed: it has no "
                f"{need}() method"
            )


def build_payload(objects: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> dict:
    """The checkpoint dict for ``objects`` plus plain metadata.

    Models are saved unwrapped (no ``module.`` / ``_orig_mod.`` prefixes), Ignite
    engines with their RNG states as tensors, and everything is checked to be readable
    by ``torch.load(weights_only=True)`` now rather than failing at load time.

    Args:
        objects: Name -> object with ``state_dict()`` (model, optimizer, scheduler,
            engine, :class:`RNGState`, History...).
        extra: Plain metadata merged at the top level: ``"config"``,
            ``"model_description"``, ``"iteration"``, ``"epoch"``, ``"metrics"``...
            numpy arrays in it become tensors.

    Returns:
        ``{"ignitrain_format": 2, "ignitrain_objects": [names], name: state_dict, ...,
        **extra}``: flat, so ``ignite.handlers.Checkpoint.load_objects`` reads it.

    Raises:
        TypeError: An object has no ``state_dict``, or ``extra`` is not a dict.
        ValueError: ``extra`` uses a reserved key.
        CheckpointError: A state holds something weights_only loading would refuse.
    """
    _check_objects(objects, need="state_dict")
    return payload_from_states(
        {name: safe_state(obj, name) for name, obj in objects.items()}, extra
    )


def safe_state(obj: Any, name: str) -> Any:
    """``obj``'s state_dict made weights_only-loadable (unwrapped model, engine RNG as tensors).

    Raises:
        CheckpointError: The state holds something weights_only loading would refuse.
    """
    return _make_safe(_state_of(obj), f"state[{name!r}]", arrays_to_tensors=False)


def payload_from_states(states: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> dict:
    """The flat payload for ready states (see :func:`build_payload`)."""
    extra = {} if extra is None else extra
    if not isinstance(extra, Mapping):
        raise TypeError(f"Argument extra={extra!r} is not allowed: expected a dict or None")
    reserved = [k for k in [*extra, *states] if k in _RESERVED_KEYS]
    if reserved:
        raise ValueError(f"Argument extra uses reserved key(s) {reserved}: choose other names")
    clash = [k for k in extra if k in states]
    if clash:
        raise ValueError(
            f"Argument extra uses key(s) {clash} that name saved objects: choose other names"
        )
    meta = {k: _make_safe(v, f"extra[{k!r}]", arrays_to_tensors=True) for k, v in extra.items()}
    return {FORMAT_KEY: FORMAT_VERSION, OBJECTS_KEY: list(states), **states, **meta}


# -- validation before loading ---------------------------------------------------------

_PREFIXES = ("module.", "_orig_mod.")
# Optimizer state entries shaped like their parameter (SGD, Adam(W), RMSprop, Adagrad).
_PARAM_SHAPED = ("momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "square_avg", "sum")


def _listing(items: list[str], limit: int = 20) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... and {len(items) - limit} more" if len(items) > limit else "")


def _strip_prefix(state: Mapping[str, Any], prefix: str) -> OrderedDict:
    out = OrderedDict((k[len(prefix) :], v) for k, v in state.items())
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:
        # Module-path keys: "module" -> "", "module.fc" -> "fc".
        head = prefix[:-1]
        out._metadata = OrderedDict(  # type: ignore[attr-defined]
            ("" if k == head else k[len(prefix) :] if k.startswith(prefix) else k, v)
            for k, v in metadata.items()
        )
    return out


def _match_prefixes(stored: Mapping[str, Any], expected: set[str]) -> Mapping[str, Any]:
    """``stored`` with wrapper prefixes removed when that makes it fit ``expected`` better."""
    best, best_overlap = stored, len(expected & set(stored))
    current = stored
    while current:
        prefix = next((p for p in _PREFIXES if all(k.startswith(p) for k in current)), None)
        if prefix is None:
            break
        current = _strip_prefix(current, prefix)
        overlap = len(expected & set(current))
        if overlap > best_overlap:
            best, best_overlap = current, overlap
    return best


def _module_problems(name: str, module: nn.Module, stored: Any, strict: bool):
    target = _unwrap_module(module)
    if not isinstance(stored, Mapping):
        return None, [f"{name!r}: expected a model state_dict, found {type(stored).__name__}"]
    own = target.state_dict()
    found = _match_prefixes(stored, set(own))
    missing = [k for k in own if k not in found]
    unexpected = [k for k in found if k not in own]
    misshaped = []
    for key in own:
        mine, theirs = own[key], found.get(key)
        if isinstance(mine, nn.parameter.UninitializedParameter):
            continue
        if isinstance(mine, torch.Tensor) and isinstance(theirs, torch.Tensor):
            if mine.shape != theirs.shape:
                expected, found_shape = tuple(mine.shape), tuple(theirs.shape)
                misshaped.append(f"{key} (model expects {expected}, checkpoint has {found_shape})")
    problems = []
    if strict and missing:
        problems.append(
            f"{name!r}: missing keys (in the model, not in the checkpoint): {_listing(missing)}"
        )
    if strict and unexpected:
        problems.append(
            f"{name!r}: unexpected keys (in the checkpoint, not in the model): "
            f"{_listing(unexpected)}"
        )
    if misshaped:
        problems.append(f"{name!r}: mis-shaped keys: {_listing(misshaped)}")
    return found, problems


def _optimizer_problems(name: str, optimizer: torch.optim.Optimizer, stored: Any) -> list[str]:
    if not (
        isinstance(stored, Mapping)
        and isinstance(stored.get("param_groups"), list)
        and isinstance(stored.get("state"), Mapping)
    ):
        return [f"{name!r}: expected an optimizer state_dict with 'state' and 'param_groups'"]
    groups, saved_groups = optimizer.param_groups, stored["param_groups"]
    if len(groups) != len(saved_groups):
        return [
            f"{name!r}: the checkpoint has {len(saved_groups)} parameter group(s), the "
            f"optimizer has {len(groups)}"
        ]
    problems = _optimizer_class_problems(name, optimizer, saved_groups)
    if problems:
        return problems
    params_by_id = {}
    for i, (group, saved) in enumerate(zip(groups, saved_groups)):
        ids = saved.get("params", []) if isinstance(saved, Mapping) else []
        if len(ids) != len(group["params"]):
            problems.append(
                f"{name!r}: parameter group {i} has {len(ids)} parameters in the checkpoint, "
                f"{len(group['params'])} in the optimizer"
            )
            continue
        params_by_id.update(zip(ids, group["params"]))
    for pid, entry in stored["state"].items():
        param = params_by_id.get(pid)
        if param is None or not isinstance(entry, Mapping):
            continue
        for key in _PARAM_SHAPED:
            value = entry.get(key)
            if isinstance(value, torch.Tensor) and value.shape != param.shape:
                problems.append(
                    f"{name!r}: state {key!r} of parameter {pid} has shape {tuple(value.shape)}, "
                    f"the parameter has {tuple(param.shape)}"
                )
    return problems


_GROUP_BOOKKEEPING = {"params", "param_names", "initial_lr"}


def _optimizer_class_problems(name: str, optimizer: Any, saved_groups: list) -> list[str]:
    """Refuse a state written by another optimizer class (e.g. Adam's into SGD).

    torch's ``load_state_dict`` replaces each param group's hyper-parameters by the
    saved ones without checking them, so Adam's state loads into SGD and the first
    ``step()`` fails (``KeyError: 'momentum'``), after the other objects were loaded.
    A key only one side has is tolerated (a newer torch adds options with defaults);
    keys missing on both sides mean another class.
    """
    if not saved_groups or not isinstance(saved_groups[0], Mapping):
        return [f"{name!r}: the checkpoint's parameter groups are not dicts"]
    own = set(optimizer.param_groups[0]) - _GROUP_BOOKKEEPING
    saved = set(saved_groups[0]) - _GROUP_BOOKKEEPING
    if own - saved and saved - own:
        return [
            f"{name!r}: the checkpoint holds the state of another optimizer class "
            f"(its hyper-parameters {sorted(saved - own)} are unknown to "
            f"{type(optimizer).__name__}, which needs {sorted(own - saved)})"
        ]
    return []


def _trial_load_problems(name: str, optimizer: torch.optim.Optimizer, stored: Any) -> list[str]:
    """Load ``stored`` into a throwaway copy of ``optimizer`` first, to see it fail safely.

    ``Optimizer.load_state_dict`` can raise half-way (e.g. ``KeyError: 'step'``);
    trying on empty tensors shaped like the parameters keeps the real one untouched.
    """
    try:
        groups = [
            {
                **{k: v for k, v in g.items() if k != "params"},
                "params": [torch.empty_like(p, device="meta") for p in g["params"]],
            }
            for g in optimizer.param_groups
        ]
        trial = type(optimizer)(groups)
    except Exception:  # an optimizer we cannot rebuild: its own load must do
        return []
    try:
        trial.load_state_dict(copy.copy(stored))
    except Exception as e:
        return [f"{name!r}: the optimizer refuses the state ({type(e).__name__}: {e})"]
    return []


def _engine_problems(name: str, engine: Engine, stored: Any) -> list[str]:
    if not isinstance(stored, Mapping):
        return [f"{name!r}: expected an engine state_dict, found {type(stored).__name__}"]
    need = [("epoch_length",), ("iteration", "epoch"), ("max_epochs", "max_iters")]
    need += [(k,) for k in engine.state_dict_user_keys]
    lacking = ["/".join(keys) for keys in need if not any(k in stored for k in keys)]
    return [f"{name!r}: engine state lacks {', '.join(lacking)}"] if lacking else []


def _snapshot(obj: Any) -> Any:
    try:
        return copy.deepcopy(obj.state_dict())
    except Exception:  # rollback is best effort for objects we do not know
        return None


def load_objects(
    objects: Mapping[str, Any],
    payload: Mapping[str, Any],
    *,
    strict: bool = True,
    source: str = "<payload>",
    allow_missing: bool = False,
) -> list[str]:
    """Load ``payload[name]`` into each object, after checking all of them.

    Everything is validated before anything is loaded: names present, model keys and
    shapes (``module.``/``_orig_mod.`` prefixes of DDP, DataParallel and
    ``torch.compile`` are matched both ways), optimizer groups, parameter counts and
    state shapes, engine keys, RNG state. When a check fails nothing is loaded.

    Args:
        objects: Name -> object with ``load_state_dict``.
        payload: A checkpoint dict (from :func:`safe_load` or :func:`build_payload`).
        strict: ``False`` skips names the checkpoint lacks (with a warning) and lets
            models load with missing/unexpected keys; shapes must still match.
        source: How to name the checkpoint in errors (its path).
        allow_missing: Names the checkpoint lacks are left as they are (and returned)
            instead of being an error, while models stay strict about their keys.

    Returns:
        The names of ``objects`` the checkpoint did not hold (left unchanged).

    Raises:
        TypeError: ``objects`` is not a dict of loadable objects.
        CheckpointError: Listing every problem found, naming ``source``.
    """
    _check_objects(objects, need="load_state_dict")
    payload = as_payload(payload, source)
    saved = saved_states(payload)
    problems: list[str] = []
    plan: list[tuple[str, Any, Any]] = []
    absent: list[str] = []
    for name, obj in objects.items():
        if name not in saved:
            held = ", ".join(sorted(saved)) or "nothing"
            msg = f"no state named {name!r} (the checkpoint holds: {held})"
            if strict and not allow_missing:
                problems.append(msg)
            elif not allow_missing:
                warnings.warn(f"Checkpoint {source}: {msg}; {name!r} left as it is", stacklevel=2)
            absent.append(name)
            continue
        stored = saved[name]
        if isinstance(obj, nn.Module):
            stored, module_problems = _module_problems(name, obj, stored, strict)
            problems += module_problems
        elif isinstance(obj, torch.optim.Optimizer):
            found = _optimizer_problems(name, obj, stored)
            problems += found or _trial_load_problems(name, obj, stored)
        elif isinstance(obj, Engine):
            problems += _engine_problems(name, obj, stored)
            stored = _engine_state_back(stored) if isinstance(stored, Mapping) else stored
        elif isinstance(obj, RNGState):
            problems += [f"{name!r}: {p}" for p in _rng_problems(stored)]
        plan.append((name, obj, stored))
    if problems:
        raise CheckpointError(
            f"Checkpoint {source} does not fit the objects to load (nothing was loaded):\n  - "
            + "\n  - ".join(problems)
        )
    _apply(plan, strict, source)
    return absent


def _apply(plan: list[tuple[str, Any, Any]], strict: bool, source: str) -> None:
    # Objects we cannot validate go first, each with a snapshot to roll back to; models
    # and optimizers were fully checked, so they go last and do not fail.
    def rank(item: tuple[str, Any, Any]) -> int:
        obj = item[1]
        return (
            2 if isinstance(obj, nn.Module) else 1 if isinstance(obj, torch.optim.Optimizer) else 0
        )

    done: list[tuple[Any, Any]] = []
    for name, obj, stored in sorted(plan, key=rank):
        snapshot = _snapshot(obj) if rank((name, obj, stored)) == 0 else None
        try:
            if isinstance(obj, nn.Module):
                _unwrap_module(obj).load_state_dict(stored, strict=strict)
            else:
                obj.load_state_dict(stored)
        except Exception as e:
            for prev, snap in reversed(done):
                if snap is not None:
                    with contextlib.suppress(Exception):
                        prev.load_state_dict(snap)
            raise CheckpointError(
                f"Checkpoint {source}: loading {name!r} failed ({type(e).__name__}: {e}); "
                "objects loaded before it were restored"
            ) from e
        done.append((obj, snapshot))


def load_checkpoint(
    path: str | os.PathLike,
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    strict: bool = True,
    **objects: Any,
) -> dict:
    """Load a checkpoint file into a model, optimizer and any other named objects.

    The file is read with ``torch.load(weights_only=True)`` only. ``model`` is loaded
    from the state named ``"model"`` and ``optimizer`` from ``"optimizer"``; pass other
    states by their names (``generator=G, discriminator=D``, ``scheduler=...``).

    Args:
        path: The checkpoint file, or a run directory (or its ``checkpoints/``) for
            its newest valid checkpoint.
        model: Model to load the ``"model"`` state into (wrapped or not).
        optimizer: Optimizer to load the ``"optimizer"`` state into.
        strict: See :func:`load_objects`.
        **objects: More name -> object pairs.

    Returns:
        The payload: read ``payload["config"]``, ``payload["metrics"]``,
        ``payload["model_description"]``, ``payload["iteration"]``.

    Raises:
        CheckpointError: The file is unreadable or does not fit the objects; nothing
            is loaded then.

    Example:
        >>> payload = load_checkpoint("runs/x/checkpoints/checkpoint_last_iter00001000.pt",
        ...                           model=net)  # doctest: +SKIP
        >>> payload["metrics"]  # doctest: +SKIP
    """
    targets: dict[str, Any] = {}
    if model is not None:
        targets["model"] = model
    if optimizer is not None:
        targets["optimizer"] = optimizer
    targets.update(objects)
    if Path(path).is_dir():
        path = latest_in(path)
    payload = safe_load(path)
    if targets:
        load_objects(targets, payload, strict=strict, source=str(path))
    return payload


def latest_in(directory: str | os.PathLike) -> Path:
    """The newest valid checkpoint of a run directory (or of its ``checkpoints/``).

    Raises:
        CheckpointError: The directory holds no valid checkpoint.
    """
    directory = Path(directory)
    ckpt_dir = directory / "checkpoints" if (directory / "checkpoints").is_dir() else directory
    found = CheckpointStore(ckpt_dir).latest_path()
    if found is None:
        raise CheckpointError(f"No valid checkpoint in {str(ckpt_dir)!r}")
    return found


# -- a directory of checkpoints -------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    """What the store knows about one checkpoint file."""

    path: Path
    kind: str
    score: float | None
    iteration: int
    epoch: int
    mtime_ns: int
    resumable: bool = True


def _safe_tag_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-") or "metric"


def best_tag(metric: str, value: float, iteration: int) -> str:
    """The tag of a best checkpoint: ``{metric}={value:.6g}_iter{iteration:08d}``.

    Characters other than letters, digits and ``._+-`` in the metric name become ``-``.
    """
    return f"{_safe_tag_part(metric)}={value:.6g}_iter{int(iteration):08d}"


class CheckpointStore:
    """A directory of checkpoints: naming, write-then-evict, a ``latest`` pointer.

    Every rank constructs the store; with ``rank0_only`` only rank 0
    (``ignite.distributed.get_rank() == 0``) writes, the others get the path it writes.
    See the module docstring for the file names.

    A save (1) writes the file atomically (temp file, fsync, rename), (2) points
    ``{prefix}_latest.json`` at it, (3) evicts files of the same kind beyond
    ``n_saved``: the oldest ones, or for ``"best"`` the lowest scores, never the new
    file, and (4) removes temp files a crashed save left behind. Pointing before
    evicting means a crash between steps never leaves the pointer naming a deleted file.

    With ``background=True`` only step (1)'s serialisation runs in the caller (to
    memory, up to :data:`IN_MEMORY_LIMIT` bytes of tensors; to the temp file beyond);
    the file write, fsync, rename and steps (2)-(4) run on a worker thread, so training
    goes on while the disk catches up. The previous checkpoint stays the latest until
    the new one is committed; errors from the worker are raised by the next
    :meth:`save`, :meth:`wait` or :meth:`latest_path`. The worker is not a daemon: an
    exiting interpreter finishes the commit first.

    Args:
        dirname: Directory (created on the first save).
        n_saved: Files kept per kind; ``None`` keeps all.
        prefix: File name prefix.
        rank0_only: Only rank 0 writes. With ``False`` every rank writes: give each
            rank its own ``dirname`` or ``prefix``.
        background: Commit on a worker thread (see above).

    Example:
        >>> store = CheckpointStore("runs/x/checkpoints", n_saved=2)  # doctest: +SKIP
        >>> store.save(build_payload({"model": net}, {"iteration": 100}),
        ...            "periodic", "iter00000100")  # doctest: +SKIP
        >>> store.latest_path()  # doctest: +SKIP
    """

    def __init__(
        self,
        dirname: str | os.PathLike,
        *,
        n_saved: int | None = 1,
        prefix: str = "checkpoint",
        rank0_only: bool = True,
        background: bool = False,
    ):
        if not isinstance(dirname, (str, os.PathLike)):
            raise TypeError(f"Argument dirname={dirname!r} is not allowed: expected a path")
        if n_saved is not None and (
            isinstance(n_saved, bool) or not isinstance(n_saved, int) or n_saved < 1
        ):
            raise ValueError(
                f"Argument n_saved={n_saved!r} is not allowed: expected an integer >= 1 or None"
            )
        if not isinstance(prefix, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.+-]*", prefix):
            raise ValueError(
                f"Argument prefix={prefix!r} is not allowed: expected letters, digits, '.+-' "
                "(no '_', which separates the name's parts)"
            )
        self.dirname = Path(dirname)
        self.n_saved = n_saved
        self.prefix = prefix
        self.rank0_only = bool(rank0_only)
        self.background = bool(background)
        self._meta: dict[tuple[str, int, int], _Entry | None] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []

    # -- names --------------------------------------------------------------------

    @property
    def pointer_path(self) -> Path:
        """The ``latest`` pointer file: ``{dirname}/{prefix}_latest.json``."""
        return self.dirname / f"{self.prefix}_latest.json"

    @property
    def writes(self) -> bool:
        """Whether this process writes (rank 0, or every rank without ``rank0_only``)."""
        return not self.rank0_only or idist.get_rank() == 0

    def path_for(self, kind: str, tag: str) -> Path:
        """``{dirname}/{prefix}_{kind}_{tag}.pt``, after checking ``kind`` and ``tag``."""
        if kind not in KINDS:
            raise ValueError(f"Argument kind={kind!r} is not allowed: expected one of {KINDS}")
        if not isinstance(tag, str) or not tag or re.search(r"[/\\\x00]", tag) or tag[0] == ".":
            raise ValueError(
                f"Argument tag={tag!r} is not allowed: expected a non-empty file name part "
                "without path separators"
            )
        return self.dirname / f"{self.prefix}_{kind}_{tag}.pt"

    # -- saving -------------------------------------------------------------------

    def save(
        self, payload: Mapping[str, Any], kind: str, tag: str, score: float | None = None
    ) -> Path:
        """Write ``payload`` as ``{prefix}_{kind}_{tag}.pt``; then point, evict, clean up.

        Args:
            payload: From :func:`build_payload`; its ``"iteration"`` and ``"epoch"``
                go into the pointer.
            kind: One of :data:`KINDS`.
            tag: Name part (see the module docstring).
            score: For ``"best"`` (required there): larger is better, so pass the
                negated value of a minimised metric. The n_saved largest are kept; call
                :meth:`would_keep_best` first, the new file itself is never evicted.

        Returns:
            The checkpoint's path (also on ranks that do not write).

        Raises:
            OSError: Writing failed; earlier checkpoints and the pointer are untouched.
        """
        path = self.path_for(kind, tag)
        score = self._check_score(kind, score)
        return self.write(payload, path.name, kind, score=score)

    def write(
        self,
        payload: Mapping[str, Any],
        filename: str,
        kind: str,
        *,
        score: float | None = None,
        remove: list[str] | None = None,
        resumable: bool = True,
    ) -> Path:
        """Write ``payload`` as ``filename``; then point at it and remove ``remove``.

        The primitive under :meth:`save` and the Ignite save handler
        (:class:`DurableSaver`): ``remove`` lists the files evicted in favour of this
        one, deleted only once it is durable (``None``: evict by kind and ``n_saved``).
        A file that is not ``resumable`` (a best checkpoint taken between two save
        points) never becomes the ``latest`` one.
        """
        path = self.dirname / filename
        as_payload(payload, "payload")
        if not self.writes:
            return path
        self.wait()
        self.dirname.mkdir(parents=True, exist_ok=True)
        info = {"kind": kind, "tag": _tag_of(filename, self.prefix, kind), "score": score}
        marked = {**payload, "checkpoint": {**info, "resumable": resumable}}
        done = (kind, score, _as_int(payload.get("iteration")), _as_int(payload.get("epoch")))
        after = {"evict": remove, "resumable": resumable}
        if self.background and _tensor_bytes(marked) <= IN_MEMORY_LIMIT:
            # serialised now (a consistent snapshot); many small file writes go to the
            # worker as one (measured: 1.7 ms instead of 3.0 ms for a 140 KiB checkpoint)
            data = _serialize(marked)

            def write() -> None:
                self._finish(_write_bytes_temp(data, path), path, *done, **after)

            self._submit(write)
        else:
            tmp = _write_temp(marked, path)
            self._submit(lambda: self._finish(tmp, path, *done, **after))
        return path

    def copy_as(
        self, source: str | os.PathLike, kind: str, tag: str, score: float | None = None
    ) -> Path:
        """Give an already saved checkpoint a second name (another kind), without rewriting.

        A hard link when the filesystem has them, else a copy; either way atomic. Used
        when a periodic and a best checkpoint fall on the same moment.

        Returns:
            The new path.
        """
        path = self.path_for(kind, tag)
        score = self._check_score(kind, score)
        return self.link(source, path.name, kind, score=score)

    def link(
        self,
        source: str | os.PathLike,
        filename: str,
        kind: str,
        *,
        score: float | None = None,
        remove: list[str] | None = None,
    ) -> Path:
        """:meth:`copy_as` by file name, with ``remove`` as in :meth:`write`."""
        path = self.dirname / filename
        if not self.writes:
            return path
        source = Path(source)

        def link() -> None:
            meta = self._entry_of(source)
            tmp = _temp_path(path)
            linked = True
            try:
                os.link(source, tmp)
            except OSError:  # no hard links here: copy
                linked = False
                try:
                    shutil.copyfile(source, tmp)
                except BaseException:
                    _remove_quietly(tmp)
                    raise
            iteration, epoch = (meta.iteration, meta.epoch) if meta else (-1, -1)
            self._finish(tmp, path, kind, score, iteration, epoch, synced=linked, evict=remove)

        self._submit(link)
        return path

    def wait(self) -> None:
        """Block until background commits are done; raise the first one's error."""
        pending, self._pending = self._pending, []
        error = None
        for future in pending:
            exc = future.exception()
            if exc is not None and error is None:
                error = exc
        if error is not None:
            raise error

    def _check_score(self, kind: str, score: Any) -> float | None:
        if kind != "best":
            return None if score is None else float(score)
        if isinstance(score, bool) or not isinstance(score, (int, float)) or math.isnan(score):
            raise ValueError(
                f"Argument score={score!r} is not allowed for kind 'best': expected a number "
                "(larger is better), not NaN"
            )
        return float(score)

    def _submit(self, fn: Callable[..., None], *args: Any) -> None:
        if not self.background:
            fn(*args)
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="ignitrain-checkpoint")
        failed = self._pending[-1] if self._pending else None

        def run() -> None:
            # A commit never follows a failed one: its source may not exist.
            if failed is not None and failed.exception() is not None:
                return
            fn(*args)

        self._pending.append(self._executor.submit(run))

    def _finish(
        self,
        tmp: Path,
        path: Path,
        kind: str,
        score: float | None,
        iteration: int,
        epoch: int,
        *,
        synced: bool = False,
        evict: list[str] | None = None,
        resumable: bool = True,
    ) -> None:
        # Order: durable file, pointer, then eviction: a crash between steps never
        # leaves the pointer naming a deleted file, nor deletes before the new one is safe
        # (Ignite's Checkpoint calls remove() before writing; DurableSaver defers it here).
        _commit(tmp, path, synced=synced)
        st = path.stat()
        entry = _Entry(path, kind, score, iteration, epoch, st.st_mtime_ns, resumable)
        self._meta[(path.name, st.st_mtime_ns, st.st_size)] = entry
        if resumable:
            _write_json_atomic(
                {"file": path.name, "kind": kind, "iteration": iteration, "epoch": epoch},
                self.pointer_path,
            )
        if evict is None:
            self._evict(kind, keep=path)
        else:
            for name in evict:
                if name != path.name:
                    _remove_quietly(self.dirname / name)
        self._remove_stray_temps()

    def remove_stale_temps(self) -> None:
        """Remove temp files a killed run left in the directory (call at a run's start)."""
        if self.writes and self.dirname.is_dir():
            self._remove_stray_temps()

    def _evict(self, kind: str, keep: Path) -> None:
        if self.n_saved is None:
            return
        others = [e for e in self._entries() if e.kind == kind and e.path != keep]
        if kind == "best":
            # Highest scores survive; among equal scores, the newer.
            others.sort(key=lambda e: (e.score if e.score is not None else -math.inf, e.mtime_ns))
        else:
            others.sort(key=lambda e: (e.mtime_ns, e.path.name))
        for entry in others[: max(0, len(others) - (self.n_saved - 1))]:
            _remove_quietly(entry.path)

    def _remove_stray_temps(self) -> None:
        for tmp in self.dirname.glob(f".{self.prefix}_*.tmp"):
            _remove_quietly(tmp)

    # -- reading ------------------------------------------------------------------

    def _files(self) -> list[tuple[Path, str]]:
        out = []
        if not self.dirname.is_dir():
            return out
        root = self.dirname.resolve()
        for path in self.dirname.glob(f"{self.prefix}_*.pt"):
            kind = path.name[len(self.prefix) + 1 :].split("_", 1)[0]
            if kind not in KINDS:
                continue
            if path.is_symlink() and root not in path.resolve().parents:
                warnings.warn(
                    f"Skipping checkpoint {path}: a symlink pointing out of {self.dirname} "
                    f"(to {os.path.realpath(path)})",
                    stacklevel=3,
                )
                continue
            out.append((path, kind))
        return out

    def _entry_of(self, path: Path, kind: str | None = None) -> _Entry | None:
        """Metadata of a file, read once per version (mmap: only the small pickle is read)."""
        try:
            st = path.stat()
        except OSError:
            return None
        key = (path.name, st.st_mtime_ns, st.st_size)
        if key not in self._meta:
            entry = None
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                obj = as_payload(obj, str(path))
                info = obj.get("checkpoint", {})
                entry = _Entry(
                    path,
                    kind or info.get("kind", "periodic"),
                    info.get("score"),
                    _as_int(obj.get("iteration")),
                    _as_int(obj.get("epoch")),
                    st.st_mtime_ns,
                    # a best file linked to a periodic one carries the periodic's marks
                    bool(info.get("resumable", True)),
                )
            except Exception:
                entry = None  # unreadable: never ranked, never evicted (kept as evidence)
            self._meta[key] = entry
        return self._meta[key]

    def _entries(self) -> list[_Entry]:
        entries = (self._entry_of(path, kind) for path, kind in self._files())
        return [e for e in entries if e is not None]

    def checkpoints(self, kind: str | None = None) -> list[Path]:
        """Readable checkpoint files (of ``kind``), newest first."""
        self.wait()
        entries = [e for e in self._entries() if kind is None or e.kind == kind]
        entries.sort(key=lambda e: (e.mtime_ns, e.iteration), reverse=True)
        return [e.path for e in entries]

    def best_scores(self) -> list[float]:
        """Scores of the kept best checkpoints, best first."""
        self.wait()
        scores = [e.score for e in self._entries() if e.kind == "best" and e.score is not None]
        return sorted(scores, reverse=True)

    def would_keep_best(self, score: float) -> bool:
        """Whether a best checkpoint with ``score`` (larger is better) would be kept."""
        if isinstance(score, float) and math.isnan(score):
            return False
        if not self.writes:
            return True
        scores = self.best_scores()
        return self.n_saved is None or len(scores) < self.n_saved or score > scores[-1]

    def _read_pointer(self) -> Path | None:
        try:
            with open(self.pointer_path, encoding="utf-8") as f:
                name = json.load(f)["file"]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            warnings.warn(
                f"Checkpoint pointer {self.pointer_path} is unreadable ({e}); "
                "looking for the newest valid checkpoint",
                stacklevel=3,
            )
            return None
        if not isinstance(name, str) or "/" in name or "\\" in name:
            return None
        path = self.dirname / name
        if path.is_symlink() and self.dirname.resolve() not in path.resolve().parents:
            warnings.warn(
                f"Skipping checkpoint {path}: a symlink pointing out of {self.dirname}",
                stacklevel=3,
            )
            return None
        return path

    def load_latest(self, validate: bool = True) -> tuple[Path, dict | None] | None:
        """The newest valid checkpoint and its payload (``None`` payload without validation).

        Reads the pointer; if the file it names is missing or corrupt, warns and falls
        back to the other checkpoints, highest iteration first (newest file among
        equals), skipping those that fail :func:`safe_load`.

        Returns:
            ``(path, payload)``, or ``None`` when no valid checkpoint exists.
        """
        self.wait()
        pointed = self._read_pointer()
        problem = None
        if pointed is not None:
            try:
                return pointed, self._validated(pointed, validate)
            except CheckpointError as e:
                problem = f"Latest checkpoint is unusable: {e}."
        for path, kind in self._files():
            if path != pointed and self._entry_of(path, kind) is None:
                warnings.warn(f"Skipping unreadable checkpoint {path}", stacklevel=2)
        candidates = [e for e in self._entries() if e.path != pointed and e.resumable]
        candidates.sort(key=lambda e: (e.iteration, e.mtime_ns), reverse=True)
        for entry in candidates:
            try:
                payload = self._validated(entry.path, validate)
            except CheckpointError as e:
                warnings.warn(f"Skipping unusable checkpoint: {e}", stacklevel=2)
                continue
            if problem:
                warnings.warn(f"{problem} Using the previous valid one: {entry.path}", stacklevel=2)
            return entry.path, payload
        if problem:
            warnings.warn(f"{problem} No other valid checkpoint found.", stacklevel=2)
        return None

    @staticmethod
    def _validated(path: Path, validate: bool) -> dict | None:
        if validate:
            return safe_load(path)
        if not path.is_file() or path.stat().st_size == 0:
            raise CheckpointError(f"Checkpoint {path} is missing or empty")
        return None

    def latest_path(self, validate: bool = True) -> Path | None:
        """Path of the newest valid checkpoint (see :meth:`load_latest`), or ``None``."""
        found = self.load_latest(validate)
        return None if found is None else found[0]


def _tag_of(filename: str, prefix: str, kind: str) -> str:
    head = f"{prefix}_{kind}_"
    stem = filename[: -len(".pt")] if filename.endswith(".pt") else filename
    return stem[len(head) :] if stem.startswith(head) else stem


def _as_int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


# -- the Ignite adapter ---------------------------------------------------------------


class _Saved:
    """What Ignite's ``Checkpoint`` calls ``state_dict()`` on: the object's safe state.

    Models unwrapped (DDP, DataParallel, ``torch.compile``), engines' numpy RNG states as
    tensors, everything checked to load with ``weights_only=True``.
    """

    def __init__(self, name: str, obj: Any):
        self.name, self.obj = name, obj

    def state_dict(self) -> Any:
        return safe_state(self.obj, self.name)


class DurableSaver(BaseSaveHandler):
    """Ignite save handler writing through a :class:`CheckpointStore`.

    Keeps the store's guarantees (temp file, fsync, rename, directory fsync, the
    background commit, a ``latest`` pointer naming only complete files) and fixes one
    defect of Ignite's ``Checkpoint``: it calls ``remove(old)`` *before* writing the new
    file, so with ``DiskSaver`` and ``n_saved=1`` a failed write (disk full) leaves no
    checkpoint at all. Here ``remove`` only records the name; the file goes once the next
    one is durable, and a failed write keeps it.

    Args:
        store: Where files go (and which rank writes).
        kind: One of :data:`KINDS`, recorded in the file.
        names: The saved objects' names (Ignite unwraps a single object's state).
        extra_fn: Returns the metadata merged into each file.
        link_fn: Returns a file already holding this very state, to link instead of
            serialising again (a periodic and a best checkpoint of the same moment).
        resumable_fn: Whether the file may become the ``latest`` resume point.
    """

    def __init__(
        self,
        store: CheckpointStore,
        kind: str,
        names: list[str],
        *,
        extra_fn: Callable[[], Mapping[str, Any]] | None = None,
        link_fn: Callable[[], Path | None] | None = None,
        resumable_fn: Callable[[], bool] | None = None,
    ):
        self.store, self.kind, self.names = store, kind, list(names)
        self.extra_fn, self.link_fn, self.resumable_fn = extra_fn, link_fn, resumable_fn
        self.last_path: Path | None = None
        self._evicted: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        states = {self.names[0]: checkpoint} if len(self.names) == 1 else dict(checkpoint)
        evicted, self._evicted = self._evicted, []
        score = (metadata or {}).get("priority") if self.kind == "best" else None
        source = self.link_fn() if self.link_fn is not None else None
        if source is not None:
            self.last_path = self.store.link(
                source, filename, self.kind, score=score, remove=evicted
            )
            return
        extra = dict(self.extra_fn()) if self.extra_fn is not None else {}
        payload = payload_from_states(states, extra)
        resumable = self.resumable_fn() if self.resumable_fn is not None else True
        self.last_path = self.store.write(
            payload, filename, self.kind, score=score, remove=evicted, resumable=resumable
        )

    def remove(self, filename: str) -> None:
        """Evict ``filename`` once the next checkpoint is durable (not now)."""
        self._evicted.append(filename)


def nan_safe_score(value_fn: Callable[[Engine], float], sign: float) -> Callable[[Engine], float]:
    """A ``score_function`` for Ignite's ``Checkpoint`` that never ranks NaN as best.

    Ignite's ``Checkpoint`` keeps a NaN score (fewer than ``n_saved`` files), then
    compares ``new > nan`` (always False): with ``n_saved=1`` a first NaN blocks every
    later best. NaN here scores ``-inf`` (and :class:`CheckpointHandler` does not even
    call the best ``Checkpoint`` on NaN, so non-finite weights never become best).
    """

    def score(engine: Engine) -> float:
        value = float(value_fn(engine))
        return -math.inf if math.isnan(value) else sign * value

    return score


def _signature(modules: list[nn.Module]) -> tuple:
    # Every in-place update (optimizer step, load_state_dict, BatchNorm statistics)
    # bumps a tensor's version counter: equal signatures mean the same weights.
    return tuple(
        (t.data_ptr(), t._version)
        for m in modules
        for t in itertools.chain(m.parameters(), m.buffers())
    )


_NAME_STEP = re.compile(r"_(?:iter(\d+)|epoch(\d+))\.pt$")


def _parse_saved(name: str, kind: str, prefix: str, metric_tag: str | None, sign: float):
    """Ignite's priority of an existing file, from its name (``None``: not ours)."""
    match = _NAME_STEP.search(name)
    if match is None:
        return None
    if kind != "best":
        return int(match.group(1) or match.group(2))
    head = f"{prefix}_best_{metric_tag}="
    if metric_tag is None or not name.startswith(head):
        return None
    try:
        return sign * float(name[len(head) : name.rindex("_iter")])
    except ValueError:
        return None


class CheckpointHandler:
    """Ignite ``Checkpoint`` objects (periodic, best, last, preempt) and when they run.

    Created by :func:`attach_checkpoints`, which documents the events. ``checkpoints``
    holds the four Ignite ``Checkpoint`` objects by kind; ``last_path`` is the most
    recent file written.
    """

    def __init__(
        self,
        engine: Engine,
        objects: Mapping[str, Any],
        store: CheckpointStore,
        *,
        save_every: int,
        evaluator: Engine | None,
        best_metric: str | None,
        best_mode: str | None,
        save_best: bool,
        save_last: bool,
        extra_fn: Callable[[], Mapping[str, Any]] | None,
        accumulation_steps: int = 1,
    ):
        self.engine = engine
        self.accumulation_steps = accumulation_steps
        self.objects = dict(objects)
        self.store = store
        self.save_every = save_every
        self.evaluator = evaluator
        self.best_metric = best_metric
        self.best_enabled = bool(save_best and evaluator is not None and best_metric is not None)
        self.best_mode = resolve_mode(best_metric, best_mode) if best_metric is not None else None
        self.save_last = save_last
        self.extra_fn = extra_fn
        self.metrics: dict[str, Any] = {}
        self.last_path: Path | None = None
        self._running = False
        self._modules = [o for o in self.objects.values() if isinstance(o, nn.Module)]
        self._pending: tuple[float, int, tuple] | None = None  # best value, iteration, weights
        self._written: tuple[int, tuple, Path] | None = None  # periodic file of this moment
        self._point_at = -1  # iteration of the last save point
        self._in_point = False  # inside a save point: the file is a complete resume point
        self._value = math.nan
        self._link: Path | None = None
        self._handlers: list[tuple[Engine, Any, Callable]] = []
        self.checkpoints = {kind: self._checkpoint(kind) for kind in KINDS}

    # -- the Ignite Checkpoint objects ---------------------------------------------

    def _checkpoint(self, kind: str) -> Checkpoint:
        names = list(self.objects)
        to_save = {name: _Saved(name, obj) for name, obj in self.objects.items()}
        iteration = lambda engine, _event: self.engine.state.iteration  # noqa: E731
        step, pattern, score = (
            iteration,
            f"{{filename_prefix}}_{kind}_iter{{global_step:08d}}.{{ext}}",
            None,
        )
        saver = DurableSaver(self.store, kind, names, extra_fn=self.payload_extra)
        if kind == "periodic" and self.save_every == -1:
            step = lambda engine, _event: self.engine.state.epoch  # noqa: E731
            pattern = "{filename_prefix}_periodic_epoch{global_step:04d}.{ext}"
        elif kind == "best":
            # Ignite puts only its own "{score:.4f}" in a name; the README's names carry
            # the metric's value: the "global step" part is the whole tag.
            step = lambda engine, _event: best_tag(  # noqa: E731
                self.best_metric or "score", self._value, self.engine.state.iteration
            )
            pattern = "{filename_prefix}_best_{global_step}.{ext}"
            sign = 1.0 if self.best_mode == "max" else -1.0
            score = nan_safe_score(lambda _engine: self._value, sign)
            saver.link_fn = lambda: self._link
            saver.resumable_fn = lambda: self._in_point
        return Checkpoint(
            to_save,
            saver,
            filename_prefix=self.store.prefix,
            score_function=score,
            n_saved=self.store.n_saved,
            global_step_transform=step,
            filename_pattern=pattern,
            save_on_rank=0,
        )

    def _rebuild_saved(self) -> None:
        """Tell each Ignite ``Checkpoint`` the files already on disk (a resumed run)."""
        found: dict[str, list] = {kind: [] for kind in KINDS}
        if self.store.writes and self.store.dirname.is_dir():
            tag = _safe_tag_part(self.best_metric) if self.best_metric else None
            sign = 1.0 if self.best_mode == "max" else -1.0
            for path, kind in self.store._files():
                priority = _parse_saved(path.name, kind, self.store.prefix, tag, sign)
                if priority is not None:
                    found[kind].append((priority, path.name))
        if idist.get_world_size() > 1:
            found = json.loads(idist.broadcast(json.dumps(found), src=0, safe_mode=True))
        for kind, items in found.items():
            items.sort(key=lambda item: item[0])
            cut = 0 if self.store.n_saved is None else max(0, len(items) - self.store.n_saved)
            checkpoint = self.checkpoints[kind]
            checkpoint.load_state_dict({"_saved": [list(i) for i in items[cut:]]})
            # files beyond n_saved (a run with a larger n_saved before): evicted as
            # Ignite's own would be, once the next file of their kind is durable
            for _, name in items[:cut]:
                checkpoint.save_handler.remove(name)

    # -- wiring -------------------------------------------------------------------

    @property
    def handlers(self) -> list[tuple[Engine, Any, Callable]]:
        """Every ``(engine, event, handler)`` attached; ``engine.remove_event_handler``
        removes one (a removed save point is not moved back)."""
        return list(self._handlers)

    def _on(self, engine: Engine, event: Any, fn: Callable) -> None:
        engine.add_event_handler(event, fn)
        self._handlers.append((engine, event, fn))

    def attach(self) -> CheckpointHandler:
        """Register the handlers (done by :func:`attach_checkpoints`)."""
        self._on(self.engine, Events.STARTED, self._started)
        self._on(self.engine, Events.EPOCH_STARTED, self._move_last)
        self._on(self.engine, Events.ITERATION_COMPLETED, self._iteration_completed)
        self._on(self.engine, Events.EPOCH_COMPLETED, self._epoch_completed)
        self._on(self.engine, Events.COMPLETED, self._completed)
        if self.evaluator is not None:
            self._on(self.evaluator, Events.COMPLETED, self._evaluated)
        return self

    def detach(self) -> None:
        """Remove every handler this object registered."""
        for engine, event, fn in self._handlers:
            if engine.has_event_handler(fn, event):
                engine.remove_event_handler(fn, event)
        self._handlers = []

    def _move_last(self, _: Engine | None = None) -> None:
        # Ignite runs an event's handlers in attach order: a checkpoint attached before
        # the user's validation or history handlers would save before they ran (and
        # resume would skip them). Moving ours to the end of each event at every epoch
        # start makes the save points see every handler, whatever the attach order.
        # A handler the user removed stays removed.
        for engine, event, fn in self._handlers:
            if (
                engine is self.engine
                and event in _SAVE_EVENTS
                and engine.has_event_handler(fn, event)
            ):
                engine.remove_event_handler(fn, event)
                engine.add_event_handler(event, fn)

    # -- events -------------------------------------------------------------------

    def _started(self, _: Engine) -> None:
        self._running = True
        self._pending = self._written = None
        self.store.remove_stale_temps()
        self._rebuild_saved()
        self._move_last()

    def _evaluated(self, evaluator: Engine) -> None:
        # Only evaluations run during training rank checkpoints (not a later test run).
        if not self._running:
            return
        self.metrics = dict(evaluator.state.metrics)
        value = self._best_value()
        if value is None:
            return
        iteration = self.engine.state.iteration
        self._pending = (value, iteration, _signature(self._modules))
        if self._point_at == iteration:
            # evaluated after this iteration's save point (e.g. from EPOCH_STARTED):
            # save now, so the file holds the evaluated weights
            self._save_best()

    def _at_epoch_end(self) -> bool:
        length = self.engine.state.epoch_length
        return bool(length) and self.engine.state.iteration % length == 0

    def _iteration_completed(self, engine: Engine) -> None:
        # The epoch's last iteration is saved at EPOCH_COMPLETED instead, after the
        # validation and history handlers, or resuming from it would skip them.
        if self._at_epoch_end():
            return
        self._save_point(periodic=self._steps_due())

    def _epoch_completed(self, engine: Engine) -> None:
        self._save_point(periodic=self.save_every == -1 or self._steps_due())

    def _steps_due(self) -> bool:
        """Whether this iteration ends an optimizer step whose count is a multiple of
        ``save_every`` (accumulation groups restart each epoch, as in ``OptimizerStep``)."""
        every, k = self.save_every, self.accumulation_steps
        if every <= 0:
            return False
        state = self.engine.state
        if k == 1:
            return state.iteration % every == 0
        length = state.epoch_length
        if not length:  # unknown epoch length: groups by global iteration
            return state.iteration % k == 0 and (state.iteration // k) % every == 0
        epochs, pos = divmod(state.iteration, length)
        if pos % k:
            return False
        steps = epochs * -(-length // k) + pos // k
        return steps % every == 0

    def _completed(self, engine: Engine) -> None:
        try:
            self._save_point(periodic=False)
            if self.save_last:
                self.save_now("last")
        finally:
            self._running = False
        self.store.wait()

    # -- saving -------------------------------------------------------------------

    def _best_value(self) -> float | None:
        if not self.best_enabled:
            return None
        metrics = self.metrics
        if self.best_metric not in metrics:
            computed = ", ".join(sorted(metrics)) or "none"
            raise KeyError(
                f"best_metric {self.best_metric!r} is not computed by the evaluator "
                f"(computed: {computed})"
            )
        try:
            value = float(metrics[self.best_metric])
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"best_metric {self.best_metric!r} is not a number: {metrics[self.best_metric]!r}"
            ) from e
        return None if math.isnan(value) else value

    def _save_point(self, periodic: bool) -> None:
        iteration = self.engine.state.iteration
        self._point_at = iteration
        if periodic:
            self.checkpoints["periodic"](self.engine)
            path = self.checkpoints["periodic"].save_handler.last_path
            self.last_path = path
            self._written = (iteration, _signature(self._modules), path)
        if self._pending is not None:
            self._in_point = True
            try:
                self._save_best()
            finally:
                self._in_point = False

    def _save_best(self) -> None:
        value, iteration, weights = self._pending
        self._pending = None
        if iteration != self.engine.state.iteration or weights != _signature(self._modules):
            warnings.warn(
                f"The weights changed between the evaluation at iteration {iteration} and "
                "its save point (a handler updated them in between): no best checkpoint "
                "for this evaluation",
                stacklevel=2,
            )
            return
        written = self._written
        self._link = written[2] if written and written[:2] == (iteration, weights) else None
        self._value = value
        best = self.checkpoints["best"]
        before = best.save_handler.last_path
        try:
            best(self.engine)  # Ignite decides (n_saved, score) and evicts
        finally:
            self._link = None
        if best.save_handler.last_path is not before:
            self.last_path = best.save_handler.last_path

    def payload_extra(self) -> dict:
        """The metadata of a file written now: progress, metrics, ``extra_fn()``'s."""
        state = self.engine.state
        extra: dict[str, Any] = {
            "iteration": state.iteration,
            "epoch": state.epoch,
            "metrics": dict(self.metrics),
        }
        if self.extra_fn is not None:
            more = self.extra_fn()
            if not isinstance(more, Mapping):
                raise TypeError(f"extra_fn must return a dict, returned {type(more).__name__}")
            extra.update(more)
        return extra

    def payload(self) -> dict:
        """The checkpoint dict for the current moment (objects + metadata)."""
        return build_payload(self.objects, self.payload_extra())

    def save_now(self, kind: str = "periodic", tag: str | None = None) -> Path:
        """Write a checkpoint now (through its Ignite ``Checkpoint``) and wait for it.

        Args:
            kind: ``"periodic"``, ``"last"`` or ``"preempt"`` (best needs a score).
            tag: Only ``iter{iteration:08d}`` (the default) goes through Ignite's
                ``Checkpoint``; another tag is written by the store directly.

        Returns:
            The checkpoint's path.
        """
        if kind == "best":
            raise ValueError("Argument kind='best' is not allowed here: best needs a score")
        default = f"iter{self.engine.state.iteration:08d}"
        if kind == "periodic" and self.save_every == -1:
            default = None
        if tag is None or tag == default:
            checkpoint = self.checkpoints[kind]
            checkpoint(self.engine)
            path = checkpoint.save_handler.last_path
        else:
            path = self.store.save(self.payload(), kind, tag)
        self.store.wait()
        self.last_path = path
        return path


_SAVE_EVENTS = (Events.ITERATION_COMPLETED, Events.EPOCH_COMPLETED, Events.COMPLETED)


def attach_checkpoints(
    engine: Engine,
    objects: Mapping[str, Any],
    store: CheckpointStore | str | os.PathLike,
    *,
    save_every: int = -1,
    evaluator: Engine | None = None,
    best_metric: str | None = None,
    best_mode: str | None = None,
    save_best: bool = True,
    save_last: bool = True,
    extra_fn: Callable[[], Mapping[str, Any]] | None = None,
    accumulation_steps: int = 1,
) -> CheckpointHandler:
    """Save periodic, best and last checkpoints of ``objects`` while ``engine`` trains.

    Works on any Ignite ``Engine`` (e.g. one from ``create_supervised_trainer``): four
    Ignite ``Checkpoint`` objects (``handler.checkpoints``) with a :class:`DurableSaver`.

    Events on ``engine`` (the save points are moved behind every other handler of their
    event at each epoch start, so the attach order does not matter)::

        ITERATION_COMPLETED  periodic when iteration % save_every == 0 -- unless it is the
                             epoch's last iteration: that one is saved at EPOCH_COMPLETED
        EPOCH_COMPLETED      periodic (save_every == -1: every epoch; > 0: deferred ones)
        COMPLETED            last; also after engine.terminate()

    Events on ``evaluator``: ``COMPLETED`` decides the best checkpoint (Ignite's
    ``Checkpoint`` with a NaN-safe score) on the metrics of *that* run and the weights
    it evaluated; the file is written at the training engine's save point that follows
    in the same iteration (one file with the periodic one when both fall there), or at
    once when that save point already passed.

    Args:
        engine: The training engine (any Ignite ``Engine``).
        objects: Name -> object with ``state_dict`` (``"model"``, ``"optimizer"``,
            ``"trainer"`` -> the engine, ``"rng"`` -> :class:`RNGState`...).
        store: Where files go: a :class:`CheckpointStore`, or a directory for one.
        save_every: Optimizer steps between periodic checkpoints (iterations when
            ``accumulation_steps`` is 1); ``-1`` each epoch; ``0`` off. The file is
            named by the iteration that completed the step.
        evaluator: Validation engine whose ``state.metrics`` rank best checkpoints.
        best_metric: Metric ranking best checkpoints (needed with an evaluator and
            ``save_best``). NaN values never count as best.
        best_mode: ``"min"``/``"max"``; ``None`` infers it (:func:`infer_mode`).
        save_best: Keep the ``store.n_saved`` best checkpoints.
        save_last: Write a ``last`` checkpoint when ``engine`` completes.
        extra_fn: Returns extra metadata at each save (``"config"``,
            ``"model_description"``...).
        accumulation_steps: Micro-batches per optimizer step (``save_every`` counts
            steps: an accumulation group ends at ``k`` micro-batches or the epoch's end).

    Returns:
        The :class:`CheckpointHandler` (``checkpoints``, ``save_now``, ``detach``,
        ``last_path``).

    Raises:
        TypeError, ValueError: A bad argument, named with what is allowed.

    Example:
        >>> attach_checkpoints(trainer, {"model": net, "optimizer": opt, "trainer": trainer,
        ...                    "rng": RNGState()}, "runs/x/checkpoints", evaluator=evaluator,
        ...                    best_metric="accuracy")  # doctest: +SKIP
    """
    if not isinstance(engine, Engine):
        raise TypeError(f"Argument engine={engine!r} is not allowed: expected an Ignite Engine")
    _check_objects(objects, need="state_dict")
    if not objects:
        raise ValueError("Argument objects={} is not allowed: expected at least one object")
    if isinstance(store, (str, os.PathLike)):
        store = CheckpointStore(store)
    if not isinstance(store, CheckpointStore):
        raise TypeError(
            f"Argument store={store!r} is not allowed: expected a CheckpointStore or a directory"
        )
    if isinstance(save_every, bool) or not isinstance(save_every, int) or save_every < -1:
        raise ValueError(
            f"Argument save_every={save_every!r} is not allowed: expected N > 0 iterations, "
            "-1 (each epoch) or 0 (off)"
        )
    if evaluator is not None and not isinstance(evaluator, Engine):
        raise TypeError(
            f"Argument evaluator={evaluator!r} is not allowed: expected an Ignite Engine or None"
        )
    if best_metric is not None and not isinstance(best_metric, str):
        raise TypeError(f"Argument best_metric={best_metric!r} is not allowed: expected a str")
    if save_best and evaluator is not None and best_metric is None:
        raise ValueError(
            "Argument best_metric=None is not allowed with an evaluator and save_best=True: "
            "name the metric that ranks checkpoints"
        )
    if best_mode is not None and best_mode not in ("min", "max"):
        raise ValueError(
            f"Argument best_mode={best_mode!r} is not allowed: expected 'min', 'max' or None"
        )
    if extra_fn is not None and not callable(extra_fn):
        raise TypeError(f"Argument extra_fn={extra_fn!r} is not allowed: expected a callable")
    if (
        isinstance(accumulation_steps, bool)
        or not isinstance(accumulation_steps, int)
        or accumulation_steps < 1
    ):
        raise ValueError(
            f"Argument accumulation_steps={accumulation_steps!r} is not allowed: expected an "
            "integer >= 1"
        )
    handler = CheckpointHandler(
        engine,
        objects,
        store,
        save_every=save_every,
        evaluator=evaluator,
        best_metric=best_metric,
        best_mode=best_mode,
        save_best=save_best,
        save_last=save_last,
        extra_fn=extra_fn,
        accumulation_steps=accumulation_steps,
    )
    return handler.attach()
