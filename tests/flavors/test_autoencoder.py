"""Autoencoder flavor (plain, denoising, VAE) on real data: scikit-learn's digits."""

import pytest
import torch
from ignite.engine import Events
from ignite.metrics import MeanSquaredError
from torch import nn

from ignitrain.flavors.autoencoder import (
    AutoencoderObjective,
    create_autoencoder_trainer,
    kl_divergence,
)
from tests.conftest import config_maker

pytestmark = pytest.mark.usefixtures("one_thread")


def make_ae(seed=0, hidden=16, out=64):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, hidden), nn.ReLU(), nn.Linear(hidden, out)
    )


class VAE(nn.Module):
    def __init__(self, latent=4, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.enc = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 2 * latent))
        self.dec = nn.Sequential(nn.Linear(latent, 32), nn.ReLU(), nn.Linear(32, 64))

    def forward(self, x):
        mu, logvar = self.enc(x).chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        return self.dec(z), mu, logvar


cfg = config_maker(num_epochs=3, lr=3e-3, batch_size=64, progress_bar=False, log_every=5)


def test_plain_autoencoder_learns_digits_and_evaluates(digits_flat, tmp_path):
    trainer = create_autoencoder_trainer(
        make_ae(),
        cfg(output_dir=str(tmp_path)),
        digits_flat.train,
        digits_flat.val,
        metrics={"mse": MeanSquaredError()},
    )
    seen = []
    trainer.engine.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: seen.append(dict(e.state.output))
    )
    history = trainer.train()
    assert set(seen[0]) == {"loss", "recon"} and all(isinstance(v, float) for v in seen[0].values())
    # reconstruction error of digits in [0, 1]: starts near the pixel variance, falls clearly
    assert history["train/loss"][-1] < 0.7 * history["train/loss"][0]
    assert history["val/loss"][-1] < history["val/loss"][0]
    assert history["val/recon"] == history["val/loss"]
    assert "val/kl" not in history
    metrics = trainer.evaluate(digits_flat.test)
    assert set(metrics) == {"loss", "recon", "mse"}
    # the user metric saw (x_hat, x): Ignite's MSE sums the 64 pixels per sample, ours
    # averages them; batch means weighted by batch size give the sample mean
    assert metrics["mse"] == pytest.approx(64 * metrics["recon"], rel=1e-5)
    assert (tmp_path / "checkpoints").is_dir()


def test_vae_warmup_beta_comes_from_engine_state_and_loss_falls(digits_flat):
    trainer = create_autoencoder_trainer(
        VAE(),
        cfg(num_epochs=4),
        digits_flat.train,
        digits_flat.val,
        kl_weight=0.5,
        kl_warmup_epochs=2,
    )
    betas = []
    trainer.engine.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: betas.append(e.state.output["beta"])
    )
    history = trainer.train()
    length = trainer.engine.state.epoch_length
    expected = [0.5 * min(1.0, i / length / 2) for i in range(len(betas))]
    assert betas == pytest.approx(expected)
    assert history["train/beta"][0] < history["train/beta"][1] < history["train/beta"][2] == 0.5
    assert history["val/recon"][-1] < history["val/recon"][0]
    # validation uses the full weight: loss = recon + 0.5 * kl, per sample mean
    assert history["val/loss"][-1] == pytest.approx(
        history["val/recon"][-1] + 0.5 * history["val/kl"][-1], rel=1e-5
    )
    assert history["val/kl"][-1] > 0


def test_kl_divergence_matches_torch_distributions():
    mu, logvar = torch.randn(5, 3), torch.randn(5, 3)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(3), torch.ones(3))
    expected = torch.distributions.kl_divergence(q, p).sum(1).mean() / 64
    assert kl_divergence(mu, logvar, 64).item() == pytest.approx(expected.item(), rel=1e-5)


class Recorder(nn.Module):
    """An autoencoder that keeps its last input (to see the noise)."""

    def __init__(self):
        super().__init__()
        self.net = make_ae()
        self.last = None

    def forward(self, x):
        self.last = x.detach().clone()
        return self.net(x)


def test_denoising_noises_input_keeps_clean_target_and_eval_is_repeatable(digits_flat):
    model = Recorder()
    trainer = create_autoencoder_trainer(model, cfg(num_epochs=1), digits_flat.train, noise_std=0.3)
    noise_std = []

    @trainer.engine.on(Events.ITERATION_COMPLETED)
    def measure(engine):
        clean = engine.state.batch[0]
        noise_std.append((model.last - clean).std().item())

    trainer.train()
    # kind='auto' with noise_std > 0 -> denoising: the model saw x + 0.3 * N(0, 1)
    assert len(noise_std) == trainer.engine.state.epoch_length
    assert all(0.25 < s < 0.35 for s in noise_std)
    rng = torch.get_rng_state()
    first, second = trainer.evaluate(digits_flat.test), trainer.evaluate(digits_flat.test)
    assert first == second  # seeded evaluation noise
    assert torch.equal(rng, torch.get_rng_state())  # ... that leaves the training RNG alone


