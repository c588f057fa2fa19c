"""Reading a checkpoint file with ``torch.load(weights_only=True)`` only, CRC-checked."""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path

import torch

from ignitrain.handlers.checkpoint.format import CheckpointError, as_payload

__all__ = ["safe_load"]


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


def safe_load(path: str | os.PathLike, *, foreign: bool = False) -> dict:
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
    path = Path(path)
    try:
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
    except OSError as e:  # unreadable (permissions, a vanished file, a FIFO...)
        raise CheckpointError(f"Checkpoint {path} cannot be read: {e}") from e
