"""``create_gan_trainer``: a generator and a discriminator, two optimizers, one engine.

The flavor's decisions live in :class:`GANObjective` (a plain object: the losses of
both players for the chosen formulation, the gradient penalty, label smoothing); the
update function moves data, calls it and fires :class:`GANEvents` between the
discriminator and the generator steps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, EventEnum
from ignite.metrics import Metric
from torch import nn

from ignitrain.errors import is_count
from ignitrain.flavors import _parts
from ignitrain.flavors._ae_common import batch_input, seeded_rng
from ignitrain.flavors._attach import AttachOptions, build_trainer
from ignitrain.flavors._gan_samples import attach_gan_samples
from ignitrain.flavors.gan_objective import (
    GAN_LOSSES,
    FixedNoise,
    GANObjective,
    discriminator_scores,
)
from ignitrain.handlers.attached import AttachedHandlers, recording
from ignitrain.handlers.metrics import OutputMean
from ignitrain.predict import GANPredictor
from ignitrain.steps import OptimizerStep, StepOptions, to_device, train_mode
from ignitrain.trainer import Learning, RunData, RunParts, Steps, Trainer

__all__ = [
    "GAN_LOSSES",
    "GANEvents",
    "GANObjective",
    "FixedNoise",
    "GANPlayers",
    "gan_update",
    "gan_evaluate",
    "gan_metrics",
    "create_gan_trainer",
]


class GANEvents(EventEnum):
    """Events fired inside each training iteration (registered on ``trainer.engine``).

    ``engine.state.output`` holds the values of the sub-step just finished
    (``d_loss``, ``d_real``, ``d_fake``; then also ``g_loss``).
    """

    D_STEP_COMPLETED = "d_step_completed"
    G_STEP_COMPLETED = "g_step_completed"


def _check_fake(fake: Any, real: torch.Tensor) -> None:
    if not isinstance(fake, torch.Tensor) or fake.shape != real.shape:
        got = tuple(fake.shape) if isinstance(fake, torch.Tensor) else type(fake).__name__
        raise ValueError(
            f"generator output shape mismatch: expected {tuple(real.shape)} (one sample per "
            "noise vector, "
            f"shaped like the real batch), got {got}"
        )


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """No gradients for ``model``'s parameters inside the block (restored after).

    The generator step backpropagates through the discriminator; freezing it keeps the
    discriminator's (possibly accumulating) gradients clean and saves the work.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


# -- step functions ---------------------------------------------------------------------


@dataclass(frozen=True)
class GANPlayers:
    """The two players of the update: their trainable forwards and optimizer steps.

    Attributes:
        generator, discriminator: The modules that run the trainable forwards
            (DDP-wrapped/compiled ``net``s).
        d_model: The discriminator as the user built it; the generator step runs it
            with frozen parameters (no DDP gradient sync is due for it there).
        g_step, d_step: The optimizer steps of the generator and the discriminator.
    """

    generator: nn.Module
    discriminator: nn.Module
    d_model: nn.Module
    g_step: OptimizerStep
    d_step: OptimizerStep


def gan_update(
    players: GANPlayers,
    objective: GANObjective,
    latent_shape: tuple[int, ...],
    device: torch.device,
    *,
    n_critic: int = 1,
    channels_last: bool = False,
) -> Callable[[Engine, Any], dict[str, float]]:
    """The training process function of one iteration (see :func:`create_gan_trainer`).

    Returns ``{"d_loss", "d_real", "d_fake"[, "gp"][, "g_loss"]}`` floats; ``g_loss``
    only on iterations with a generator step.
    """
    generator, discriminator, d_model = players.generator, players.discriminator, players.d_model
    g_step, d_step = players.g_step, players.d_step

    def update(engine: Engine, batch: Any) -> dict[str, float]:
        train_mode(generator, discriminator)
        real = to_device(batch_input(batch), device, channels_last)
        n = real.shape[0]
        g_turn = engine.state.iteration % n_critic == 0
        z = torch.randn(n, *latent_shape, device=device)

        # 1. discriminator step on real vs generated (detached) samples
        with d_step.forward_context(engine):
            # the generator step below reuses `fake`: its forward is the generator's
            g_forward = g_step.forward_context(engine) if g_turn else contextlib.nullcontext()
            with torch.set_grad_enabled(g_turn), g_forward:
                fake = generator(z)
            _check_fake(fake, real)
            real_scores = discriminator_scores(discriminator(real), n, "on real samples")
            fake_scores = discriminator_scores(
                discriminator(fake.detach()), n, "on generated samples"
            )
        d_loss = objective.d_loss(real_scores, fake_scores)
        out = {"d_real": objective.summary(real_scores), "d_fake": objective.summary(fake_scores)}
        if objective.loss == "wgan-gp":
            gp = objective.gradient_penalty(d_model, real, fake)  # float32: double backward
            d_loss = d_loss + objective.gp_weight * gp
            out["gp"] = gp.item()
        d_step.backward(engine, d_loss)
        out["d_loss"] = d_loss.item()
        if engine.should_terminate:  # non-finite loss: no generator step either
            return out
        engine.state.output = out
        engine.fire_event(GANEvents.D_STEP_COMPLETED)

        # 2. generator step every n_critic-th iteration, against the updated discriminator
        if g_turn:
            with _frozen(d_model), g_step.autocast():
                g_loss = objective.g_loss(
                    discriminator_scores(d_model(fake), n, "in the generator step")
                )
            g_step.backward(engine, g_loss)
            out = {**out, "g_loss": g_loss.item()}
            if not engine.should_terminate:
                engine.state.output = out
                engine.fire_event(GANEvents.G_STEP_COMPLETED)
        return out

    return update


