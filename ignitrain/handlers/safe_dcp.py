"""Safe reading of ``torch.distributed.checkpoint`` (DCP) folders.

DCP's ``FileSystemReader`` reads ``.metadata`` with plain ``pickle.load`` and its
``DefaultLoadPlanner`` reads every non-tensor item with ``torch.load`` with ``weights_only`` off:
loading a DCP checkpoint from an untrusted source runs code. Here the metadata is read
by an unpickler that resolves only DCP's own metadata classes, and non-tensor items with
``torch.load(weights_only=True)``; anything else is a
:class:`~ignitrain.handlers.checkpoint.CheckpointError` before any of it runs::

    metadata = read_metadata(folder / ".metadata")      # refuses foreign globals
    safe_dcp_load(state_dict, folder)                   # dcp.load, read safely, in place
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ignitrain.errors import CheckpointError

# torch.distributed.checkpoint (DCP) is imported where it is used: about a second of
# imports that only FSDP runs and sharded folders need.

__all__ = ["read_metadata", "safe_dcp_load", "SafeFileSystemReader", "SafeLoadPlanner"]


# Every global a DCP ``.metadata`` pickle refers to (torch 2.13: the classes of
# torch/distributed/checkpoint/metadata.py, the filesystem's per-item _StorageInfo,
# torch.Size, dtypes, torch.serialization._get_layout and the checkpoint_id path).
_ALLOWED_GLOBALS = {
    ("torch.distributed.checkpoint.metadata", name)
    for name in (
        "Metadata",
        "MetadataIndex",
        "StorageMeta",
        "TensorProperties",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "_MEM_FORMAT_ENCODING",
    )
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # a dict lookup of torch.layout by name
    ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "PureWindowsPath"),
}


class _MetadataUnpickler(pickle.Unpickler):
    """Resolves only the globals DCP metadata is made of; refuses everything else."""

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise CheckpointError(
            f"Sharded checkpoint metadata {self.path} refers to {module}.{name}, which is not "
            "part of DCP's metadata format; refusing to load it (it could run code). "
            "Only load checkpoints from sources you trust."
        )


def read_metadata(path: str | os.PathLike) -> Any:
    """DCP ``Metadata`` from ``path``, unpickled with only DCP's own classes allowed."""
    path = Path(path)
    from torch.distributed.checkpoint.metadata import Metadata

    try:
        with open(path, "rb") as f:
            metadata = _MetadataUnpickler(f, path).load()
    except FileNotFoundError:
        raise CheckpointError(f"Sharded checkpoint {path.parent} has no {path.name}") from None
    except CheckpointError:
        raise
    except Exception as exc:  # truncated or garbled pickle
        raise CheckpointError(
            f"Sharded checkpoint metadata {path} is corrupted: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(metadata, Metadata):
        raise CheckpointError(
            f"Sharded checkpoint metadata {path} holds a {type(metadata).__name__}, "
            "not DCP Metadata"
        )
    return metadata


def _reader_class() -> type:
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class _SafeFileSystemReader(FileSystemReader):
        """``FileSystemReader`` whose ``read_metadata`` uses the restricted unpickler
        (DCP's own uses plain ``pickle.load``)."""

        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            path = Path(self._get_metadata_path(kwargs.get("rank")))
            metadata = read_metadata(path)
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return _SafeFileSystemReader


def _planner_class() -> type:
    from torch.distributed.checkpoint import DefaultLoadPlanner
    from torch.distributed.checkpoint._nested_dict import set_element

    class _SafeLoadPlanner(DefaultLoadPlanner):
        """``DefaultLoadPlanner`` whose non-tensor items are read with
        ``torch.load(weights_only=True)`` (DCP's own turns ``weights_only`` off)."""

        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            fqn = read_item.dest_index.fqn
            try:
                obj = torch.load(value, weights_only=True)
            except Exception as exc:
                raise CheckpointError(
                    f"Sharded checkpoint item {fqn!r} is not plain data that "
                    f"torch.load(weights_only=True) accepts; refusing it: {exc}"
                ) from exc
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[fqn], obj)
            else:
                self.state_dict[fqn] = obj

    return _SafeLoadPlanner


def SafeFileSystemReader(path: str | os.PathLike) -> Any:  # noqa: N802 - a class factory
    """A DCP ``FileSystemReader`` for ``path`` that reads ``.metadata`` safely."""
    return _reader_class()(path)


def SafeLoadPlanner(**kwargs: Any) -> Any:  # noqa: N802 - a class factory
    """A DCP ``DefaultLoadPlanner`` that reads non-tensor items with ``weights_only=True``."""
    return _planner_class()(**kwargs)


def safe_dcp_load(state_dict: dict[str, Any], folder: str | os.PathLike) -> None:
    """``dcp.load(state_dict)`` from ``folder`` in place, read safely.

    The metadata is checked by the restricted unpickler before DCP starts (DCP turns
    a reader's error into a bare message), non-tensor items are read with
    ``weights_only=True``, and every failure is a ``CheckpointError``. Works on every
    rank of a process group (a collective) or on one process without one.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    folder = Path(folder)
    read_metadata(folder / ".metadata")
    try:
        dcp.load(
            state_dict,
            storage_reader=SafeFileSystemReader(folder),
            planner=SafeLoadPlanner(),
            no_dist=not (dist.is_available() and dist.is_initialized()),
        )
    except CheckpointError:
        raise
    except (Exception, CheckpointException) as exc:  # CheckpointException: a BaseException
        cause = _checkpoint_cause(exc)
        if cause is not None:
            raise cause from exc
        raise CheckpointError(
            f"Sharded checkpoint {folder} does not load into the given objects: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _checkpoint_cause(exc: BaseException) -> CheckpointError | None:
    """DCP wraps errors raised while reading (``CheckpointException``): find ours."""
    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, CheckpointError):
            return e
        failures = getattr(e, "failures", None)
        if isinstance(failures, Mapping):
            for failure in failures.values():
                stack.append(failure[0] if isinstance(failure, tuple) else failure)
        stack.extend(x for x in (e.__cause__, e.__context__) if x is not None)
    return None
