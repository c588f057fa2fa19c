"""``create_autoencoder_trainer``: plain, denoising and variational autoencoders.

The flavor's decisions live in :class:`AutoencoderObjective` (a plain object: which
kind, how the input is corrupted, the loss and its KL weight at a point of training);
the update and evaluation functions only move data and call it.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine
from ignite.metrics import Metric
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from ignitrain.data import is_dataset
from ignitrain.errors import is_number, suggest
from ignitrain.flavors import _parts
from ignitrain.flavors._ae_common import batch_input, seeded_rng
from ignitrain.flavors._attach import AttachOptions, build_trainer
from ignitrain.handlers.metrics import OutputMean
from ignitrain.predict import AutoencoderPredictor
from ignitrain.registry import build_loss
from ignitrain.steps import OptimizerStep, StepOptions, to_device, train_mode
from ignitrain.trainer import RunData, RunParts, Steps, Trainer

__all__ = [
    "AE_KINDS",
    "AutoencoderObjective",
    "kl_divergence",
    "training_progress",
    "autoencoder_update",
    "autoencoder_evaluate",
    "autoencoder_metrics",
    "create_autoencoder_trainer",
]

#: Values of ``kind``: ``"auto"`` looks at what the model returns for one sample.
AE_KINDS = ("auto", "plain", "denoising", "vae")


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor, elements: int) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per sample, divided by ``elements``, batch mean.

    Dividing by the number of elements of one input puts the KL on the per-element
    scale of a mean-reduced reconstruction loss: ``recon + kl`` is then the usual
    summed VAE loss (reconstruction summed over elements plus KL) divided by
    ``batch * elements``.
    """
    mu, logvar = mu.float().flatten(1), logvar.float().flatten(1)
    per_sample = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)
    return per_sample.mean() / elements


def training_progress(engine: Engine) -> float:
    """Epochs completed before the current iteration (fractional), from engine state.

    Derived from ``iteration`` and ``epoch_length`` only, so a resumed run computes
    exactly what the uninterrupted run did.
    """
    state = engine.state
    if state.epoch_length:
        return (state.iteration - 1) / state.epoch_length
    return float(max(state.epoch - 1, 0))


