"""``create_gan_trainer``: a generator and a discriminator, two optimizers, one engine.

The flavor's decisions live in :class:`GANObjective` (a plain object: the losses of
both players for the chosen formulation, the gradient penalty, label smoothing); the
update function moves data, calls it and fires :class:`GANEvents` between the
discriminator and the generator steps.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from ignite.engine import Engine, EventEnum
from ignite.metrics import Metric
from torch import nn

from ignitrain.config import suggest
from ignitrain.flavors import _recipe as recipe
from ignitrain.flavors._ae_common import OutputMean, batch_input, seeded_rng
from ignitrain.flavors._gan_samples import attach_gan_samples
from ignitrain.handlers.history import History
from ignitrain.predict import GANPredictor
from ignitrain.steps import OptimizerStep, StepOptions, to_device, train_mode
from ignitrain.trainer import Trainer

__all__ = [
    "GAN_LOSSES",
    "GANEvents",
    "GANObjective",
    "FixedNoise",
    "gan_update",
    "gan_evaluate",
    "gan_metrics",
    "create_gan_trainer",
]

#: Loss formulations: non-saturating BCE, hinge, Wasserstein with gradient penalty.
GAN_LOSSES = ("bce", "hinge", "wgan-gp")
_ALIASES = {
    "wgangp": "wgan-gp",
    "wgan_gp": "wgan-gp",
    "nonsaturating": "bce",
    "non-saturating": "bce",
}


class GANEvents(EventEnum):
    """Events fired inside each training iteration (registered on ``trainer.engine``).

    ``engine.state.output`` holds the values of the sub-step just finished
    (``d_loss``, ``d_real``, ``d_fake``; then also ``g_loss``).
    """

    D_STEP_COMPLETED = "d_step_completed"
    G_STEP_COMPLETED = "g_step_completed"


def _scores(output: Any, n: int, where: str) -> torch.Tensor:
    """The discriminator's ``(N,)`` float32 scores; ``(N, 1)`` is accepted too."""
    if not isinstance(output, torch.Tensor):
        raise ValueError(
            f"discriminator must return a tensor of scores, got {type(output).__name__} ({where})"
        )
    if output.shape not in (torch.Size([n]), torch.Size([n, 1])):
        raise ValueError(
            f"discriminator output must hold one score per sample, shape ({n},) or ({n}, 1); "
            f"got {tuple(output.shape)} ({where})"
        )
    return output.float().reshape(n)


def _check_fake(fake: Any, real: torch.Tensor) -> None:
    if not isinstance(fake, torch.Tensor) or fake.shape != real.shape:
        got = tuple(fake.shape) if isinstance(fake, torch.Tensor) else type(fake).__name__
        raise ValueError(
            f"generator output shape mismatch: expected {tuple(real.shape)} (one sample per "
            "noise vector, "
            f"shaped like the real batch), got {got}"
        )


