"""Writing one checkpoint file so that a crash never leaves a partial file under its name.

The temp-file/fsync/rename steps are :mod:`ignitrain._files`'; what is particular to a
checkpoint is the content: ``torch.save`` to a Python file object (a full disk then
surfaces as ``OSError(ENOSPC)``), or bytes serialised before (a background store).
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ignitrain._files import commit_temp, remove_quietly, temp_path
from ignitrain.handlers.checkpoint.payload import PLAIN_LEAVES

__all__ = ["IN_MEMORY_LIMIT", "save_atomic", "serialize", "tensor_bytes", "write_temp"]

#: A background store serialises checkpoints holding up to this many bytes of tensor
#: data to memory and leaves the file write to its worker; a larger state is written
#: into the temp file by the caller (issue 16, ``benchmarks/checkpoint_cost.py
#: --sizes``, loaded machine, the training thread's wall / CPU ms): 1 MiB 4.2/1.8 in
#: memory against 4.7/2.1 into the file, 16 MiB 64/15 against 86/17, but 32 MiB
#: 199/43 against 157/33 (the growing buffer copies itself) -- and a big model then
#: needs no second copy of its state in RAM. Writing inline (no worker) is never
#: cheaper for the training thread: it waits for the fsync (44 ms at 0.1 MiB there).
#: Copying the state instead and running ``torch.save`` on the worker was tried and
#: measured no faster on 2 CPU cores (25-step epochs, width 128: 1.43 against 1.34 of
#: a hand loop, medians of 3 interleaved runs): ``torch.save`` pickles holding the GIL,
#: which the training thread then waits for.
IN_MEMORY_LIMIT = 16 * 2**20


def tensor_bytes(obj: Any) -> int:
    """Bytes of tensor data in ``obj`` (dicts, and lists of containers, walked)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(tensor_bytes(v) for v in obj.values())
    # lists of plain values (History series, RNG states) can be long: not walked
    if isinstance(obj, (list, tuple)) and obj and not isinstance(obj[0], PLAIN_LEAVES):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def serialize(obj: Any) -> memoryview:
    """``torch.save`` ``obj`` to memory."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getbuffer()


def write_temp(content: Any, path: Path) -> Path:
    """``content`` into a fresh temp file next to ``path`` (closed, not yet fsynced).

    ``content``: bytes (one write), or an object to ``torch.save``.
    On any error the temp file is removed and the error re-raised.
    """
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            if isinstance(content, (bytes, bytearray, memoryview)):
                f.write(content)
            else:
                torch.save(content, f)
    except BaseException:
        remove_quietly(tmp)
        raise
    return tmp


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` ``obj`` to ``path`` so that ``path`` is never a partial file.

    Writes a temp file (``.{name}.{random}.tmp``) in the same directory, fsyncs it,
    renames it onto ``path`` with ``os.replace`` and fsyncs the directory. On any error
    the temp file is removed and the error re-raised; ``path`` keeps its previous
    content.

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
    commit_temp(write_temp(obj, path), path)
    return path