class AutoencoderObjective:
    """What an autoencoder is trained on: input corruption, reconstruction and KL.

    Args:
        kind: ``"plain"``, ``"denoising"`` or ``"vae"`` (already resolved).
        recon_fn: ``(x_hat, x) -> scalar`` reconstruction loss (mean-reduced).
        noise_std: Standard deviation of the Gaussian noise added to the input.
        kl_weight: Final weight ``beta`` of the KL term (VAE).
        kl_warmup_epochs: ``beta`` grows linearly from 0 to ``kl_weight`` over this
            many epochs, per iteration (0: full weight from the start).
    """

    def __init__(
        self,
        kind: str,
        recon_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        *,
        noise_std: float = 0.0,
        kl_weight: float = 1.0,
        kl_warmup_epochs: float = 0,
    ) -> None:
        if kind not in AE_KINDS[1:]:
            raise ValueError(f"kind={kind!r} is not allowed here: expected one of {AE_KINDS[1:]}")
        self.kind = kind
        self.recon_fn = recon_fn
        self.noise_std = float(noise_std)
        self.kl_weight = float(kl_weight)
        self.kl_warmup_epochs = kl_warmup_epochs

    def beta(self, progress: float) -> float:
        """KL weight after ``progress`` epochs of training."""
        if not self.kl_warmup_epochs:
            return self.kl_weight
        return self.kl_weight * min(1.0, progress / self.kl_warmup_epochs)

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        """The model input: ``x`` plus Gaussian noise from the global torch RNG."""
        if self.noise_std == 0.0:
            return x
        return x + self.noise_std * torch.randn_like(x)

    def split(
        self, output: Any, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``(x_hat, mu, logvar)`` of a model output, checked against the input ``x``.

        Raises:
            ValueError: the output is not what ``kind`` expects or ``x_hat`` does not
                have the shape of ``x``.
        """
        if self.kind == "vae":
            if not isinstance(output, (tuple, list)) or len(output) != 3:
                raise ValueError(
                    "kind='vae' expects model(x) to return (x_hat, mu, logvar); got "
                    f"{_describe(output)}"
                )
            x_hat, mu, logvar = output
            if not all(isinstance(t, torch.Tensor) for t in output):
                raise ValueError(
                    f"kind='vae': x_hat, mu and logvar must be tensors; got {_describe(output)}"
                )
            if mu.shape != logvar.shape or mu.shape[0] != x.shape[0]:
                raise ValueError(
                    "kind='vae': mu and logvar must have the same shape (N, latent) with "
                    f"N={x.shape[0]}; "
                    f"got mu {tuple(mu.shape)} and logvar {tuple(logvar.shape)}"
                )
        else:
            if not isinstance(output, torch.Tensor):
                hint = (
                    " (a VAE? pass kind='vae' or kind='auto')"
                    if isinstance(output, (tuple, list))
                    else ""
                )
                raise ValueError(
                    f"kind={self.kind!r} expects model(x) to return a tensor x_hat; got "
                    f"{_describe(output)}{hint}"
                )
            x_hat, mu, logvar = output, None, None
        if x_hat.shape != x.shape:
            raise ValueError(
                "autoencoder output shape mismatch: expected x_hat of shape "
                f"{tuple(x.shape)} (the input's), "
                f"got {tuple(x_hat.shape)}"
            )
        return x_hat, mu, logvar

    def __call__(
        self, output: Any, x: torch.Tensor, beta: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(x_hat, {"loss", "recon"[, "kl"]})`` for the model ``output`` on target ``x``.

        The loss is computed in float32 (outside any autocast region's low precision).
        """
        x_hat, mu, logvar = self.split(output, x)
        recon = self.recon_fn(x_hat.float(), x.float())
        parts = {"recon": recon}
        if mu is not None:
            parts["kl"] = kl_divergence(mu, logvar, x[0].numel())
            parts["loss"] = recon + beta * parts["kl"]
        else:
            parts["loss"] = recon
        return x_hat, parts

    def names(self) -> tuple[str, ...]:
        """The per-iteration values the update function returns."""
        names = ("loss", "recon", "kl") if self.kind == "vae" else ("loss", "recon")
        return names + (("beta",) if self.kind == "vae" and self.kl_warmup_epochs else ())


def _describe(output: Any) -> str:
    if isinstance(output, torch.Tensor):
        return f"a tensor of shape {tuple(output.shape)}"
    if isinstance(output, (tuple, list)):
        return f"a {type(output).__name__} of {len(output)} item(s)"
    return f"a {type(output).__name__}"


# -- step functions ---------------------------------------------------------------------


def autoencoder_update(
    model: nn.Module,
    opt_step: OptimizerStep,
    objective: AutoencoderObjective,
    device: torch.device,
    *,
    channels_last: bool = False,
) -> Callable[[Engine, Any], dict[str, float]]:
    """The training process function: returns ``{"loss", "recon"[, "kl", "beta"]}`` floats."""

    def update(engine: Engine, batch: Any) -> dict[str, float]:
        train_mode(model)
        x = to_device(batch_input(batch), device, channels_last)
        beta = objective.beta(training_progress(engine))
        x_in = objective.corrupt(x)  # global RNG: restored exactly on resume
        with opt_step.forward_context(engine):
            output = model(x_in)
        _, parts = objective(output, x, beta)
        opt_step.backward(engine, parts["loss"])
        result = {name: value.item() for name, value in parts.items()}
        if "kl" in parts and objective.kl_warmup_epochs:
            result["beta"] = beta
        return result

    return update


def autoencoder_evaluate(
    model: nn.Module,
    objective: AutoencoderObjective,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager],
    *,
    seed: int = 0,
    channels_last: bool = False,
) -> Callable[[Engine, Any], dict[str, Any]]:
    """The evaluation process function.

    Returns a dict with ``y_pred`` (``x_hat``, float32) and ``y`` (the clean input), so
    Ignite metrics such as ``MeanSquaredError`` work unchanged, plus the batch means
    ``loss``/``recon``/``kl`` and the batch size ``n``. The loss uses the full
    ``kl_weight`` (no warm-up): it is the objective the warm-up leads to, so values of
    different epochs compare. Noise and VAE sampling come from a per-batch seeded RNG:
    repeated evaluations agree and the training RNG is not consumed.
    """

    @torch.no_grad()
    def evaluate(engine: Engine, batch: Any) -> dict[str, Any]:
        model.eval()
        x = to_device(batch_input(batch), device, channels_last)
        with seeded_rng(seed + engine.state.iteration, device):
            x_in = objective.corrupt(x)
            with autocast():
                output = model(x_in)
        x_hat, parts = objective(output, x, objective.kl_weight)
        result: dict[str, Any] = {"y_pred": x_hat.float(), "y": x, "n": x.shape[0]}
        result.update({name: value.item() for name, value in parts.items()})
        return result

    return evaluate