class GANObjective:
    """The two players' losses for one GAN formulation.

    Args:
        loss: ``"bce"`` (non-saturating: D minimises BCE on real/fake labels, G
            minimises ``BCE(D(G(z)), 1)``), ``"hinge"`` (D: ``relu(1 - D(x)) + relu(1 +
            D(G(z)))``, G: ``-D(G(z))``) or ``"wgan-gp"`` (critic: ``D(G(z)) - D(x) +
            gp_weight * penalty``, G: ``-D(G(z))``).
        real_label: BCE target of real samples (e.g. 0.9: one-sided label smoothing).
        fake_label: BCE target of generated samples in the discriminator loss.
        gp_weight: Weight of the gradient penalty (``"wgan-gp"``).
    """

    def __init__(
        self,
        loss: str = "bce",
        *,
        real_label: float = 1.0,
        fake_label: float = 0.0,
        gp_weight: float = 10.0,
    ) -> None:
        self.loss = _check_loss(loss)
        for name, value in (("real_label", real_label), ("fake_label", fake_label)):
            if not _is_number(value) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value!r} is not allowed: expected a number in [0, 1]")
        if self.loss != "bce" and (real_label != 1.0 or fake_label != 0.0):
            raise ValueError(
                f"real_label={real_label!r}/fake_label={fake_label!r} only apply to loss='bce' "
                f"(loss={self.loss!r} has no labels); leave them at 1.0/0.0"
            )
        if real_label == fake_label:
            raise ValueError(f"real_label and fake_label must differ, both are {real_label!r}")
        if not _is_number(gp_weight) or gp_weight < 0 or not math.isfinite(gp_weight):
            raise ValueError(
                f"gp_weight={gp_weight!r} is not allowed: expected a finite number >= 0"
            )
        self.real_label, self.fake_label, self.gp_weight = (
            float(real_label),
            float(fake_label),
            float(gp_weight),
        )

    def d_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """Discriminator loss from scores on real and generated samples (no penalty)."""
        if self.loss == "bce":
            return F.binary_cross_entropy_with_logits(
                real, torch.full_like(real, self.real_label)
            ) + F.binary_cross_entropy_with_logits(fake, torch.full_like(fake, self.fake_label))
        if self.loss == "hinge":
            return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
        return fake.mean() - real.mean()

    def g_loss(self, fake: torch.Tensor) -> torch.Tensor:
        """Generator loss from the discriminator's scores on generated samples."""
        if self.loss == "bce":
            return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
        return -fake.mean()

    def summary(self, scores: torch.Tensor) -> float:
        """``D(x)`` as reported: mean probability for BCE, mean raw score otherwise."""
        return (torch.sigmoid(scores) if self.loss == "bce" else scores).mean().item()

    def gradient_penalty(
        self, critic: nn.Module, real: torch.Tensor, fake: torch.Tensor
    ) -> torch.Tensor:
        """``mean((||grad D(x_mix)|| - 1)^2)`` at random mixes of real and fake (float32)."""
        n = real.shape[0]
        eps = torch.rand(n, *([1] * (real.dim() - 1)), device=real.device)
        mixed = (eps * real.detach().float() + (1.0 - eps) * fake.detach().float()).requires_grad_(
            True
        )
        scores = _scores(critic(mixed), n, "gradient penalty")
        (grad,) = torch.autograd.grad(scores.sum(), mixed, create_graph=True)
        return ((grad.flatten(1).norm(2, dim=1) - 1.0) ** 2).mean()

    def names(self) -> tuple[str, ...]:
        """The per-iteration values the update function returns."""
        return ("d_loss", "g_loss", "d_real", "d_fake") + (
            ("gp",) if self.loss == "wgan-gp" else ()
        )


