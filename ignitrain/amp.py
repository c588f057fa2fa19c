"""Which mixed precision a ``TrainConfig.amp`` value asks for, on a device.

Its own module because both the optimisation step (``ignitrain.steps``: autocast and
GradScaler) and FSDP (``ignitrain.fsdp``: the bf16 parameter dtype) read it, and
``steps`` imports ``fsdp``: here neither has to import the other the wrong way.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["resolve_amp"]


def resolve_amp(amp: Any, device: torch.device) -> str | None:
    """``False`` -> ``None``; ``True``/``"auto"`` -> fp16 on CUDA, bf16 elsewhere."""
    if amp is False or amp is None:
        return None
    if amp is True or amp == "auto":
        return "fp16" if device.type == "cuda" else "bf16"
    return amp