def autoencoder_metrics(kind: str, device: str | torch.device = "cpu") -> dict[str, Metric]:
    """``loss`` and ``recon`` (and ``kl`` for a VAE): sample means over the data."""
    names = ("loss", "recon", "kl") if kind == "vae" else ("loss", "recon")
    return {name: OutputMean(name, weight_key="n", device=device) for name in names}


# -- the factory --------------------------------------------------------------------------


def create_autoencoder_trainer(
    model: nn.Module,
    config: Any,
    train_data: Any,
    val_data: Any = None,
    *,
    kind: str = "auto",
    noise_std: float = 0.0,
    kl_weight: float = 1.0,
    kl_warmup_epochs: float = 0,
    optimizer: Any = None,
    loss: Any = None,
    metrics: Mapping[str, Metric] | None = None,
) -> Trainer:
    """Build a trainer for an autoencoder ``model(x) -> x_hat`` (VAE: ``(x_hat, mu, logvar)``).

    Batches are ``x`` or ``(x, label, ...)``; labels are ignored. The loop it runs::

        for epoch in 1..num_epochs:
            for x in train_loader:                       # order fixed by (seed, epoch)
                x_in = x + noise_std * randn_like(x)      # denoising (global RNG)
                with autocast:  out = model(x_in)
                recon = loss(x_hat, x)                    # target: the clean x
                kl = KL(mu, logvar) / x[0].numel()        # VAE only
                beta = kl_weight * min(1, epochs_done / kl_warmup_epochs)
                backward(recon + beta * kl)               # accumulation, clipping, NaN guard
                if end of group: optimizer.step(); schedules
            if epoch % validate_every == 0:
                metrics = evaluate(model, val_loader)     # loss (full kl_weight), recon, kl
            history, stop rules, TensorBoard, checkpoints

    ``kind="auto"`` runs the model (eval mode, no gradient, RNG untouched) on one
    sample of ``train_data`` at construction: a tuple of three makes it a VAE, a tensor
    a denoising autoencoder when ``noise_std > 0`` and a plain one otherwise. The same
    call checks that ``x_hat`` has the input's shape, so a wrong model fails here, not
    mid-run; batches are checked again at every step.

    The KL warm-up is a function of the engine's iteration (not a counter), so a
    resumed run uses the same ``beta`` as an uninterrupted one. Evaluation uses the
    full ``kl_weight``.

    Attached to ``trainer.engine``: data-order sync (``EPOCH_STARTED``); epoch means
    of ``loss``, ``recon`` (``kl``, and ``beta`` while warming up) logged as
    ``train/<name>``; schedules; validation, History, stop rules, summary, checkpoints
    (``EPOCH_COMPLETED``); periodic and last checkpoints. The evaluator reports
    ``loss``, ``recon`` (``kl``) and any ``metrics`` given (they receive
    ``(x_hat, x)``). Checkpoints rank by ``val/loss`` unless ``config.best_metric``.

    Args:
        model: ``nn.Module``; ``model(x)`` returns ``x_hat`` shaped like ``x``, or for a
            VAE ``(x_hat, mu, logvar)`` (``logvar`` = log of the posterior variance).
        config: A :class:`~ignitrain.TrainConfig` (or a mapping of its options).
        train_data: A ``Dataset`` of ``x`` or ``(x, y)`` samples, or a loader.
        val_data: Validation ``Dataset``/loader; ``None`` skips validation.
        kind: ``"auto"``, ``"plain"``, ``"denoising"`` or ``"vae"``.
        noise_std: Std of the Gaussian input noise (> 0 for ``"denoising"``; may also
            be set for a VAE; must be 0 for ``"plain"``).
        kl_weight: Weight ``beta`` of the KL term (VAE only; ``beta``-VAE for != 1).
        kl_warmup_epochs: Epochs over which ``beta`` rises linearly from 0 (VAE only).
        optimizer: Optimizer object or factory, overriding ``config.optimizer``.
        loss: Reconstruction loss (name, class or callable ``(x_hat, x) -> scalar``)
            overriding ``config.loss``; default mean squared error.
        metrics: Extra Ignite metrics for evaluation, fed ``(x_hat, x)``.

    Returns:
        A :class:`~ignitrain.Trainer` with ``models={"model": model}``.

    Raises:
        TypeError: model/config/metrics of the wrong type.
        ValueError: an unknown ``kind``, options that do not fit the kind, a model
            output of the wrong shape, or ``kind="auto"`` on data it cannot peek into.

    Example:
        >>> splits = ignitrain.datasets.digits(image=False)
        >>> trainer = create_autoencoder_trainer(vae, TrainConfig(num_epochs=30), splits.train,
        ...                                      splits.val, kind="vae", kl_warmup_epochs=5)
        >>> trainer.train()["val/recon"][-1]
    """
    config = _parts.check_config(config)
    model = _parts.check_model(model, seed=config.seed)
    user_metrics = _parts.check_metrics(metrics)
    _check_options(kind, noise_std, kl_weight, kl_warmup_epochs)
    recon_fn = build_loss(loss if loss is not None else config.loss, nn.MSELoss)
    if not callable(recon_fn):
        raise TypeError(f"loss must be callable (x_hat, x) -> loss, got {type(recon_fn).__name__}")

    device = _parts.setup_run(config)
    train_loader, val_loader = _parts.make_loaders(train_data, val_data, config)
    net, model = _parts.place_model(model, config, device)
    kind = _resolve_kind(kind, model, train_data, device, noise_std)
    _check_kind_options(kind, noise_std, kl_weight, kl_warmup_epochs)
    objective = AutoencoderObjective(
        kind, recon_fn, noise_std=noise_std, kl_weight=kl_weight, kl_warmup_epochs=kl_warmup_epochs
    )
    opt = _parts.make_optimizer(config, model, optimizer)
    opt_step = OptimizerStep(opt, net, StepOptions.from_config(config, device), device)
    update = autoencoder_update(
        net, opt_step, objective, device, channels_last=config.channels_last
    )
    engine = _parts.make_engine(update, train_loader, config)

    def all_metrics() -> dict[str, Metric]:
        found: dict[str, Metric] = autoencoder_metrics(kind, device)
        found.update({name: _fresh(m) for name, m in user_metrics.items()})
        return found

    eval_fn = autoencoder_evaluate(
        model,
        objective,
        device,
        opt_step.autocast,
        seed=config.seed or 0,
        channels_last=config.channels_last,
    )
    predictor = AutoencoderPredictor(model, device, opt_step.autocast)
    parts = RunParts(
        engine,
        config,
        _parts.one_model(model, opt, opt_step, device),
        Steps(update, _parts.make_evaluator_factory(eval_fn, all_metrics), predictor),
        RunData(train_loader, val_loader),
        flavor="autoencoder",
    )
    return build_trainer(parts, AttachOptions("loss", objective.names()))