class FixedNoise:
    """The latent vectors the sample grids are drawn from (checkpointed).

    Drawn once from a ``torch.Generator`` seeded with ``seed`` (the global RNG is not
    touched), so the grids of all epochs, and of a resumed run, show the same ``z``.
    """

    def __init__(self, size: int, latent_shape: tuple[int, ...], seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.noise = torch.randn(size, *latent_shape, generator=gen)

    def get(self) -> torch.Tensor:
        return self.noise

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"noise": self.noise.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.noise = state["noise"].clone()


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


def gan_update(
    generator: nn.Module,
    discriminator: nn.Module,
    d_model: nn.Module,
    g_step: OptimizerStep,
    d_step: OptimizerStep,
    objective: GANObjective,
    latent_shape: tuple[int, ...],
    device: torch.device,
    *,
    n_critic: int = 1,
    channels_last: bool = False,
) -> Callable[[Engine, Any], dict[str, float]]:
    """The training process function of one iteration (see :func:`create_gan_trainer`).

    Args:
        generator, discriminator: The modules that run the trainable forwards
            (DDP-wrapped/compiled ``net``s).
        d_model: The discriminator as the user built it; the generator step runs it
            with frozen parameters (no DDP gradient sync is due for it there).

    Returns ``{"d_loss", "d_real", "d_fake"[, "gp"][, "g_loss"]}`` floats; ``g_loss``
    only on iterations with a generator step.
    """

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
            real_scores = _scores(discriminator(real), n, "on real samples")
            fake_scores = _scores(discriminator(fake.detach()), n, "on generated samples")
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
                g_loss = objective.g_loss(_scores(d_model(fake), n, "in the generator step"))
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
            real_scores = _scores(discriminator(real), n, "on real samples")
            fake_scores = _scores(discriminator(fake), n, "on generated samples")
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
        name: OutputMean(name, device=device) for name in ("d_loss", "g_loss", "d_real", "d_fake")
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
    config = recipe.check_config(config)
    generator = recipe.check_model(generator, "generator", seed=config.seed)
    discriminator = recipe.check_model(discriminator, "discriminator")
    latent_shape = _check_latent(latent_dim)
    objective = GANObjective(
        loss,
        real_label=real_label,
        fake_label=fake_label,
        gp_weight=gp_weight,
    )
    _check_options(config, n_critic, fixed_noise_size, sample_fn)
    _check_fsdp(config, objective.loss)

    device = recipe.setup_run(config)
    train_loader, _ = recipe.make_loaders(train_data, None, config)
    g_net, generator = recipe.place_model(generator, config, device)
    d_net, discriminator = recipe.place_model(discriminator, config, device)
    g_opt = recipe.make_optimizer(config, generator, g_optimizer)
    d_opt = recipe.make_optimizer(config, discriminator, d_optimizer)
    options = StepOptions.from_config(config, device)
    g_step = OptimizerStep(g_opt, g_net, options, device)
    d_step = OptimizerStep(d_opt, d_net, options, device)
    update = gan_update(
        g_net, d_net, discriminator, g_step, d_step, objective, latent_shape, device,
        n_critic=n_critic, channels_last=config.channels_last,
    )  # fmt: skip
    engine = recipe.make_engine(update, train_loader, config)
    engine.register_events(*GANEvents)

    eval_fn = gan_evaluate(
        generator, discriminator, objective, latent_shape, device, d_step.autocast,
        seed=config.seed or 0, channels_last=config.channels_last,
    )  # fmt: skip
    trainer = Trainer(
        engine=engine,
        config=config,
        models={"generator": generator, "discriminator": discriminator},
        # checkpoint keys are the optimizers' names here; models own the plain names
        optimizers={"generator_optimizer": g_opt, "discriminator_optimizer": d_opt},
        history=History(),
        make_evaluator=recipe.make_evaluator_factory(eval_fn, lambda: gan_metrics(device)),
        train_loader=train_loader,
        train_step=update,
        device=device,
        predictor=GANPredictor(generator, device, g_step.autocast, latent_shape=latent_shape),
    )
    fixed = FixedNoise(fixed_noise_size, latent_shape, seed=config.seed or 0)
    trainer.checkpointables["fixed_noise"] = fixed
    recipe.attach_handlers(
        trainer,
        opt_steps={"generator": g_step, "discriminator": d_step},
        default_best_metric="g_loss",
        loss_names=objective.names(),
    )
    trainer.optimizers = {"generator": g_opt, "discriminator": d_opt}  # the public view
    if fixed_noise_size:
        out_dir = Path(config.output_dir) if config.output_dir else None
        attach_gan_samples(
            engine,
            generator,
            fixed.get,
            out_dir / "samples" if out_dir else None,
            sample_fn=sample_fn,
            tensorboard_dir=out_dir / "tb" if out_dir and config.tensorboard else None,
            device=device,
        )
    trainer.flavor = "gan"  # recorded in checkpoints; a resume into another refuses
    return trainer


# -- argument checks ----------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_count(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_loss(loss: Any) -> str:
    if not isinstance(loss, str):
        raise TypeError(
            f"loss={loss!r} is not allowed: expected a GAN loss name, one of {GAN_LOSSES}"
        )
    key = loss.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in GAN_LOSSES:
        raise ValueError(
            f"loss={loss!r} is not a GAN loss.{suggest(key, GAN_LOSSES)} Allowed: "
            f"{', '.join(GAN_LOSSES)}"
        )
    return key


def _check_latent(latent_dim: Any) -> tuple[int, ...]:
    if latent_dim is None:
        raise TypeError(
            "create_gan_trainer needs latent_dim: the size of one noise vector the "
            "generator takes, "
            "e.g. latent_dim=64, or its shape, e.g. latent_dim=(100, 1, 1)"
        )
    shape = (latent_dim,) if _is_count(latent_dim) else latent_dim
    if (
        not isinstance(shape, (tuple, list))
        or not shape
        or not all(_is_count(d) and d > 0 for d in shape)
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
    if not _is_count(n_critic) or n_critic < 1:
        raise ValueError(f"n_critic={n_critic!r} is not allowed: expected an integer >= 1")
    if not _is_count(fixed_noise_size) or fixed_noise_size < 0:
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
