"""Sample images of a generator: a grid PNG per epoch and a TensorBoard image.

:func:`samples_to_image` turns a batch of generated samples into one ``HxWx3`` image
in ``[0, 1]``: images become a grid, 2-D points a scatter plot, flat vectors of a
square length square images. :func:`attach_gan_samples` runs the generator on fixed
noise after every epoch and writes the picture (rank 0 only).
"""

from __future__ import annotations

import io
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from torch import nn

from ignitrain._files import write_atomic
from ignitrain.flavors._ae_common import seeded_rng

__all__ = ["samples_to_image", "image_grid", "save_png", "attach_gan_samples", "GanSamples"]

logger = logging.getLogger("ignitrain")


def _unit_range(x: torch.Tensor) -> torch.Tensor:
    """Values in ``[0, 1]``: kept if already there, ``tanh`` range mapped, else min-max."""
    lo, hi = x.min().item(), x.max().item()
    if lo >= 0.0 and hi <= 1.0:
        return x
    if lo >= -1.0 and hi <= 1.0:
        return (x + 1.0) / 2.0
    return (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)


def image_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 1) -> np.ndarray:
    """``(N, C, H, W)`` images (C = 1 or 3) -> one ``(H', W', 3)`` float array in [0, 1]."""
    images = _unit_range(images.detach().float().cpu())
    n, c, h, w = images.shape
    if c == 1:
        images = images.expand(n, 3, h, w)
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    grid = torch.ones(3, rows * (h + padding) + padding, nrow * (w + padding) + padding)
    for i in range(n):
        top, left = padding + (i // nrow) * (h + padding), padding + (i % nrow) * (w + padding)
        grid[:, top : top + h, left : left + w] = images[i]
    return grid.permute(1, 2, 0).numpy()


def _scatter(points: torch.Tensor) -> np.ndarray:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 4), dpi=80)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    pts = points.detach().float().cpu().numpy()
    ax.scatter(pts[:, 0], pts[:, 1], s=6, alpha=0.6)
    ax.set_aspect("equal")
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].astype(np.float32) / 255.0


def samples_to_image(samples: torch.Tensor) -> np.ndarray | None:
    """A picture of generated ``samples``, or ``None`` when their shape has no default.

    ``(N, C, H, W)`` with C in (1, 3) and ``(N, H, W)``: a grid; ``(N, 2)``: a scatter
    plot (needs matplotlib); ``(N, D)`` with ``D`` a square: a grid of square images.
    """
    if samples.dim() == 3:
        samples = samples.unsqueeze(1)
    if samples.dim() == 4 and samples.shape[1] in (1, 3):
        return image_grid(samples)
    if samples.dim() == 2 and samples.shape[1] == 2:
        return _scatter(samples)
    if (
        samples.dim() == 2
        and math.isqrt(samples.shape[1]) ** 2 == samples.shape[1]
        and samples.shape[1] > 1
    ):
        side = math.isqrt(samples.shape[1])
        return image_grid(samples.reshape(-1, 1, side, side))
    return None


def _as_hwc(image: Any) -> np.ndarray:
    """A user image (``HxW``, ``HxWxC`` or ``CxHxW``; float in [0, 1] or uint8) as HWC float."""
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    elif array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise ValueError(
            "sample_fn must return an image HxW, HxWxC or CxHxW; got an array of shape "
            f"{array.shape}"
        )
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return np.clip(array[..., :3].astype(np.float32), 0.0, 1.0)


