"""Checkpoints that survive crashes, load safely and resume a run where it stopped.

Works on any Ignite ``Engine``. The parts, from the bottom up:

* :func:`save_atomic` / :func:`safe_load`: one file written so that a crash never
  leaves a partial file under the final name, and read back with
  ``torch.load(weights_only=True)`` only, every failure turned into one
  :class:`CheckpointError` that names the file and what is wrong with it.
* :func:`build_payload` / :func:`load_objects` / :func:`load_checkpoint`: what goes in a
  file (``state_dict`` of each object, plus plain metadata) and how it goes back, all
  checked before anything is loaded.
* :class:`CheckpointStore`: a directory of checkpoints with a naming scheme, eviction
  and a ``latest`` pointer.
* :func:`attach_checkpoints`: the Ignite adapter deciding *when* to save.

Files in a store's directory::

    {prefix}_{kind}_{tag}.pt       one checkpoint
    {prefix}_latest.json           {"file": ..., "kind": ..., "iteration": ..., "epoch": ...}
    .{file}.{random}.tmp           a write in progress; a crash leaves it behind and the
                                   next successful save removes it

    kind       tag                             written
    periodic   iter{N:08d} / epoch{E:04d}      every save_every iterations / each epoch
    best       {metric}={value:.6g}_iter{N:08d}  when the metric is among the n_saved best
    last       iter{N:08d}                     when the training engine completes
    preempt    iter{N:08d}                     on SIGTERM (see ignitrain.handlers.preemption)

e.g. ``checkpoint_periodic_epoch0003.pt``, ``checkpoint_best_accuracy=0.9512_iter00000300.pt``.

A checkpoint file is a plain dict (format version 1)::

    {"ignitrain_format": 1,
     "state": {name: obj.state_dict(), ...},          # "model", "optimizer", "trainer", ...
     "checkpoint": {"kind": ..., "tag": ..., "score": ...},   # added by CheckpointStore
     "iteration": ..., "epoch": ..., "metrics": {...},        # added by attach_checkpoints
     "config": {...}, "model_description": {"class": "pkg.mod.Class", "args": {...}}}

Every value is a tensor or plain Python data, so ``torch.load(path, weights_only=True)``
reads it without widening torch's safe globals. RNG states are stored as tensors and
lists (:class:`RNGState`), never as numpy objects.
"""

from __future__ import annotations

import contextlib
import copy
import io
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
from torch import nn

from ignitrain.distributed import agree_all, own_rank_state, with_rank_states
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
    "attach_checkpoints",
    "infer_mode",
    "best_tag",
]

FORMAT_KEY = "ignitrain_format"
FORMAT_VERSION = 1
KINDS = ("periodic", "best", "last", "preempt")
_RESERVED_KEYS = (FORMAT_KEY, "state", "checkpoint")


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


def _check_format(obj: Any, source: str) -> None:
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
            "model.load_state_dict(torch.load(path, weights_only=True))."
        )
    if obj[FORMAT_KEY] != FORMAT_VERSION:
        raise CheckpointError(
            f"Checkpoint {source} has format version {obj[FORMAT_KEY]!r}; this ignitrain "
            f"reads version {FORMAT_VERSION}"
        )
    if not isinstance(obj.get("state"), dict):
        raise CheckpointError(f"Checkpoint {source} has no 'state' dict of saved objects")


