"""What ignitrain attached to an engine, by name: visible, checkable and removable.

Every part ignitrain wires (schedules, validation, History, stopping rules, TensorBoard,
progress, checkpoints, preemption...) is attached inside :func:`recording`, which notes
each ``add_event_handler`` call made on the given engines. The result is an
:class:`AttachedHandler` per part, collected in a read-only :class:`AttachedHandlers`
mapping (``trainer.handlers``, the return value of :func:`ignitrain.attach`)::

    entry = trainer.handlers["history"]
    for engine, event, fn in entry.events:
        assert engine.has_event_handler(fn, event)     # plain Ignite
    engine.remove_event_handler(fn, event)             # removes one of them
    entry.detach()                                     # or every handler of the part

Nothing here changes what a handler does: recording only wraps ``add_event_handler``
on the engine instances for the duration of the ``with`` block.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ignite.engine import Engine, EventsList

__all__ = ["AttachedHandler", "AttachedHandlers", "recording"]


@dataclass
class AttachedHandler:
    """One part ignitrain attached, with every Ignite event handler it registered.

    Attributes:
        name: Its key in :class:`AttachedHandlers` (``"history"``, ``"early_stopping"``).
        events: ``(engine, event, handler)`` for each registration; each is removable
            with ``engine.remove_event_handler(handler, event)``.
        handler: The object the part's attach function returned (a Schedule handler,
            Ignite's ``EarlyStopping`` subclass, the checkpoint handler...), or ``None``.
    """

    name: str
    events: list[tuple[Engine, Any, Callable]] = field(default_factory=list)
    handler: Any = None

    @property
    def attached(self) -> bool:
        """Whether any of its event handlers is still registered."""
        return any(engine.has_event_handler(fn, event) for engine, event, fn in self.events)

    def detach(self) -> None:
        """Remove every event handler of this part (those still registered)."""
        for engine, event, fn in self.events:
            if engine.has_event_handler(fn, event):
                engine.remove_event_handler(fn, event)

    def __repr__(self) -> str:
        kind = type(self.handler).__name__ if self.handler is not None else "handlers"
        return f"AttachedHandler({self.name!r}, {kind}, {len(self.events)} event handler(s))"


class AttachedHandlers(Mapping):
    """A read-only mapping name -> :class:`AttachedHandler`, in attach order."""

    def __init__(self) -> None:
        self._entries: dict[str, AttachedHandler] = {}

    def __getitem__(self, name: str) -> AttachedHandler:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(
                f"No handler named {name!r} was attached; attached: {', '.join(self) or 'none'}"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"AttachedHandlers({list(self._entries)})"

    def _add(self, entry: AttachedHandler) -> None:
        # Only the switchboard that built the mapping adds to it.
        if entry.name in self._entries:
            self._entries[entry.name].events.extend(entry.events)
            self._entries[entry.name].handler = entry.handler or self._entries[entry.name].handler
        elif entry.events:
            self._entries[entry.name] = entry


@contextlib.contextmanager
def recording(
    handlers: AttachedHandlers, name: str, *engines: Engine | None
) -> Iterator[AttachedHandler]:
    """Record into ``handlers[name]`` every event handler added to ``engines`` meanwhile.

    Set ``entry.handler`` inside the block to the object the attach call returned.
    A part that registered nothing is not added.
    """
    entry = AttachedHandler(name)
    patched = []
    for engine in {id(e): e for e in engines if e is not None}.values():
        patched.append(engine)
        engine.add_event_handler = _recorder(engine, entry)  # type: ignore[method-assign]
    try:
        yield entry
    finally:
        for engine in patched:
            del engine.add_event_handler  # the class's method again
        handlers._add(entry)


def _recorder(engine: Engine, entry: AttachedHandler) -> Callable:
    add = type(engine).add_event_handler

    def add_event_handler(event_name: Any, handler: Callable, *args: Any, **kwargs: Any) -> Any:
        handle = add(engine, event_name, handler, *args, **kwargs)
        # An EventsList is registered event by event through this same method.
        if not isinstance(event_name, EventsList):
            entry.events.append((engine, event_name, handler))
        return handle

    return add_event_handler