def save_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an ``HxWx3`` float image to ``path`` as PNG (never a partial file).

    Raises:
        ModuleNotFoundError: matplotlib (the PNG encoder) is not installed.
    """
    try:  # optional dependency: imported where used
        from matplotlib.image import imsave
    except ModuleNotFoundError as err:  # pragma: no cover - matplotlib is a test dependency
        raise ModuleNotFoundError("pip install matplotlib to save GAN sample images") from err
    encoded = io.BytesIO()
    imsave(encoded, image, format="png")
    # not durable (no fsync): a picture per epoch, not needed to resume the run
    return write_atomic(path, encoded.getvalue(), durable=False)


class GanSamples:
    """Generate from fixed noise and write the picture; the handler of :func:`attach_gan_samples`.

    Attributes:
        last_samples: The generator's output at the last epoch (CPU), or ``None``.
        last_path: The last PNG written, or ``None``.
    """

    def __init__(
        self,
        generator: nn.Module,
        noise: Callable[[], torch.Tensor],
        out_dir: str | os.PathLike | None,
        *,
        sample_fn: Callable[[torch.Tensor], Any] | None = None,
        tensorboard_dir: str | os.PathLike | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.generator = generator
        self.noise = noise
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.sample_fn = sample_fn
        self.tensorboard_dir = tensorboard_dir
        self.device = torch.device(device)
        self.writer: Any = None
        self.last_samples: torch.Tensor | None = None
        self.last_path: Path | None = None
        self._warned = False

    @torch.no_grad()
    def generate(self) -> torch.Tensor:
        """The generator's output on the fixed noise (eval mode, RNG untouched)."""
        was_training = self.generator.training
        self.generator.eval()
        try:
            with seeded_rng(0, self.device):
                out = self.generator(self.noise().to(self.device))
        finally:
            self.generator.train(was_training)
        return out.detach().float().cpu()

    def __call__(self, engine: Engine) -> None:
        if idist.get_rank() != 0:
            return
        self.last_samples = samples = self.generate()
        image = (
            _as_hwc(self.sample_fn(samples))
            if self.sample_fn is not None
            else samples_to_image(samples)
        )
        if image is None:
            if not self._warned:
                logger.info(
                    "GAN samples of shape %s have no default picture: pass sample_fn",
                    tuple(samples.shape),
                )
                self._warned = True
            return
        if self.out_dir is not None:
            self.last_path = save_png(image, self.out_dir / f"epoch_{engine.state.epoch:04d}.png")
        if self.tensorboard_dir is not None:
            self._open()
            self.writer.add_image("samples", image, engine.state.iteration, dataformats="HWC")
            self.writer.flush()

    def _open(self) -> None:
        if self.writer is None:
            from tensorboardX import SummaryWriter

            # own file suffix: the scalar writer shares this directory, and a resumed
            # run started within the same second must not truncate this file
            suffix = f".samples.{time.time_ns()}"
            self.writer = SummaryWriter(str(self.tensorboard_dir), filename_suffix=suffix)

    def close(self, _: Engine | None = None) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def attach_gan_samples(
    engine: Engine,
    generator: nn.Module,
    noise: torch.Tensor | Callable[[], torch.Tensor],
    out_dir: str | os.PathLike | None,
    *,
    sample_fn: Callable[[torch.Tensor], Any] | None = None,
    tensorboard_dir: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
) -> GanSamples:
    """After each epoch, write ``generator(noise)`` as ``out_dir/epoch_XXXX.png`` (rank 0).

    Works on any Ignite ``Engine``. ``noise`` is a tensor or a callable returning
    one (so a checkpoint restore that replaces the tensor is seen). With
    ``tensorboard_dir`` the picture is also a TensorBoard image ``samples`` at the
    training iteration. ``sample_fn(samples) -> image`` replaces the default picture.
    """
    noise_fn = noise if callable(noise) else (lambda: noise)
    handle = GanSamples(
        generator,
        noise_fn,
        out_dir,
        sample_fn=sample_fn,
        tensorboard_dir=tensorboard_dir,
        device=device,
    )
    engine.add_event_handler(Events.EPOCH_COMPLETED, handle)
    engine.add_event_handler(Events.COMPLETED, handle.close)
    engine.add_event_handler(Events.TERMINATE, handle.close)
    return handle