def gan_evaluate(
    generator: nn.Module,
    discriminator: nn.Module,
    objective: GANObjective,
    latent_shape: tuple[int, ...],
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager],
    *,
    seed: int = 0,
    channels_last: bool = False,
) -> Callable[[Engine, Any], dict[str, Any]]:
    """The evaluation process function: the discriminator on real data and on as many
    generated samples (seeded per batch), both models in eval mode.

    Returns batch means ``d_loss`` (without gradient penalty), ``g_loss``, ``d_real``,
    ``d_fake`` and the batch size ``n``.
    """

    @torch.no_grad()
    def evaluate(engine: Engine, batch: Any) -> dict[str, Any]:
        generator.eval()
        discriminator.eval()
        real = to_device(batch_input(batch), device, channels_last)
        n = real.shape[0]
        with seeded_rng(seed + engine.state.iteration, device), autocast():
            fake = generator(torch.randn(n, *latent_shape, device=device))
            _check_fake(fake, real)
            real_scores = discriminator_scores(discriminator(real), n, "on real samples")
            fake_scores = discriminator_scores(discriminator(fake), n, "on generated samples")
        return {
            "d_loss": objective.d_loss(real_scores, fake_scores).item(),
            "g_loss": objective.g_loss(fake_scores).item(),
            "d_real": objective.summary(real_scores),
            "d_fake": objective.summary(fake_scores),
            "n": n,
        }

    return evaluate


def gan_metrics(device: str | torch.device = "cpu") -> dict[str, Metric]:
    """``d_loss``, ``g_loss``, ``d_real``, ``d_fake``: sample means over the data."""
    return {
        name: OutputMean(name, weight_key="n", device=device)
        for name in ("d_loss", "g_loss", "d_real", "d_fake")
    }


# -- the factory --------------------------------------------------------------------------


