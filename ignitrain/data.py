"""Data loaders whose batch order depends only on (seed, epoch): the basis of exact resume.

A plain Ignite ``Engine`` resumed mid-epoch restarts the data iterator, so batches
repeat and every later epoch is shifted. Here the training sampler draws its
permutation from ``seed + epoch`` (like ``DistributedSampler``) and, on the first
epoch after a resume, starts at the sample where the interrupted run stopped. The
loader owns its ``torch.Generator`` so that creating an iterator never consumes the
global RNG (which would shift dropout masks between a resumed and an uninterrupted run).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, Sampler

__all__ = [
    "ResumableSampler",
    "ShardSampler",
    "is_dataset",
    "make_train_loader",
    "make_eval_loader",
    "attach_epoch_sync",
    "loader_length",
]


class ResumableSampler(DistributedSampler):
    """A ``DistributedSampler`` (also for one process) that can start mid-epoch.

    The order of epoch ``e`` is a permutation seeded by ``seed + e``, split across
    ranks as ``DistributedSampler`` does. ``skip(n)`` drops the first ``n`` indices of
    this rank for the next iteration only.
    """

    def __init__(self, dataset: Dataset, *, shuffle: bool, seed: int, drop_last: bool = False):
        super().__init__(
            dataset,
            num_replicas=idist.get_world_size(),
            rank=idist.get_rank(),
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
        self._skip = 0

    def skip(self, num_indices: int) -> None:
        """Start the next iteration ``num_indices`` samples into this rank's order."""
        self._skip = int(num_indices)

    def __iter__(self):
        indices = list(super().__iter__())
        skip, self._skip = self._skip, 0
        return iter(indices[skip:])


def is_dataset(data: Any) -> bool:
    """Whether ``data`` is a map-style/iterable ``Dataset`` (not a ready loader)."""
    return isinstance(data, (Dataset, IterableDataset)) and not isinstance(data, DataLoader)


def _generator(seed: int) -> torch.Generator:
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def quiet_ignite_auto_loggers() -> None:
    """Let Ignite's ``auto_*`` helpers log through normal propagation.

    Ignite's ``setup_logger`` gives a *new* logger its own INFO stream handler (every
    loader creation then prints its kwargs); a logger that already exists is left as
    it is. Creating them first, at WARNING unless the user set their level, keeps the
    loader kwargs Ignite prints at INFO out of a script that logs its own INFO lines.
    """
    for name in ("auto_dataloader", "auto_model", "auto_optim"):
        log = logging.getLogger(f"ignite.distributed.auto.{name}")
        if log.level == logging.NOTSET:
            log.setLevel(logging.WARNING)


def make_train_loader(data: Any, config: Any) -> Any:
    """A training loader from a ``Dataset`` (built from ``config``) or the user's own.

    ``config.batch_size`` is the global batch: each of ``N`` processes takes
    ``batch_size // N`` (Ignite's ``auto_dataloader`` convention).
    """
    if not is_dataset(data):
        return data
    quiet_ignite_auto_loggers()
    seed = config.seed or 0
    kwargs: dict[str, Any] = {
        "batch_size": config.batch_size,
        "num_workers": config.num_workers,
        "drop_last": config.drop_last,
        "generator": _generator(seed),
        "pin_memory": torch.cuda.is_available(),
    }
    if isinstance(data, IterableDataset):
        return idist.auto_dataloader(data, **kwargs)
    kwargs["sampler"] = ResumableSampler(
        data, shuffle=config.shuffle, seed=seed, drop_last=config.drop_last
    )
    if config.num_workers > 0:
        kwargs["persistent_workers"] = False
    return idist.auto_dataloader(data, **kwargs)


class ShardSampler(Sampler):
    """Indices ``rank, rank + N, ...``: each sample on exactly one rank, no padding.

    ``DistributedSampler`` pads ranks to equal length by repeating samples, which
    would count those samples twice in reduced evaluation metrics.
    """

    def __init__(self, length: int) -> None:
        self.length = length
        self.rank = idist.get_rank()
        self.world_size = idist.get_world_size()

    def __iter__(self):
        return iter(range(self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))


def make_eval_loader(data: Any, config: Any) -> Any:
    """An evaluation loader: no shuffling, every sample exactly once across ranks.

    ``val_batch_size`` (default ``batch_size``) is the per-process batch size here.
    """
    if data is None or not is_dataset(data):
        return data
    kwargs: dict[str, Any] = {
        "batch_size": config.val_batch_size or config.batch_size,
        "num_workers": config.num_workers,
        "generator": _generator(config.seed or 0),
        "pin_memory": torch.cuda.is_available(),
    }
    if not isinstance(data, IterableDataset):
        kwargs["sampler"] = ShardSampler(len(data))
    return DataLoader(data, **kwargs)


def loader_length(data: Iterable) -> int | None:
    """``len(data)`` or ``None`` for iterables without a length."""
    try:
        return len(data)  # type: ignore[arg-type]
    except TypeError:
        return None


def attach_epoch_sync(engine: Engine, loader: Any, seed: int) -> None:
    """Keep the loader's sampler and generator in step with the engine's epoch.

    Registered on ``EPOCH_STARTED``, which Ignite fires before it creates the epoch's
    data iterator. After a mid-epoch resume the engine's iteration is past the
    epoch start; the sampler then skips the samples already seen.
    """
    sampler = getattr(loader, "sampler", None)
    batch_size = getattr(loader, "batch_size", None)
    generator = getattr(loader, "generator", None)

    def _sync(engine: Engine) -> None:
        epoch = engine.state.epoch
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        if generator is not None:
            # worker seeds of this epoch depend on (seed, epoch) only
            generator.manual_seed(seed * 1_000_003 + epoch)
        length = engine.state.epoch_length
        if isinstance(sampler, ResumableSampler) and length and batch_size:
            done = engine.state.iteration - (epoch - 1) * length
            if done > 0:
                sampler.skip(done * batch_size)

    engine.add_event_handler(Events.EPOCH_STARTED, _sync)
