"""Predictions of a trained model over a dataset, in dataset order, gathered over processes.

Each flavor hands its :class:`Trainer` a *predictor*: a callable ``batch -> (prediction,
target or None)`` that runs the model in eval mode, without gradients, under the run's
autocast. :func:`predict` runs it over the data and concatenates:

============================  ===============================================
flavor                        prediction
============================  ===============================================
classification                logits ``(N, C)`` (``argmax=True``: class indices)
regression                    values, shaped like the targets
autoencoder                   reconstructions ``x_hat`` (a VAE's first output)
seq2seq                       greedy decodes ``(N, L)``, padded with ``pad_idx``
GAN                           generator samples, from latents or a sample count
generic (``create_trainer``)  the model's output (``.logits`` / ``["logits"]``)
============================  ===============================================

Under several processes each rank predicts its shard of a ``Dataset`` (sample ``i``
on rank ``i % world_size``, no padding: :class:`~ignitrain.data.ShardSampler`), and
the shards are all-gathered (``idist.all_gather_tensors_with_shapes``) and put back in
dataset order: **every rank returns the whole**, each sample exactly once. A loader
whose sampler is a ``DistributedSampler`` (which pads ranks with repeated samples) is
re-read through its dataset the same way. Any other iterable is predicted as given
and the shards are concatenated in rank order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import ignite.distributed as idist
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from ignitrain.data import ShardSampler, is_dataset, make_eval_loader
from ignitrain.errors import is_count
from ignitrain.steps import to_device

__all__ = [
    "Predictor",
    "SupervisedPredictor",
    "AutoencoderPredictor",
    "Seq2SeqPredictor",
    "GANPredictor",
    "GenericPredictor",
    "predict",
]

Autocast = Callable[[], contextlib.AbstractContextManager]


class Predictor:
    """Base of the flavors' predictors: ``batch -> (prediction, target or None)``.

    Attributes:
        pad_value: Fills trailing dimensions when batches differ in shape (seq2seq).
    """

    pad_value: float = 0

    def __init__(
        self,
        model: nn.Module,
        device: torch.device | None = None,
        autocast: Autocast | None = None,
        *,
        channels_last: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.device = torch.device(device) if device is not None else _device_of(model)
        self.autocast = autocast or contextlib.nullcontext
        self.channels_last = channels_last

    def prepare(self, data: Any, seed: int) -> Any:
        """Turn ``data`` into something a loader can be made of (a tensor: one input each)."""
        if isinstance(data, torch.Tensor):
            return TensorDataset(data)
        return data

    def __call__(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        self.model.eval()
        with torch.no_grad():
            return self.step(to_device(batch, self.device, self.channels_last))

    def step(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:  # pragma: no cover
        raise NotImplementedError


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _input_target(batch: Any) -> tuple[Any, Any]:
    # a batch is x, or (x, y), or (x,) as TensorDataset gives
    if isinstance(batch, (list, tuple)):
        if len(batch) == 1:
            return batch[0], None
        if len(batch) == 2:
            return batch[0], batch[1]
        raise ValueError(
            f"predict expects batches x, (x,) or (x, y); got a {type(batch).__name__} "
            f"of length {len(batch)}"
        )
    return batch, None


class SupervisedPredictor(Predictor):
    """``model(x)`` as float32: logits (classification) or values (regression)."""

    def step(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        x, y = _input_target(batch)
        with self.autocast():
            y_pred = self.model(x)
        return y_pred.float(), y


class AutoencoderPredictor(Predictor):
    """Reconstructions of the clean input (no denoising noise, a VAE's mean path)."""

    def step(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        x, _ = _input_target(batch)
        with self.autocast():
            output = self.model(x)
        if isinstance(output, (list, tuple)):  # VAE: (x_hat, mu, logvar)
            output = output[0]
        return output.float(), x


class Seq2SeqPredictor(Predictor):
    """Greedy decodes of ``src`` (targets: ``tgt[:, 1:]`` when batches are pairs)."""

    def __init__(
        self,
        model: nn.Module,
        device: torch.device | None = None,
        autocast: Autocast | None = None,
        *,
        tokens: Any,
        max_decode_len: int | None = None,
    ) -> None:
        super().__init__(model, device, autocast)
        self.tokens = tokens
        self.max_decode_len = max_decode_len
        self.pad_value = tokens.pad

    def step(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        # imported here: a real cycle (ignitrain.flavors.seq2seq imports this module for
        # Seq2SeqPredictor).
        from ignitrain.flavors.seq2seq import greedy_decode

        src, tgt = _input_target(batch)
        target = tgt[:, 1:] if tgt is not None else None
        max_len = self.max_decode_len or (target.size(1) if target is not None else None)
        if max_len is None:
            raise ValueError(
                "predict on src without targets needs max_decode_len= in "
                "create_seq2seq_trainer (how many tokens to decode)"
            )
        n = src.size(0) if isinstance(src, torch.Tensor) else len(tgt)
        with self.autocast():
            decoded = greedy_decode(
                self.model, src, max_len=max_len, tokens=self.tokens, batch_size=n,
                device=self.device,
            )  # fmt: skip
        return decoded, target


class GANPredictor(Predictor):
    """Generator samples from latents; ``data`` may be a count of samples to draw."""

    def __init__(
        self,
        generator: nn.Module,
        device: torch.device | None = None,
        autocast: Autocast | None = None,
        *,
        latent_shape: tuple[int, ...],
    ) -> None:
        super().__init__(generator, device, autocast)
        self.latent_shape = tuple(latent_shape)

    def prepare(self, data: Any, seed: int) -> Any:
        if is_count(data):
            if data < 1:
                raise ValueError(f"predict(data={data!r}): a sample count must be >= 1")
            # the same latents on every rank and every call: seeded, not the global RNG
            gen = torch.Generator().manual_seed(seed)
            data = torch.randn(int(data), *self.latent_shape, generator=gen)
        return super().prepare(data, seed)

    def step(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        z, _ = _input_target(batch)
        with self.autocast():
            return self.model(z).float(), None


class GenericPredictor(Predictor):
    """The model's output: ``model(**batch)`` for a mapping, else ``model(x)``;
    an output with ``.logits`` or ``["logits"]`` gives its logits."""

    def step(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        target = None
        with self.autocast():
            if isinstance(batch, Mapping):
                batch = dict(batch)
                target = batch.get("labels")
                output = self.model(**batch)
            else:
                x, target = _input_target(batch)
                output = self.model(x)
        if isinstance(output, Mapping) and "logits" in output:
            output = output["logits"]
        elif hasattr(output, "logits"):
            output = output.logits
        if not isinstance(output, torch.Tensor):
            raise TypeError(
                f"predict: the model returned {type(output).__name__}; expected a tensor or "
                "an output with .logits"
            )
        return output.float() if output.is_floating_point() else output, target


# -- running, concatenating, gathering -----------------------------------------------


def predict(
    predictor: Callable[[Any], tuple[torch.Tensor, torch.Tensor | None]],
    data: Any,
    config: Any,
    *,
    return_targets: bool = False,
    argmax: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Predictions over ``data`` in dataset order (every rank gets the whole).

    Args:
        predictor: ``batch -> (prediction, target or None)``, e.g. :class:`SupervisedPredictor`.
        data: A ``Dataset``, a loader, an iterable of batches, a tensor of inputs (GAN: of
            latents, or a sample count).
        config: The run's config (``val_batch_size``/``batch_size``, ``num_workers``, ``seed``).
        return_targets: Also return the targets the batches carry.
        argmax: Return ``prediction.argmax(-1)`` (class indices) instead of logits.

    Returns:
        The predictions, or ``(predictions, targets)`` with ``return_targets=True``.

    Raises:
        ValueError: ``data`` is ``None`` or empty, or has no targets with ``return_targets``.
    """
    for flag, value in (("return_targets", return_targets), ("argmax", argmax)):
        if not isinstance(value, bool):
            raise TypeError(f"predict({flag}={value!r}) is not allowed: expected True or False")
    if data is None:
        raise ValueError("predict(data=None) is not allowed: pass a Dataset, a loader or a tensor")
    prepare = getattr(predictor, "prepare", None)
    if prepare is not None:
        data = prepare(data, getattr(config, "seed", None) or 0)
    loader, ordered = _loader(data, config)
    preds, targets = [], []
    for batch in loader:
        pred, target = predictor(batch)
        preds.append(pred.detach())
        if return_targets:
            if target is None:
                raise ValueError(
                    "predict(return_targets=True): the batches carry no targets "
                    "(expected (x, y) batches)"
                )
            targets.append(torch.as_tensor(target).detach())
    pad = getattr(predictor, "pad_value", 0)
    result = _gather(_concat(preds, pad), ordered, pad)
    if argmax:
        result = result.argmax(dim=-1)
    if return_targets:
        return result, _gather(_concat(targets, pad), ordered, pad)
    return result


def _loader(data: Any, config: Any) -> tuple[Iterable, bool]:
    """``(loader, ordered)``: ``ordered`` when sample ``i`` is on rank ``i % world``."""
    if is_dataset(data):
        return make_eval_loader(data, config), True
    if isinstance(data, DataLoader) and not isinstance(data.sampler, ShardSampler):
        if isinstance(data.sampler, DistributedSampler) and idist.get_world_size() > 1:
            # the distributed sampler pads ranks with repeated samples: read the
            # dataset again, each sample once, in dataset order
            loader = DataLoader(
                data.dataset,
                batch_size=data.batch_size or 1,
                sampler=ShardSampler(len(data.dataset)),
                num_workers=data.num_workers,
                collate_fn=data.collate_fn,
            )
            return loader, True
    if isinstance(data, DataLoader) and isinstance(data.sampler, ShardSampler):
        return data, True
    return data, False


def _concat(chunks: list[torch.Tensor], pad: float) -> torch.Tensor | None:
    if not chunks:
        return None
    if any(c.dim() == 0 for c in chunks):
        raise ValueError("predict: a batch's prediction is a scalar; expected one row per sample")
    return torch.cat(_padded(chunks, _max_tail([c.shape[1:] for c in chunks]), pad))


def _max_tail(shapes: list[Any]) -> list[int]:
    ndims = {len(s) for s in shapes}
    if len(ndims) != 1:
        raise ValueError(f"predict: predictions differ in number of dimensions: {shapes}")
    return [max(dims) for dims in zip(*shapes)] if ndims != {0} else []


def _padded(chunks: list[torch.Tensor], tail: list[int], pad: float) -> list[torch.Tensor]:
    out = []
    for c in chunks:
        if list(c.shape[1:]) == tail:
            out.append(c)
            continue
        full = c.new_full((c.shape[0], *tail), pad)
        full[(slice(None), *(slice(0, n) for n in c.shape[1:]))] = c
        out.append(full)
    return out


def _gather(local: torch.Tensor | None, ordered: bool, pad: float) -> torch.Tensor:
    world = idist.get_world_size()
    if world == 1:
        if local is None:
            raise ValueError("predict: the data gives no batches")
        return local.cpu()
    # shapes and dtypes first (a rank may hold no samples), then the padded shards
    meta = None if local is None else (list(local.shape), str(local.dtype).split(".")[-1])
    metas = idist.all_gather(meta)
    known = [m for m in metas if m is not None]
    if not known:
        raise ValueError("predict: the data gives no batches")
    tail = _max_tail([m[0][1:] for m in known])
    dtype = getattr(torch, known[0][1])
    device = idist.device() if idist.backend() == "nccl" else torch.device("cpu")
    if local is None:
        local = torch.empty((0, *tail), dtype=dtype)
    local = _padded([local.to(device)], tail, pad)[0]
    shapes = [[(m[0][0] if m is not None else 0), *tail] for m in metas]
    shards = idist.all_gather_tensors_with_shapes(local, shapes)
    shards = [s.cpu() for s in shards]
    if not ordered:
        return torch.cat(shards)
    total = sum(s.shape[0] for s in shards)
    out = shards[0].new_empty((total, *tail))
    for rank, shard in enumerate(shards):
        out[rank::world] = shard
    return out