# -- argument checks and the kind probe ---------------------------------------------------


def _check_options(kind: Any, noise_std: Any, kl_weight: Any, kl_warmup_epochs: Any) -> None:
    if kind not in AE_KINDS:
        raise ValueError(
            f"kind={kind!r} is not allowed.{suggest(kind, AE_KINDS)} Allowed: {', '.join(AE_KINDS)}"
        )
    for name, value in (
        ("noise_std", noise_std),
        ("kl_weight", kl_weight),
        ("kl_warmup_epochs", kl_warmup_epochs),
    ):
        if not is_number(value) or value < 0 or not math.isfinite(value):
            raise ValueError(f"{name}={value!r} is not allowed: expected a finite number >= 0")


def _check_kind_options(
    kind: str, noise_std: float, kl_weight: float, kl_warmup_epochs: float
) -> None:
    if kind == "plain" and noise_std > 0:
        raise ValueError(
            f"noise_std={noise_std!r} is not allowed with kind='plain': use kind='denoising'"
        )
    if kind == "denoising" and noise_std == 0:
        raise ValueError(
            "kind='denoising' needs noise_std > 0 (the std of the input noise), got noise_std=0"
        )
    if kind != "vae" and (kl_weight != 1.0 or kl_warmup_epochs):
        raise ValueError(
            f"kl_weight={kl_weight!r}/kl_warmup_epochs={kl_warmup_epochs!r} only apply to a "
            "VAE, and this "
            f"autoencoder is kind={kind!r} (model(x) returns one tensor); leave them at "
            "their defaults"
        )


