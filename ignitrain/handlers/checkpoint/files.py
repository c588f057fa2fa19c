"""Writing one file so that a crash never leaves a partial file under its name."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ignitrain._files import commit_temp as _commit
from ignitrain._files import remove_quietly as _remove_quietly
from ignitrain._files import temp_path as _temp_path
from ignitrain._files import write_atomic
from ignitrain.handlers.checkpoint.payload import _PLAIN_LEAVES

__all__ = ["IN_MEMORY_LIMIT", "save_atomic"]


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
    write_atomic(path, json.dumps(data))