def test_batches_of_x_only_and_loss_by_name(digits_flat):
    x = torch.stack([digits_flat.train[i][0] for i in range(256)])
    batches = list(x.split(64))  # ready batches of x, no labels
    trainer = create_autoencoder_trainer(make_ae(), cfg(num_epochs=3), batches, loss="l1")
    history = trainer.train()
    assert history["train/loss"][-1] < history["train/loss"][0]
    assert trainer.evaluate(batches)["recon"] == pytest.approx(
        nn.functional.l1_loss(trainer.model(x), x).item(), rel=1e-5
    )


def test_vae_resume_continues_bit_for_bit(digits_flat, tmp_path):
    def run(num_epochs, out=None, resume=None):
        config = cfg(num_epochs=num_epochs, output_dir=out, resume=resume, deterministic=True)
        trainer = create_autoencoder_trainer(
            VAE(), config, digits_flat.train, digits_flat.val, kl_warmup_epochs=2, noise_std=0.1
        )
        return trainer, trainer.train()

    straight, _ = run(3)
    run(2, out=str(tmp_path))
    resumed, history = run(3, out=str(tmp_path), resume="latest")
    length = resumed.engine.state.epoch_length
    assert resumed.engine.state.iteration == 3 * length
    assert history.steps("train/loss") == [1, 2, 3]
    for a, b in zip(
        straight.model.state_dict().values(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (
            dict(model=make_ae(out=32)),
            ValueError,
            r"expected x_hat of shape \(1, 64\).*got \(1, 32\)",
        ),
        (dict(kind="vea"), ValueError, "kind='vea' is not allowed. Did you mean 'vae'"),
        (
            dict(kind="vae"),
            ValueError,
            r"kind='vae' expects model\(x\) to return \(x_hat, mu, logvar\)",
        ),
        (dict(model=VAE(), kind="plain"), ValueError, "a VAE\\? pass kind='vae'"),
        (
            dict(kind="plain", noise_std=0.1),
            ValueError,
            "noise_std=0.1 is not allowed with kind='plain'",
        ),
        (dict(kind="denoising"), ValueError, "kind='denoising' needs noise_std > 0"),
        (dict(kl_warmup_epochs=3), ValueError, "only apply to a VAE"),
        (dict(noise_std=-1.0), ValueError, "noise_std=-1.0 is not allowed"),
        # a one-pass iterator for several epochs is refused first (issue 12, ignitrain/checks.py)
        (dict(train_data=iter([torch.zeros(2, 64)])), ValueError, "one-pass iterator"),
        (dict(model=nn.Identity()), ValueError, "has no parameters"),
        (dict(loss=3), TypeError, "loss must be callable"),
        (
            dict(train_data=[{"x": torch.zeros(2, 64)}]),
            TypeError,
            "batches must be a tensor x or a tuple",
        ),
    ],
)
def test_bad_inputs_fail_at_construction_with_clear_errors(digits_flat, kwargs, exc, match):
    args = dict(model=make_ae(), train_data=digits_flat.train)
    args.update(kwargs)
    model, data = args.pop("model"), args.pop("train_data")
    with pytest.raises(exc, match=match):
        create_autoencoder_trainer(model, cfg(), data, **args)


def test_wrong_shape_without_a_peek_fails_at_the_first_step(digits_flat):
    batches = (torch.zeros(8, 64) for _ in range(2))  # a generator: nothing to peek at
    trainer = create_autoencoder_trainer(make_ae(out=10), cfg(num_epochs=1), batches, kind="plain")
    with pytest.raises(
        ValueError, match=r"expected x_hat of shape \(8, 64\) \(the input's\), got \(8, 10\)"
    ):
        trainer.train()


def test_objective_checks_vae_parts():
    objective = AutoencoderObjective("vae", nn.MSELoss())
    x = torch.zeros(4, 64)
    with pytest.raises(ValueError, match=r"mu \(4, 3\) and logvar \(4, 2\)"):
        objective(((torch.zeros(4, 64)), torch.zeros(4, 3), torch.zeros(4, 2)), x, 1.0)
    with pytest.raises(ValueError, match="kind='auto' is not allowed here"):
        AutoencoderObjective("auto", nn.MSELoss())