def create_gan_trainer(
    generator: nn.Module,
    discriminator: nn.Module,
    config: Any,
    train_data: Any,
    *,
    latent_dim: int | tuple[int, ...] | None = None,
    loss: str = "bce",
    n_critic: int = 1,
    gp_weight: float = 10.0,
    real_label: float = 1.0,
    fake_label: float = 0.0,
    g_optimizer: Any = None,
    d_optimizer: Any = None,
    fixed_noise_size: int = 64,
    sample_fn: Callable[[torch.Tensor], Any] | None = None,
) -> Trainer:
    """Build a trainer for ``generator(z) -> x`` against ``discriminator(x) -> score``.

    Batches are ``x`` or ``(x, label, ...)``; labels are ignored. Every iteration is
    one discriminator step on a fresh real batch; the generator steps on iterations
    whose global number is a multiple of ``n_critic`` (as in WGAN-GP, where each
    critic step sees new data). An epoch thus holds ``len(loader)`` discriminator
    steps and about ``len(loader) / n_critic`` generator steps; since the rule depends
    on the engine's iteration only, a resumed run steps exactly as the uninterrupted
    one. The loop it runs::

        for epoch in 1..num_epochs:
            for x in train_loader:                        # order fixed by (seed, epoch)
                z = randn(N, *latent)                      # global RNG (checkpointed)
                fake = G(z)                                # with grad only on G turns
                d_loss = L_D(D(x), D(fake.detach()))       # + gp_weight * GP for wgan-gp
                d_step.backward(d_loss)                    # AMP, accumulation, clipping
                fire(GANEvents.D_STEP_COMPLETED)
                if iteration % n_critic == 0:
                    g_loss = L_G(D(fake))                  # D frozen
                    g_step.backward(g_loss)
                    fire(GANEvents.G_STEP_COMPLETED)
            samples = G(fixed_noise) -> output_dir/samples/epoch_XXXX.png, TensorBoard image
            history, stop rules, TensorBoard, checkpoints

    Attached to ``trainer.engine``: ``GANEvents`` (registered); data-order sync
    (``EPOCH_STARTED``); epoch means of ``d_loss``, ``g_loss``, ``d_real``, ``d_fake``
    (``gp`` for wgan-gp) logged as ``train/<name>``; LR/momentum schedules for both
    optimizers; History, time/step limits, summary (``EPOCH_COMPLETED``); checkpoints
    holding both models (keys ``"generator"``, ``"discriminator"``), both optimizers
    (``"generator_optimizer"``, ``"discriminator_optimizer"``), both step states
    (``"generator_step"``, ``"discriminator_step"``: AMP scalers) and ``"fixed_noise"``;
    the sample writer (``EPOCH_COMPLETED``, rank 0; PNG with ``output_dir``,
    TensorBoard image when ``config.tensorboard``). There is no validation:
    ``trainer.evaluate(data)`` reports the losses and ``d_real``/``d_fake`` on real
    data and as many generated samples.

    Args:
        generator: ``nn.Module`` mapping noise ``(N, *latent_dim)`` to samples shaped
            like the real batches.
        discriminator: ``nn.Module`` mapping samples to one score (a logit for
            ``"bce"``) per sample: shape ``(N,)`` or ``(N, 1)``.
        config: A :class:`~ignitrain.TrainConfig` (or a mapping of its options); its
            optimizer, LR, momentum (Adam's ``beta1``) apply to both optimizers.
        train_data: A ``Dataset`` of ``x`` or ``(x, y)`` samples, or a loader.
        latent_dim: Size (int) or shape (tuple, e.g. ``(100, 1, 1)``) of one noise
            vector. Required.
        loss: ``"bce"``, ``"hinge"`` or ``"wgan-gp"`` (``config.loss`` must stay unset).
        n_critic: Discriminator steps per generator step.
        gp_weight: Gradient penalty weight (``"wgan-gp"``).
        real_label: BCE target for real samples (0.9: one-sided label smoothing).
        fake_label: BCE target for generated samples.
        g_optimizer: Optimizer object or factory for the generator.
        d_optimizer: Optimizer object or factory for the discriminator.
        fixed_noise_size: Samples in each epoch's picture (0: no pictures).
        sample_fn: ``samples -> image`` (``HxW``, ``HxWxC`` or ``CxHxW``, floats in
            [0, 1] or uint8) replacing the default picture (grid for images, scatter
            plot for 2-D points).

    Returns:
        A :class:`~ignitrain.Trainer` with ``models`` and ``optimizers`` keyed
        ``"generator"`` and ``"discriminator"``.

    Raises:
        TypeError: missing ``latent_dim``, or arguments of the wrong type.
        ValueError: unknown loss, options that do not fit it, stop rules that need
            validation, or model outputs of the wrong shape (at the first step).

    Example:
        >>> trainer = create_gan_trainer(G, D, TrainConfig(num_epochs=20, lr=2e-4, momentum=0.5),
        ...                              dataset, latent_dim=64, loss="hinge")
        >>> @trainer.engine.on(GANEvents.D_STEP_COMPLETED)
        ... def after_d(engine): print(engine.state.output["d_loss"])
        >>> trainer.train()
    """
    config = _parts.check_config(config)
    generator = _parts.check_model(generator, "generator", seed=config.seed)
    discriminator = _parts.check_model(discriminator, "discriminator")
    latent_shape = _check_latent(latent_dim)
    objective = GANObjective(
        loss,
        real_label=real_label,
        fake_label=fake_label,
        gp_weight=gp_weight,
    )
    _check_options(config, n_critic, fixed_noise_size, sample_fn)
    _check_fsdp(config, objective.loss)

    device = _parts.setup_run(config)
    train_loader, _ = _parts.make_loaders(train_data, None, config)
    g_net, generator = _parts.place_model(generator, config, device)
    d_net, discriminator = _parts.place_model(discriminator, config, device)
    g_opt = _parts.make_optimizer(config, generator, g_optimizer)
    d_opt = _parts.make_optimizer(config, discriminator, d_optimizer)
    options = StepOptions.from_config(config, device)
    g_step = OptimizerStep(g_opt, g_net, options, device)
    d_step = OptimizerStep(d_opt, d_net, options, device)
    players = GANPlayers(g_net, d_net, discriminator, g_step, d_step)
    update = gan_update(
        players, objective, latent_shape, device, n_critic=n_critic,
        channels_last=config.channels_last,
    )  # fmt: skip
    engine = _parts.make_engine(update, train_loader, config)
    engine.register_events(*GANEvents)

    eval_fn = gan_evaluate(
        generator, discriminator, objective, latent_shape, device, d_step.autocast,
        seed=config.seed or 0, channels_last=config.channels_last,
    )  # fmt: skip
    fixed = FixedNoise(fixed_noise_size, latent_shape, seed=config.seed or 0)
    parts = RunParts(
        engine,
        config,
        # checkpoint keys of the optimizers: "generator_optimizer"... (models own the names)
        Learning(
            {"generator": generator, "discriminator": discriminator},
            {"generator": g_opt, "discriminator": d_opt},
            {"generator": g_step, "discriminator": d_step},
            device,
        ),
        Steps(
            update,
            _parts.make_evaluator_factory(eval_fn, lambda: gan_metrics(device)),
            GANPredictor(generator, device, g_step.autocast, latent_shape=latent_shape),
        ),
        RunData(train_loader),
        state={"fixed_noise": fixed},
        flavor="gan",
    )
    # the sample writer is one of trainer.handlers, removable like the others; it only
    # reads the generator, so attaching it before the switchboard changes no save point
    handlers = AttachedHandlers()
    if fixed_noise_size:
        out_dir = Path(config.output_dir) if config.output_dir else None
        with recording(handlers, "gan_samples", engine) as entry:
            entry.handler = attach_gan_samples(
                engine,
                generator,
                fixed.get,
                out_dir / "samples" if out_dir else None,
                sample_fn=sample_fn,
                tensorboard_dir=out_dir / "tb" if out_dir and config.tensorboard else None,
                device=device,
            )
    return build_trainer(parts, AttachOptions("g_loss", objective.names()), handlers)