def safe_load(path: str | os.PathLike) -> dict:
    """Read an ignitrain checkpoint with ``torch.load(weights_only=True)`` and check it.

    Besides the format, every zip record's CRC-32 is verified, because ``torch.load``
    does not check them and a bit flip in tensor data would otherwise load silently.

    Args:
        path: The checkpoint file.

    Returns:
        The payload dict, tensors on the CPU.

    Raises:
        CheckpointError: Naming ``path`` and the problem: missing, empty, truncated or
            corrupted, not a torch file, refused as unsafe (a pickle that would run
            code), or not an ignitrain checkpoint.
    """
    path = Path(path)
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
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(
            f"Checkpoint {path} is truncated or corrupted: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}"
        ) from e
    _check_format(obj, str(path))
    return obj


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
        ``{"ignitrain_format": 1, "state": {name: state_dict}, **extra}``.

    Raises:
        TypeError: An object has no ``state_dict``, or ``extra`` is not a dict.
        ValueError: ``extra`` uses a reserved key.
        CheckpointError: A state holds something weights_only loading would refuse.
    """
    _check_objects(objects, need="state_dict")
    extra = {} if extra is None else extra
    if not isinstance(extra, Mapping):
        raise TypeError(f"Argument extra={extra!r} is not allowed: expected a dict or None")
    reserved = [k for k in extra if k in _RESERVED_KEYS]
    if reserved:
        raise ValueError(f"Argument extra uses reserved key(s) {reserved}: choose other names")
    state = {
        name: _make_safe(_state_of(obj), f"state[{name!r}]", arrays_to_tensors=False)
        for name, obj in objects.items()
    }
    meta = {k: _make_safe(v, f"extra[{k!r}]", arrays_to_tensors=True) for k, v in extra.items()}
    return {FORMAT_KEY: FORMAT_VERSION, "state": state, **meta}


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
    problems = []
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
) -> None:
    """Load ``payload["state"][name]`` into each object, after checking all of them.

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

    Raises:
        TypeError: ``objects`` is not a dict of loadable objects.
        CheckpointError: Listing every problem found.
    """
    _check_objects(objects, need="load_state_dict")
    _check_format(payload, source)
    saved = payload["state"]
    problems: list[str] = []
    plan: list[tuple[str, Any, Any]] = []
    for name, obj in objects.items():
        if name not in saved:
            held = ", ".join(sorted(saved)) or "nothing"
            msg = f"no state named {name!r} (the checkpoint holds: {held})"
            if strict:
                problems.append(msg)
            else:
                warnings.warn(f"Checkpoint {source}: {msg}; {name!r} left as it is", stacklevel=2)
            continue
        stored = saved[name]
        if isinstance(obj, nn.Module):
            stored, module_problems = _module_problems(name, obj, stored, strict)
            problems += module_problems
        elif isinstance(obj, torch.optim.Optimizer):
            problems += _optimizer_problems(name, obj, stored)
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
        _check_format(payload, "payload")
        score = self._check_score(kind, score)
        if not self.writes:
            return path
        self.wait()
        self.dirname.mkdir(parents=True, exist_ok=True)
        marked = {**payload, "checkpoint": {"kind": kind, "tag": tag, "score": score}}
        iteration = _as_int(payload.get("iteration"))
        epoch = _as_int(payload.get("epoch"))
        if self.background and _tensor_bytes(marked) <= IN_MEMORY_LIMIT:
            # serialised now (a consistent snapshot); many small file writes go to the
            # worker as one (measured: 1.7 ms instead of 3.0 ms for a 140 KiB checkpoint)
            data = _serialize(marked)

            def write() -> None:
                tmp = _write_bytes_temp(data, path)
                self._finish(tmp, path, kind, score, iteration, epoch)

            self._submit(write)
        else:
            tmp = _write_temp(marked, path)
            self._submit(self._finish, tmp, path, kind, score, iteration, epoch)
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
            self._finish(tmp, path, kind, score, iteration, epoch, synced=linked)

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
    ) -> None:
        _commit(tmp, path, synced=synced)
        st = path.stat()
        entry = _Entry(path, kind, score, iteration, epoch, st.st_mtime_ns)
        self._meta[(path.name, st.st_mtime_ns, st.st_size)] = entry
        _write_json_atomic(
            {"file": path.name, "kind": kind, "iteration": iteration, "epoch": epoch},
            self.pointer_path,
        )
        self._evict(kind, keep=path)
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
        for path in self.dirname.glob(f"{self.prefix}_*.pt"):
            kind = path.name[len(self.prefix) + 1 :].split("_", 1)[0]
            if kind in KINDS:
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
                _check_format(obj, str(path))
                info = obj.get("checkpoint", {})
                entry = _Entry(
                    path,
                    kind or info.get("kind", "periodic"),
                    info.get("score"),
                    _as_int(obj.get("iteration")),
                    _as_int(obj.get("epoch")),
                    st.st_mtime_ns,
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
        return self.dirname / name

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
        candidates = [e for e in self._entries() if e.path != pointed]
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


def _as_int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


# -- the Ignite adapter ---------------------------------------------------------------


class CheckpointHandler:
    """Decides when to save and hands payloads to a :class:`CheckpointStore`.

    Created by :func:`attach_checkpoints`, which documents the events. Holds the
    engine, objects, store and evaluator it was given; ``last_path`` is the most recent
    file written.
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
    ):
        self.engine = engine
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
        self._pending = False
        self._running = False
        self._handlers: list[tuple[Engine, Any, Callable]] = []

    # -- wiring -------------------------------------------------------------------

    def _on(self, engine: Engine, event: Any, fn: Callable) -> None:
        engine.add_event_handler(event, fn)
        self._handlers.append((engine, event, fn))

    def attach(self) -> CheckpointHandler:
        """Register the handlers (done by :func:`attach_checkpoints`)."""
        self._on(self.engine, Events.STARTED, self._started)
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

    # -- events -------------------------------------------------------------------

    def _started(self, _: Engine) -> None:
        self._running = True
        self._pending = False

    def _evaluated(self, _: Engine) -> None:
        # Only evaluations run during training rank checkpoints (not a later test run).
        # The metrics are read at the next save point, when every handler of the
        # evaluator (metrics attached after us included) has run.
        if self._running:
            self._pending = True

    def _at_epoch_end(self) -> bool:
        length = self.engine.state.epoch_length
        return bool(length) and self.engine.state.iteration % length == 0

    def _iteration_completed(self, engine: Engine) -> None:
        # The epoch's last iteration is saved at EPOCH_COMPLETED instead, after the
        # validation and history handlers, or resuming from it would skip them.
        if self._at_epoch_end():
            return
        due = self.save_every > 0 and engine.state.iteration % self.save_every == 0
        self._save_point(periodic_tag=f"iter{engine.state.iteration:08d}" if due else None)

    def _epoch_completed(self, engine: Engine) -> None:
        state = engine.state
        tag = None
        if self.save_every == -1:
            tag = f"epoch{state.epoch:04d}"
        elif self.save_every > 0 and state.iteration % self.save_every == 0:
            tag = f"iter{state.iteration:08d}"
        self._save_point(periodic_tag=tag)

    def _completed(self, engine: Engine) -> None:
        try:
            self._save_point(periodic_tag=None)
            if self.save_last:
                self.save_now("last")
        finally:
            self._running = False
        self.store.wait()

    # -- saving -------------------------------------------------------------------

    def _best_value(self) -> float | None:
        if not self._pending or self.evaluator is None:
            return None
        self._pending = False
        metrics = self.metrics = dict(self.evaluator.state.metrics)
        if not self.best_enabled:
            return None
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

    def _score(self, value: float) -> float:
        return value if self.best_mode == "max" else -value

    def _save_point(self, periodic_tag: str | None) -> None:
        value = self._best_value()
        best = value is not None and self.store.would_keep_best(self._score(value))
        if idist.get_world_size() > 1:
            # Only rank 0 knows the kept scores (the others answer True): take its answer
            # on every rank, since building the payload gathers RNG states from all.
            best = agree_all(best)
        if periodic_tag is None and not best:
            return
        payload = self.payload()
        path = None
        if periodic_tag is not None:
            path = self.last_path = self.store.save(payload, "periodic", periodic_tag)
        if best:
            tag = best_tag(self.best_metric, value, self.engine.state.iteration)
            if path is not None:
                self.last_path = self.store.copy_as(path, "best", tag, self._score(value))
            else:
                self.last_path = self.store.save(payload, "best", tag, self._score(value))

    def payload(self) -> dict:
        """The checkpoint dict for the current moment (objects + metadata)."""
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
        return build_payload(self.objects, extra)

    def save_now(self, kind: str = "periodic", tag: str | None = None) -> Path:
        """Write a checkpoint now and wait until it is committed.

        Args:
            kind: ``"periodic"``, ``"last"`` or ``"preempt"`` (best needs a score: use
                the store).
            tag: Defaults to ``iter{iteration:08d}``.

        Returns:
            The checkpoint's path.
        """
        if kind == "best":
            raise ValueError("Argument kind='best' is not allowed here: best needs a score")
        tag = tag if tag is not None else f"iter{self.engine.state.iteration:08d}"
        path = self.store.save(self.payload(), kind, tag)
        self.store.wait()
        self.last_path = path
        return path


