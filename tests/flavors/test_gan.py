"""GAN flavor: a 2-D mixture of Gaussians on a ring (success is measurable), events,
exact resume of both players, and argument checks."""

import math

import pytest
import torch
from ignite.engine import Events
from torch import nn
from torch.utils.data import TensorDataset

from ignitrain.flavors.gan import GANEvents, GANObjective, create_gan_trainer
from tests.conftest import config_maker

pytestmark = pytest.mark.usefixtures("one_thread")


CENTERS = torch.stack(
    [2 * torch.cos(torch.arange(8) * math.pi / 4), 2 * torch.sin(torch.arange(8) * math.pi / 4)],
    dim=1,
)


def ring(n=1024, std=0.05, seed=0):
    gen = torch.Generator().manual_seed(seed)
    modes = torch.randint(0, 8, (n,), generator=gen)
    return TensorDataset(CENTERS[modes] + std * torch.randn(n, 2, generator=gen), modes)


def mlp(inp, out, seed, hidden=64):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(inp, hidden),
        nn.LeakyReLU(0.2),
        nn.Linear(hidden, hidden),
        nn.LeakyReLU(0.2),
        nn.Linear(hidden, out),
    )


cfg = config_maker(
    num_epochs=2, lr=1e-3, momentum=0.5, batch_size=128, progress_bar=False, log_every=4
)


def mean_distance_to_ring(generator, n=512):
    with torch.no_grad():
        samples = generator(torch.randn(n, 4, generator=torch.Generator().manual_seed(1)))
    return torch.cdist(samples, CENTERS).min(dim=1).values.mean().item()


def test_gan_learns_the_ring_and_writes_samples(tmp_path):
    generator, discriminator = mlp(4, 2, 0), mlp(2, 1, 1)
    before = mean_distance_to_ring(generator)
    trainer = create_gan_trainer(
        generator, discriminator, cfg(num_epochs=12, output_dir=str(tmp_path)), ring(2048),
        latent_dim=4, real_label=0.9, fixed_noise_size=128,
    )  # fmt: skip
    history = trainer.train()
    after = mean_distance_to_ring(generator)
    assert after < 0.5 * before  # samples moved onto the ring
    for name in ("d_loss", "g_loss", "d_real", "d_fake"):
        assert len(history[f"train/{name}"]) == 12
    assert 0 < history["train/d_fake"][-1] < 1 and 0 < history["train/d_real"][-1] < 1
    assert sorted(p.name for p in (tmp_path / "samples").iterdir())[-1] == "epoch_0012.png"
    assert list((tmp_path / "tb").glob("*.samples.*"))  # the TensorBoard image file
    metrics = trainer.evaluate(ring(512, seed=3))
    assert set(metrics) == {"d_loss", "g_loss", "d_real", "d_fake"}
    assert metrics == trainer.evaluate(ring(512, seed=3))  # seeded noise: repeatable
    assert set(trainer.models) == set(trainer.optimizers) == {"generator", "discriminator"}


def test_the_sample_writer_is_one_of_trainer_handlers_and_detaches(tmp_path):
    # issue 10: every handler ignitrain attaches is listed and removable
    trainer = create_gan_trainer(
        mlp(4, 2, 0), mlp(2, 1, 1), cfg(num_epochs=2, output_dir=str(tmp_path)), ring(256),
        latent_dim=4, fixed_noise_size=16,
    )  # fmt: skip
    entry = trainer.handlers["gan_samples"]
    assert entry.events and all(e.has_event_handler(fn, ev) for e, ev, fn in entry.events)
    entry.detach()
    assert not entry.attached
    trainer.train()
    assert not (tmp_path / "samples").exists()
    assert "gan_samples" not in create_gan_trainer(
        mlp(4, 2, 0), mlp(2, 1, 1), cfg(num_epochs=1), ring(256), latent_dim=4,
        fixed_noise_size=0,
    ).handlers  # fmt: skip


def test_events_fire_d_then_g_every_n_critic_iterations():
    trainer = create_gan_trainer(
        mlp(4, 2, 0), mlp(2, 1, 1), cfg(num_epochs=1), ring(128 * 6), latent_dim=4, n_critic=3,
        loss="wgan-gp", fixed_noise_size=0,
    )  # fmt: skip
    order, outputs = [], []
    trainer.engine.add_event_handler(
        GANEvents.D_STEP_COMPLETED, lambda e: order.append(("D", e.state.iteration))
    )
    trainer.engine.add_event_handler(
        GANEvents.G_STEP_COMPLETED, lambda e: order.append(("G", e.state.iteration))
    )
    trainer.engine.add_event_handler(
        GANEvents.G_STEP_COMPLETED, lambda e: outputs.append(dict(e.state.output))
    )
    trainer.engine.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: outputs.append(dict(e.state.output))
    )
    history = trainer.train()
    assert order == [("D", 1), ("D", 2), ("D", 3), ("G", 3), ("D", 4), ("D", 5), ("D", 6), ("G", 6)]
    assert (
        "g_loss" not in outputs[0]
        and "g_loss" in outputs[2]
        and set(outputs[2]) >= {"gp", "d_loss"}
    )
    assert outputs[2] == outputs[3]  # what G_STEP_COMPLETED saw is the iteration's output
    # epoch means: g_loss over the 2 generator steps only
    g_losses = [o["g_loss"] for o in outputs if "g_loss" in o][::2]
    assert history["train/g_loss"] == [pytest.approx(sum(g_losses) / 2)]


