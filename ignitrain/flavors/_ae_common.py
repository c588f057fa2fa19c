"""Small parts shared by the unsupervised flavors (autoencoder, GAN).

* :func:`batch_input` takes the input of a batch that is ``x`` or ``(x, label)``.
* :class:`OutputMean` is an Ignite metric: the sample-weighted mean of one number of
  an evaluation output dict, reduced over processes.
* :func:`seeded_rng` runs a block with the global torch RNG reseeded and restores it
  afterwards, so evaluation noise is the same every time and never shifts training.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce

__all__ = ["batch_input", "OutputMean", "seeded_rng"]


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


class OutputMean(Metric):
    """Mean of ``output[key]`` weighted by ``output["n"]`` (the batch size).

    The evaluation step returns per-batch means; weighting by batch size makes the
    result the mean over samples even when the last batch is smaller.
    """

    def __init__(self, key: str, device: str | torch.device = "cpu") -> None:
        self.key = key
        super().__init__(output_transform=self._pick, device=device, skip_unrolling=True)

    def _pick(self, output: Any) -> tuple[float, int]:
        return float(output[self.key]), int(output["n"])

    @reinit__is_reduced
    def reset(self) -> None:
        self._total = torch.tensor(0.0, dtype=torch.float64, device=self._device)
        self._count = torch.tensor(0.0, dtype=torch.float64, device=self._device)

    @reinit__is_reduced
    def update(self, output: tuple[float, int]) -> None:
        value, n = output
        self._total += value * n
        self._count += n

    @sync_all_reduce("_total", "_count")
    def compute(self) -> float:
        if self._count.item() == 0:
            raise RuntimeError(
                f"OutputMean({self.key!r}) needs at least one batch before compute()"
            )
        return (self._total / self._count).item()


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