def attach_checkpoints(
    engine: Engine,
    objects: Mapping[str, Any],
    store: CheckpointStore,
    *,
    save_every: int = -1,
    evaluator: Engine | None = None,
    best_metric: str | None = None,
    best_mode: str | None = None,
    save_best: bool = True,
    save_last: bool = True,
    extra_fn: Callable[[], Mapping[str, Any]] | None = None,
) -> CheckpointHandler:
    """Save periodic, best and last checkpoints of ``objects`` while ``engine`` trains.

    Attach it after the validation and history handlers: at the same event, Ignite runs
    handlers in the order they were added, and a checkpoint must see their results.

    Events on ``engine``::

        ITERATION_COMPLETED  periodic when iteration % save_every == 0 -- unless it is the
                             epoch's last iteration: that one is saved at EPOCH_COMPLETED
        EPOCH_COMPLETED      periodic (save_every == -1: every epoch; > 0: deferred ones);
                             best, when the evaluator ran since the last save point
        COMPLETED            best (pending), then last; also after engine.terminate()

    The evaluator's COMPLETED event only records its metrics; the best checkpoint is
    written at the training engine's next save point, so it holds the whole epoch.

    Args:
        engine: The training engine (any Ignite ``Engine``).
        objects: Name -> object with ``state_dict`` (``"model"``, ``"optimizer"``,
            ``"trainer"`` -> the engine, ``"rng"`` -> :class:`RNGState`...).
        store: Where files go.
        save_every: Iterations between periodic checkpoints; ``-1`` each epoch; ``0`` off.
        evaluator: Validation engine whose ``state.metrics`` rank best checkpoints.
        best_metric: Metric ranking best checkpoints (needed with an evaluator and
            ``save_best``). NaN values never count as best.
        best_mode: ``"min"``/``"max"``; ``None`` infers it (:func:`infer_mode`).
        save_best: Keep the ``store.n_saved`` best checkpoints.
        save_last: Write a ``last`` checkpoint when ``engine`` completes.
        extra_fn: Returns extra metadata at each save (``"config"``,
            ``"model_description"``...).

    Returns:
        The :class:`CheckpointHandler` (``save_now``, ``detach``, ``last_path``).

    Raises:
        TypeError, ValueError: A bad argument, named with what is allowed.

    Example:
        >>> store = CheckpointStore("runs/x/checkpoints", n_saved=2)  # doctest: +SKIP
        >>> attach_checkpoints(trainer, {"model": net, "optimizer": opt, "trainer": trainer,
        ...                    "rng": RNGState()}, store, evaluator=evaluator,
        ...                    best_metric="accuracy")  # doctest: +SKIP
    """
    if not isinstance(engine, Engine):
        raise TypeError(f"Argument engine={engine!r} is not allowed: expected an Ignite Engine")
    _check_objects(objects, need="state_dict")
    if not objects:
        raise ValueError("Argument objects={} is not allowed: expected at least one object")
    if not isinstance(store, CheckpointStore):
        raise TypeError(f"Argument store={store!r} is not allowed: expected a CheckpointStore")
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
    )
    return handler.attach()