def _resolve_kind(
    kind: str, model: nn.Module, train_data: Any, device: torch.device, noise_std: float
) -> str:
    """The kind, for ``"auto"`` from one forward pass; that pass also checks shapes."""
    x = _peek_input(train_data)
    if x is None:
        if kind == "auto":
            raise ValueError(
                "kind='auto' needs one sample of train_data to look at, but "
                f"{type(train_data).__name__} "
                "cannot be indexed: pass kind='plain', 'denoising' or 'vae'"
            )
        return kind  # checked at the first training batch instead
    x = x.to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), seeded_rng(0, device):
            output = model(x)
    finally:
        model.train(was_training)
    if kind == "auto":
        if isinstance(output, (tuple, list)) and len(output) == 3:
            kind = "vae"
        else:
            kind = "denoising" if noise_std > 0 else "plain"
    # the same check as every training step, at construction
    AutoencoderObjective(kind, nn.MSELoss()).split(output, x)
    return kind


def _peek_input(data: Any) -> torch.Tensor | None:
    """One input batch (a sample with a batch axis of 1), or ``None`` if not indexable."""
    batched = isinstance(data, (list, tuple))  # a list of ready batches
    if isinstance(data, DataLoader):
        batched, data = data.batch_size is None, data.dataset
    elif not (batched or is_dataset(data)) or isinstance(data, IterableDataset):
        return None
    try:
        first = data[0]
    except (IndexError, KeyError, TypeError, NotImplementedError):
        return None
    if isinstance(first, (list, tuple)) and first and isinstance(first[0], np.ndarray):
        first = first[0]
    x = batch_input(torch.as_tensor(first) if isinstance(first, np.ndarray) else first)
    return x if batched else x.unsqueeze(0)


def _fresh(metric: Metric) -> Metric:
    # a Metric object attaches to one evaluator; evaluate() builds new evaluators
    return copy.deepcopy(metric)
