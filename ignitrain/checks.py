"""Checks a factory makes before it builds anything, so a run fails at construction and
not after an epoch (issue 12 item 5).

Two entry points, one line each in ``ignitrain/flavors/_recipe.py``:

* :func:`check_run_config` (from ``check_config``): ``seed`` within torch's range,
  ``resume`` naming ``"latest"`` or an existing file (with a suggestion for a typo), the
  ``output_dir`` created and probed for writing (rank 0).
* :func:`check_data` (from ``make_loaders``): a one-pass iterable (a generator) as
  training data for more than one epoch, empty validation data, ``save_best`` without
  validation data.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import ignite.distributed as idist

from ignitrain.config import ConfigError, TrainConfig, suggest

__all__ = ["SEED_MAX", "check_data", "check_run_config"]

logger = logging.getLogger("ignitrain")

# torch.manual_seed takes a uint64 (seed + rank must fit).
SEED_MAX = 2**64 - 1


def _check_seed(config: TrainConfig) -> None:
    seed = config.seed
    if seed is None:
        return
    top = SEED_MAX - (idist.get_world_size() - 1)
    if not 0 <= seed <= top:
        raise ConfigError(
            f"TrainConfig.seed={seed!r} is not allowed: expected an integer in 0..{top} "
            "(torch seeds are unsigned 64-bit; each process uses seed + rank) or None"
        )


def _check_output_dir(config: TrainConfig) -> None:
    if config.output_dir is None or idist.get_rank() != 0:
        return
    directory = Path(config.output_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ConfigError(
            f"TrainConfig.output_dir={str(directory)!r} is not allowed: it cannot be "
            f"created or written ({err.strerror or err}); choose a writable directory"
        ) from None


def _check_resume(config: TrainConfig) -> None:
    resume = config.resume
    if resume is None or resume == "latest" or Path(resume).exists():
        return
    raise ConfigError(
        f"TrainConfig.resume={resume!r} is not allowed: expected 'latest' or the path of an "
        f"existing checkpoint{suggest(resume, ['latest'])}"
    )


def check_run_config(config: TrainConfig) -> TrainConfig:
    """Factory-time checks of ``config`` alone (see the module doc); returns it."""
    _check_seed(config)
    _check_resume(config)
    _check_output_dir(config)
    return config


def _one_pass(data: Any) -> bool:
    try:
        return iter(data) is data
    except TypeError:
        return False


def check_data(train_data: Any, val_data: Any, val_loader: Any, config: TrainConfig) -> None:
    """Factory-time checks of the data (see the module doc).

    Raises:
        ValueError: one-pass training data for several epochs, or empty validation data.
    """
    from ignitrain.data import loader_length

    if _one_pass(train_data) and config.num_epochs > 1 and config.max_steps is None:
        raise ValueError(
            f"train_data is a one-pass iterator ({type(train_data).__name__}): epoch 1 "
            f"would use it up and epochs 2..{config.num_epochs} would be empty. Pass a "
            "Dataset, a DataLoader or a list of batches"
        )
    if val_data is not None and _one_pass(val_data):
        raise ValueError(
            f"val_data is a one-pass iterator ({type(val_data).__name__}): only the first "
            "validation would see data. Pass a Dataset, a DataLoader or a list of batches"
        )
    if val_loader is not None and loader_length(val_loader) == 0:
        size = config.val_batch_size or config.batch_size
        raise ValueError(
            f"val_data gives no batches (val_batch_size={size}, "
            f"{idist.get_world_size()} process(es)): pass validation data or val_data=None"
        )
    if val_loader is None and config.save_best and config.output_dir is not None:
        logger.warning(
            "TrainConfig.save_best=True without validation data: no best checkpoint is "
            "kept (pass val_data, or save_best=False to silence this)"
        )
