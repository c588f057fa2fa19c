"""Placeholder strings in schedule parameters (``"{total_steps} // 3"``), resolved safely.

A parameter may be ``"{num_epochs}"``, ``"{steps_per_epoch}"``, ``"{total_steps}"`` or
pytorch-accelerated's upper-case names, also in arithmetic (``+ - * / // % **`` and
parentheses). The arithmetic is evaluated by a tiny AST walker, never by ``eval``.
"""

from __future__ import annotations

import ast
import enum
import operator
from collections.abc import Mapping
from typing import Any

from ignitrain.errors import ConfigError, suggest

__all__ = ["PLACEHOLDERS", "Placeholder", "resolve_placeholders"]

#: Names usable as ``"{name}"`` in schedule parameters (the upper-case ones are
#: pytorch-accelerated's ``TrainerPlaceholderValues`` names; see :class:`Placeholder`).
PLACEHOLDERS: tuple[str, ...] = (
    "num_epochs",
    "steps_per_epoch",
    "total_steps",
    "NUM_EPOCHS",
    "NUM_UPDATE_STEPS_PER_EPOCH",
    "TRAIN_DATALOADER_LEN",
    "EVAL_DATALOADER_LEN",
)


class Placeholder(str, enum.Enum):
    """pytorch-accelerated's placeholder names, resolved when the loaders exist.

    Usable as parameter values of a spec dict or of a ``functools.partial`` factory::

        partial(OneCycleLR, max_lr=0.1, epochs=Placeholder.NUM_EPOCHS,
                steps_per_epoch=Placeholder.NUM_UPDATE_STEPS_PER_EPOCH)

    ``NUM_UPDATE_STEPS_PER_EPOCH`` counts optimizer steps (``ceil(batches /
    grad_accumulation_steps)``); ``TRAIN_DATALOADER_LEN`` counts batches.
    """

    NUM_EPOCHS = "{NUM_EPOCHS}"
    NUM_UPDATE_STEPS_PER_EPOCH = "{NUM_UPDATE_STEPS_PER_EPOCH}"
    TRAIN_DATALOADER_LEN = "{TRAIN_DATALOADER_LEN}"
    EVAL_DATALOADER_LEN = "{EVAL_DATALOADER_LEN}"

    def __str__(self) -> str:
        return self.value


_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}


def _arithmetic(node: ast.AST) -> float:
    # A tiny evaluator: numbers and + - * / // % ** only, never Python's eval.
    if isinstance(node, ast.Expression):
        return _arithmetic(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _BINARY[type(node.op)](_arithmetic(node.left), _arithmetic(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_arithmetic(node.operand))
    raise ValueError(f"unsupported expression {ast.dump(node)}")


def resolve_placeholders(value: Any, context: Mapping[str, int], *, where: str = "value") -> Any:
    """Replace ``"{num_epochs}"``-style placeholders (and arithmetic on them) by numbers.

    Lists, tuples and dicts are resolved element by element; strings without ``{``
    and other values are returned unchanged.

    Args:
        value: A parameter value, e.g. ``"{total_steps} // 3"``.
        context: Placeholder name -> number.
        where: What is resolved, for error messages.

    Raises:
        ConfigError: Unknown placeholder or an expression that is not plain arithmetic.
    """
    if isinstance(value, (list, tuple)):
        return type(value)(resolve_placeholders(v, context, where=where) for v in value)
    if isinstance(value, Mapping):
        return {k: resolve_placeholders(v, context, where=where) for k, v in value.items()}
    if not isinstance(value, str) or "{" not in value:
        return value
    value = value.value if isinstance(value, Placeholder) else value
    try:
        text = value.format(**context)
    except KeyError as exc:
        name = exc.args[0]
        raise ConfigError(
            f"{where}={value!r} uses unknown placeholder {{{name}}}.{suggest(name, context)} "
            f"Known placeholders: {', '.join('{' + k + '}' for k in context)}"
        ) from None
    except (IndexError, ValueError) as exc:
        raise ConfigError(f"{where}={value!r} is not a valid placeholder string: {exc}") from None
    try:
        return _arithmetic(ast.parse(text.strip(), mode="eval"))
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError) as exc:
        raise ConfigError(
            f"{where}={value!r} (= {text!r}) is not allowed: expected a number or arithmetic "
            f"(+ - * / // % **) on placeholders ({exc})"
        ) from None
