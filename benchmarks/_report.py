"""How the benchmarks print their results: a titled table with its note, and the JSON file.

One place for the layout every benchmark's report shares (a blank line, an optional
``== title``, the fixed-width table of :func:`_common.format_table`, then the line that
says how its figures were taken), so the scripts only say what goes in their tables.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import _common as common

__all__ = ["print_table", "save_json"]


def print_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[tuple[str, str, str]],
    *,
    title: str | None = None,
    note: str | None = None,
) -> None:
    """Print ``rows`` as a table after a blank line.

    Args:
        rows: one mapping per row.
        columns: ``(key, header, format spec)`` per column, as :func:`_common.format_table`.
        title: printed as ``== title`` above the table.
        note: printed under the table (what the figures are and how they were taken).
    """
    print()
    if title:
        print(f"== {title}")
    print(common.format_table(rows, columns))
    if note:
        print(note)


def save_json(path: str | os.PathLike | None, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` to ``path`` as JSON and say so; nothing when ``path`` is empty."""
    if path:
        common.write_json(path, payload)
        print(f"wrote {path}")
