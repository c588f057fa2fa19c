"""The GAN formulations as plain objects: :class:`GANObjective` and :class:`FixedNoise`.

:class:`GANObjective` holds the losses of both players for the chosen formulation
(non-saturating BCE, hinge, WGAN-GP), the gradient penalty and label smoothing; it
knows nothing of engines. ``ignitrain.flavors.gan`` (which re-exports these names)
wires it into the update function.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ignitrain.errors import is_number, suggest

__all__ = ["GAN_LOSSES", "GANObjective", "FixedNoise", "check_gan_loss", "discriminator_scores"]

#: Loss formulations: non-saturating BCE, hinge, Wasserstein with gradient penalty.
GAN_LOSSES = ("bce", "hinge", "wgan-gp")
_ALIASES = {
    "wgangp": "wgan-gp",
    "wgan_gp": "wgan-gp",
    "nonsaturating": "bce",
    "non-saturating": "bce",
}


def discriminator_scores(output: Any, n: int, where: str) -> torch.Tensor:
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
        self.loss = check_gan_loss(loss)
        for name, value in (("real_label", real_label), ("fake_label", fake_label)):
            if not is_number(value) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value!r} is not allowed: expected a number in [0, 1]")
        if self.loss != "bce" and (real_label != 1.0 or fake_label != 0.0):
            raise ValueError(
                f"real_label={real_label!r}/fake_label={fake_label!r} only apply to loss='bce' "
                f"(loss={self.loss!r} has no labels); leave them at 1.0/0.0"
            )
        if real_label == fake_label:
            raise ValueError(f"real_label and fake_label must differ, both are {real_label!r}")
        if not is_number(gp_weight) or gp_weight < 0 or not math.isfinite(gp_weight):
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
        scores = discriminator_scores(critic(mixed), n, "gradient penalty")
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
        """The latent vectors, ``(size, *latent_shape)``."""
        return self.noise

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"noise": self.noise.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.noise = state["noise"].clone()


def check_gan_loss(loss: Any) -> str:
    """The canonical name of a GAN loss (``"wgan_gp"`` -> ``"wgan-gp"``).

    Raises:
        TypeError: ``loss`` is not a string.
        ValueError: not a GAN loss (with a close match).
    """
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
