"""Reading and writing the scheduled value (``lr`` or ``momentum``) of an optimizer.

``"momentum"`` means SGD/RMSprop ``momentum`` or Adam-family ``betas[0]``: an Ignite
``ParamScheduler`` writes a plain ``param_group[name]`` key and cannot reach
``betas[0]``, which is one reason the named schedules compute their values on a shadow
optimizer and copy them here (see the package docstring).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["PARAM_NAMES", "param_values", "set_param_values"]

#: The optimizer values a schedule can drive.
PARAM_NAMES: tuple[str, ...] = ("lr", "momentum")


def param_values(optimizer: torch.optim.Optimizer, param_name: str = "lr") -> list[float]:
    """The value of ``param_name`` in every parameter group.

    ``"momentum"`` reads SGD/RMSprop ``momentum`` or Adam-family ``betas[0]``.

    Raises:
        ValueError: A group has no such parameter.
    """
    return [float(_group_get(group, param_name, optimizer)) for group in optimizer.param_groups]


def set_param_values(
    optimizer: torch.optim.Optimizer, param_name: str, values: list[float]
) -> None:
    """Set ``param_name`` in every parameter group (``values`` has one per group)."""
    groups = optimizer.param_groups
    if len(values) != len(groups):
        raise ValueError(f"Got {len(values)} values for {len(groups)} parameter groups")
    for group, value in zip(groups, values):
        if param_name == "momentum" and "betas" in group:
            group["betas"] = (value, group["betas"][1])
        else:
            _group_get(group, param_name, optimizer)  # raises when absent
            group[param_name] = value


def _group_get(group: Mapping[str, Any], param_name: str, optimizer: Any) -> Any:
    if param_name == "momentum" and "betas" in group:
        return group["betas"][0]
    if param_name not in group:
        raise ValueError(
            f"{type(optimizer).__name__} has no {param_name!r} to schedule"
            + (
                " (momentum schedules need SGD/RMSprop momentum or Adam-style betas)"
                if param_name == "momentum"
                else ""
            )
        )
    return group[param_name]