def test_resume_restores_both_players_exactly(tmp_path):
    def run(out, resume=None, kill_after_epoch=None):
        config = cfg(
            num_epochs=3, output_dir=out, resume=resume, lr_scheduler="cosine", deterministic=True
        )
        trainer = create_gan_trainer(
            mlp(4, 2, 0),
            mlp(2, 1, 1),
            config,
            ring(512),
            latent_dim=4,
            loss="hinge",
            n_critic=2,
            fixed_noise_size=16,
        )
        if kill_after_epoch:
            trainer.engine.add_event_handler(
                Events.EPOCH_COMPLETED(once=kill_after_epoch), lambda e: e.terminate()
            )
        return trainer, trainer.train()

    straight, _ = run(str(tmp_path / "a"))
    first, _ = run(str(tmp_path / "b"), kill_after_epoch=2)
    saved = {
        name: {k: v.clone() for k, v in m.state_dict().items()} for name, m in first.models.items()
    }
    resumed = create_gan_trainer(
        mlp(4, 2, 5),
        mlp(2, 1, 6),
        # the run's own options: resume refuses a changed schedule (issue 12)
        cfg(
            num_epochs=3, output_dir=str(tmp_path / "b"), lr_scheduler="cosine", deterministic=True
        ),
        ring(512),
        latent_dim=4,
        loss="hinge",
        n_critic=2,
        fixed_noise_size=16,
    )
    resumed.resume("latest")
    assert resumed.engine.state.iteration == first.engine.state.iteration == 2 * 4
    for name, model in resumed.models.items():
        for key, value in model.state_dict().items():
            assert torch.equal(value, saved[name][key]), (name, key)
    for name, opt in resumed.optimizers.items():
        got, want = opt.state_dict()["state"], first.optimizers[name].state_dict()["state"]
        assert got.keys() == want.keys()
        for idx in want:
            assert all(torch.equal(got[idx][k], want[idx][k]) for k in want[idx])
        assert opt.param_groups[0]["lr"] == first.optimizers[name].param_groups[0]["lr"]
    # continuing the killed run ends exactly where the uninterrupted one did
    continued, history = run(str(tmp_path / "b"), resume="latest")
    for name, model in continued.models.items():
        for a, b in zip(
            model.state_dict().values(), straight.models[name].state_dict().values(), strict=True
        ):
            assert torch.equal(a, b), name
    assert history.steps("train/d_loss") == [1, 2, 3]
    # the schedule drove both optimizers
    lrs = {name: opt.param_groups[0]["lr"] for name, opt in continued.optimizers.items()}
    assert lrs["generator"] == lrs["discriminator"] < 1e-3


def test_gradient_penalty_of_a_linear_critic_is_exact():
    critic = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        critic.weight.copy_(torch.tensor([[3.0, 0.0, 4.0]]))  # |grad| = 5 everywhere
    gp = GANObjective("wgan-gp").gradient_penalty(critic, torch.randn(6, 3), torch.randn(6, 3))
    assert gp.item() == pytest.approx(16.0)


def test_label_smoothing_and_losses_match_their_formulas():
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    bce = nn.functional.binary_cross_entropy_with_logits
    smoothed = GANObjective("bce", real_label=0.9)
    expected = bce(real, torch.full((2,), 0.9)) + bce(fake, torch.zeros(2))
    assert smoothed.d_loss(real, fake).item() == pytest.approx(expected.item())
    assert smoothed.g_loss(fake).item() == pytest.approx(
        bce(fake, torch.ones(2)).item()
    )  # G target stays 1
    hinge = GANObjective("hinge")
    assert hinge.d_loss(real, fake).item() == pytest.approx((0 + 2) / 2 + (1.5 + 0) / 2)
    assert GANObjective("WGAN_GP").d_loss(real, fake).item() == pytest.approx(-1.25 - 0.5)


class Flat(nn.Module):
    def __init__(self, out):
        super().__init__()
        self.lin = nn.Linear(2, out)

    def forward(self, x):
        return self.lin(x)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(latent_dim=None), TypeError, "needs latent_dim"),
        (dict(latent_dim=(4, 0)), ValueError, r"latent_dim=\(4, 0\) is not allowed"),
        (dict(loss="hinj"), ValueError, "loss='hinj' is not a GAN loss. Did you mean 'hinge'"),
        (dict(loss="hinge", real_label=0.9), ValueError, "only apply to loss='bce'"),
        (dict(n_critic=0), ValueError, "n_critic=0 is not allowed"),
        (dict(config=cfg(early_stopping_patience=2)), ValueError, "no validation metric"),
        (
            dict(config=cfg(loss="mse")),
            ValueError,
            "TrainConfig.loss='mse' is not used by the GAN trainer",
        ),
        (
            dict(config=cfg(grad_accumulation_steps=2), n_critic=2),
            ValueError,
            "both regroup iterations",
        ),
        (dict(generator="G"), TypeError, "generator must be a torch.nn.Module, got str"),
        (dict(sample_fn=3), TypeError, "sample_fn must be callable"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, exc, match):
    args = dict(generator=mlp(4, 2, 0), discriminator=mlp(2, 1, 1), config=cfg(), latent_dim=4)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        create_gan_trainer(
            args.pop("generator"), args.pop("discriminator"), args.pop("config"), ring(256), **args
        )


@pytest.mark.parametrize(
    "generator, discriminator, match",
    [
        (
            mlp(4, 2, 0),
            Flat(10),
            r"discriminator output must hold one score per sample, shape \(128,\) or "
            r"\(128, 1\); got \(128, 10\)",
        ),
        (
            mlp(4, 3, 0),
            mlp(2, 1, 1),
            r"generator output shape mismatch: expected \(128, 2\).*got \(128, 3\)",
        ),
    ],
)
def test_wrong_model_outputs_fail_at_the_first_step(generator, discriminator, match):
    trainer = create_gan_trainer(
        generator, discriminator, cfg(num_epochs=1), ring(256), latent_dim=4
    )
    with pytest.raises(ValueError, match=match):
        trainer.train()
