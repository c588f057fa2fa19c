"""Small parts shared by the unsupervised flavors (autoencoder, GAN).

Their evaluation metric is :class:`ignitrain.handlers.metrics.OutputMean` (``weight_key="n"``).

* :func:`batch_input` takes the input of a batch that is ``x`` or ``(x, label)``.
* :func:`seeded_rng` runs a block with the global torch RNG reseeded and restores it
  afterwards, so evaluation noise is the same every time and never shifts training.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["batch_input", "seeded_rng"]


def batch_input(batch: Any) -> torch.Tensor:
    """``x`` for a batch ``x`` or ``(x, ...)`` (labels are ignored).

    Raises:
        TypeError: the batch (or its first item) is not a tensor.
    """
    x = batch[0] if isinstance(batch, (list, tuple)) and len(batch) > 0 else batch
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            "batches must be a tensor x or a tuple (x, label, ...) whose first item is a tensor; "
            f"got {type(batch).__name__}"
            + (f" whose first item is {type(x).__name__}" if x is not batch else "")
        )
    return x


@contextlib.contextmanager
def seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Run the block with torch's global RNG seeded by ``seed``; restore it after.

    Evaluation noise (denoising inputs, VAE sampling, GAN latents) then repeats
    exactly between evaluations, and the training RNG stream (checkpointed for
    exact resume) is untouched by evaluating.
    """
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else []
    )
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