# -- argument checks ----------------------------------------------------------------------


def _check_latent(latent_dim: Any) -> tuple[int, ...]:
    if latent_dim is None:
        raise TypeError(
            "create_gan_trainer needs latent_dim: the size of one noise vector the "
            "generator takes, "
            "e.g. latent_dim=64, or its shape, e.g. latent_dim=(100, 1, 1)"
        )
    shape = (latent_dim,) if is_count(latent_dim) else latent_dim
    if (
        not isinstance(shape, (tuple, list))
        or not shape
        or not all(is_count(d) and d > 0 for d in shape)
    ):
        raise ValueError(
            f"latent_dim={latent_dim!r} is not allowed: expected a positive int or a tuple of them"
        )
    return tuple(int(d) for d in shape)


def _check_fsdp(config: Any, loss: str) -> None:
    # issue 14: the gradient penalty differentiates twice through the discriminator
    # (autograd.grad(create_graph=True)); FSDP2's post-backward hook reshards the
    # gathered parameters after the first differentiation, and the second one then
    # reads freed storage ("storage of size 0"). Refused on one process too, so that a
    # config does not start failing when it is launched on several.
    if getattr(config, "parallel", "auto") == "fsdp" and loss == "wgan-gp":
        raise ValueError(
            "TrainConfig.parallel='fsdp' with create_gan_trainer(loss='wgan-gp') is not "
            "allowed: the gradient penalty differentiates twice through the sharded "
            "discriminator, which FSDP2 does not support. Use loss='hinge' or 'bce' "
            "under FSDP, or keep loss='wgan-gp' with parallel='ddp' (or 'auto')"
        )


def _check_options(config: Any, n_critic: Any, fixed_noise_size: Any, sample_fn: Any) -> None:
    if not is_count(n_critic) or n_critic < 1:
        raise ValueError(f"n_critic={n_critic!r} is not allowed: expected an integer >= 1")
    if not is_count(fixed_noise_size) or fixed_noise_size < 0:
        raise ValueError(
            f"fixed_noise_size={fixed_noise_size!r} is not allowed: expected an integer >= 0"
        )
    if sample_fn is not None and not callable(sample_fn):
        raise TypeError(
            f"sample_fn must be callable samples -> image, got {type(sample_fn).__name__}"
        )
    if n_critic > 1 and config.grad_accumulation_steps > 1:
        raise ValueError(
            f"n_critic={n_critic} with "
            f"TrainConfig.grad_accumulation_steps={config.grad_accumulation_steps} "
            "is not allowed: both regroup iterations; raise batch_size instead of accumulating"
        )
    if config.loss is not None:
        raise ValueError(
            f"TrainConfig.loss={config.loss!r} is not used by the GAN trainer: choose the "
            "GAN loss with "
            f"create_gan_trainer(..., loss=...), one of {GAN_LOSSES}"
        )
    if config.early_stopping_patience is not None or config.stop_when:
        raise ValueError(
            "TrainConfig.early_stopping_patience/stop_when are not allowed for a GAN: it has no "
            "validation metric to watch (use num_epochs, max_steps or time_limit)"
        )
