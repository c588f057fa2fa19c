"""Writing files so that a crash never leaves a partial one, writing them off-thread, and
reading the YAML/JSON files a user writes.

One place for the temp-file-fsync-rename dance every output of a run goes through
(config, History, reports, records, checkpoints), for the one background writer
thread that takes fsyncs and slow writes off the training thread, and for the one
YAML/JSON reader (config files, job files, ``--set`` values), so that ``lr: 1e-3``
means the same number everywhere.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ignitrain.errors import ConfigError

__all__ = [
    "BackgroundWriter",
    "YAML_SUFFIXES",
    "commit_temp",
    "dump_yaml",
    "fsync_dir",
    "fsync_existing",
    "fsync_file",
    "load_yaml",
    "read_mapping",
    "remove_quietly",
    "temp_path",
    "write_atomic",
]

YAML_SUFFIXES = (".yaml", ".yml")
"""File suffixes read as YAML (``.json`` is read as JSON)."""


def temp_path(path: Path) -> Path:
    """A fresh hidden temp name next to ``path`` (``.{name}.{random}.tmp``)."""
    # Same directory, so os.replace is a rename within one filesystem (atomic).
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def remove_quietly(path: Path) -> None:
    """Remove ``path`` if it exists; never raise."""
    with contextlib.suppress(OSError):
        os.unlink(path)


def fsync_dir(dirname: Path) -> None:
    """Make the directory entries of ``dirname`` (a rename) durable."""
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


def fsync_file(path: Path) -> None:
    """Flush ``path``'s data to disk."""
    fd = os.open(path, os.O_RDWR)  # Windows needs write access to flush
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_existing(path: Path) -> None:
    """:func:`fsync_file` when ``path`` exists (nothing to make durable otherwise)."""
    try:
        fsync_file(path)
    except FileNotFoundError:
        pass


def commit_temp(tmp: Path, path: Path, *, synced: bool = False, sync_dir: bool = True) -> None:
    """Make a finished temp file durable, rename it onto ``path``, make the rename durable.

    Kept apart from the write so a background writer can run it off the training
    thread. ``synced``: the temp file's data is already on disk (a hard link to a
    committed file). ``sync_dir=False``: the caller fsyncs the directory once for
    several renames (a checkpoint store's save point). On error the temp file is
    removed and the error re-raised.
    """
    try:
        if not synced:
            fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise
    if sync_dir:
        fsync_dir(path.parent)


def write_atomic(path: str | os.PathLike, data: bytes | str, *, durable: bool = True) -> Path:
    """Write ``data`` to ``path`` so that ``path`` is never a partial file.

    Args:
        path: The final file name; its directory is created if missing.
        data: The whole content (``str`` is written as UTF-8).
        durable: fsync the file and its directory (off only for files that are
            rewritten often and rebuilt from a durable source).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OSError: The write, fsync or rename failed (e.g. ``ENOSPC``); ``path`` keeps its
            previous content and no temp file is left.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    payload = data.encode() if isinstance(data, str) else data
    try:
        with open(tmp, "wb") as fh:
            fh.write(payload)
    except BaseException:
        remove_quietly(tmp)
        raise
    if durable:
        commit_temp(tmp, path)
    else:
        try:
            os.replace(tmp, path)
        except BaseException:
            remove_quietly(tmp)
            raise
    return path


class BackgroundWriter:
    """Runs calls on one worker thread, in order; an error surfaces at the next call."""

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._pending: Future | None = None
        self._again: tuple[Callable[..., Any], tuple] | None = None
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` after the previous call (waiting for it first)."""
        self.wait()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="ignitrain-writer")
        self._pending = self._executor.submit(fn, *args)

    def submit_coalesced(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` soon, without waiting: while a call is still running, it
        runs once more when that one ends (an fsync each epoch must not wait for the
        last one on a slow disk; one later fsync covers every write before it)."""
        with self._lock:
            if self._pending is not None and not self._pending.done():
                self._again = (fn, args)
                return
        self.submit(self._run_until_settled, fn, args)

    def _run_until_settled(self, fn: Callable[..., Any], args: tuple) -> None:
        while True:
            fn(*args)
            with self._lock:
                again, self._again = self._again, None
            if again is None:
                return
            fn, args = again

    def wait(self) -> None:
        """Block until the calls so far are done; raise their error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()
        with self._lock:
            again, self._again = self._again, None
        if again is not None:  # queued just as the worker finished
            again[0](*again[1])


# -- reading YAML and JSON ------------------------------------------------------------

# YAML 1.1 (PyYAML) needs a dot in a float ("1.0e-3") and reads "1e-3" as a string;
# in a training option it is always meant as a number (YAML 1.2 and JSON agree).
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


def _import_yaml() -> Any:
    # optional dependency (the "yaml" extra): imported where used, with the fix in the error
    try:
        import yaml
    except ModuleNotFoundError as exc:  # pragma: no cover - depends on the install
        raise ModuleNotFoundError("pip install pyyaml to read or write YAML files") from exc
    return yaml


@functools.cache
def _yaml_loader() -> Any:
    """``yaml.SafeLoader`` that also reads ``1e-3`` as a float."""
    yaml = _import_yaml()

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789"))
    return Loader


def _yaml_problem(exc: Any) -> str:
    """``" at line L, column C: problem (construct started at line S)"`` of a YAMLError."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    # PyYAML marks where it gave up (often the line after an unclosed bracket or
    # quote); its context mark is where the broken construct started
    context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and start is not None and (mark is None or start.line != mark.line):
        problem += f" ({context} started at line {start.line + 1})"
    return f"{where}: {problem}"


def load_yaml(text: str, *, source: str = "YAML") -> Any:
    """Parse ``text`` as YAML with the safe loader (``1e-3`` is a float).

    Args:
        text: The YAML text.
        source: What the text is (a file name, ``"--set lr=..."``), for the error.

    Raises:
        ConfigError: the text does not parse; the message names ``source`` and the line.
    """
    yaml = _import_yaml()
    try:
        return yaml.load(text, Loader=_yaml_loader())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML{_yaml_problem(exc)}") from None


def dump_yaml(data: Any) -> str:
    """``data`` as block-style YAML, keys in their order (what :func:`load_yaml` reads)."""
    return _import_yaml().safe_dump(data, sort_keys=False)


def read_mapping(path: str | os.PathLike, *, what: str = "config file") -> dict[str, Any]:
    """Read a ``.yaml``/``.yml`` or ``.json`` file that must hold a mapping.

    The one reader of user-written files (``TrainConfig.from_file``, job files): YAML is
    read with :func:`load_yaml`, so ``lr: 1e-3`` is the float ``0.001``. An empty file is
    an empty mapping.

    Args:
        path: The file.
        what: What the file is, for the missing-file message (``"job file"``).

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ConfigError: the suffix is not allowed, the file does not parse (the message
            names the file, line and column) or it holds something other than a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    if path.suffix in YAML_SUFFIXES:
        data = load_yaml(path.read_text(), source=str(path))
    elif path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
            ) from None
    else:
        raise ConfigError(f"{path}: {what}s must end in .yaml, .yml or .json")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of options, got {type(data).__name__}")
    return data
