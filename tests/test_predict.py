"""``trainer.predict`` per flavor, dataset order, targets, and gathering over 2 processes."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ignitrain
from ignitrain.predict import GANPredictor, SupervisedPredictor, predict
from tests.conftest import config_maker, make_mlp

pytestmark = pytest.mark.usefixtures("one_thread")


cfg = config_maker(num_epochs=1, batch_size=32, progress_bar=False, seed=0)


def test_classification_logits_in_dataset_order_with_targets_and_argmax(digits_flat):
    trainer = ignitrain.create_classification_trainer(make_mlp(), cfg(), digits_flat.train)
    trainer.train()
    logits, targets = trainer.predict(digits_flat.val, return_targets=True)
    x, y = digits_flat.val.tensors
    trainer.model.eval()
    with torch.no_grad():
        expected = trainer.model(x)
    assert logits.shape == (len(x), 10)
    torch.testing.assert_close(logits, expected)
    assert torch.equal(targets, y)
    labels = trainer.predict(digits_flat.val, argmax=True)
    assert torch.equal(labels, expected.argmax(-1))
    # the accuracy evaluate() reports is the one the predictions give
    accuracy = (labels == y).float().mean().item()
    assert trainer.evaluate(digits_flat.val)["accuracy"] == pytest.approx(accuracy)


def test_inputs_only_tensor_and_loader_of_x(digits_flat):
    trainer = ignitrain.create_classification_trainer(make_mlp(), cfg(), digits_flat.train)
    x = digits_flat.val.tensors[0]
    from_tensor = trainer.predict(x)
    from_loader = trainer.predict(DataLoader(TensorDataset(x), batch_size=7))
    assert torch.equal(from_tensor, from_loader)
    with pytest.raises(ValueError, match="carry no targets"):
        trainer.predict(x, return_targets=True)


def test_regression_values(diabetes_splits):
    model = nn.Sequential(nn.Linear(10, 1))
    trainer = ignitrain.create_regression_trainer(model, cfg(), diabetes_splits.train)
    values, targets = trainer.predict(diabetes_splits.val, return_targets=True)
    assert values.shape == targets.shape == diabetes_splits.val.tensors[1].shape


def test_autoencoder_reconstructions(digits_flat):
    model = nn.Sequential(nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 64))
    trainer = ignitrain.create_autoencoder_trainer(model, cfg(), digits_flat.train, noise_std=0.3)
    recon = trainer.predict(digits_flat.val)
    with torch.no_grad():
        expected = model(digits_flat.val.tensors[0])  # the clean input, no noise
    torch.testing.assert_close(recon, expected)


def test_seq2seq_greedy_decodes_padded_across_batches():
    from tests.flavors.test_seq2seq import BOS, EOS, PAD, GRUSeq2Seq, reversal

    data = reversal(70, 0)
    trainer = ignitrain.create_seq2seq_trainer(
        GRUSeq2Seq(), cfg(optimizer="adam", lr=1e-2), data, pad_idx=PAD, bos_idx=BOS,
        eos_idx=EOS,
    )  # fmt: skip
    trainer.train()
    decoded, targets = trainer.predict(data, return_targets=True)
    assert decoded.shape[0] == targets.shape[0] == 70
    assert decoded.dtype == torch.long
    from ignitrain.flavors.seq2seq import SpecialTokens, greedy_decode

    with torch.no_grad():
        first = greedy_decode(
            trainer.model, data.tensors[0][:32], max_len=targets.shape[1],
            tokens=SpecialTokens(PAD, BOS, EOS),
        )  # fmt: skip
    assert torch.equal(decoded[:32, : first.shape[1]], first)
    assert (decoded[:32, first.shape[1] :] == PAD).all()


def test_gan_samples_from_a_count_are_seeded_and_from_latents():
    from tests.flavors.test_gan import mlp, ring

    generator = mlp(4, 2, 0)
    trainer = ignitrain.create_gan_trainer(
        generator, mlp(2, 1, 1), cfg(), ring(256), latent_dim=4, fixed_noise_size=0
    )
    samples = trainer.predict(50)
    assert samples.shape == (50, 2)
    assert torch.equal(samples, trainer.predict(50))
    z = torch.randn(9, 4)
    with torch.no_grad():
        torch.testing.assert_close(trainer.predict(z), generator(z))


def test_generic_flavor_returns_logits_of_a_hf_style_output(digits_flat):
    class WithLoss(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = make_mlp()

        def forward(self, x, labels=None):
            logits = self.net(x)
            out = {"logits": logits}
            if labels is not None:
                out["loss"] = nn.functional.cross_entropy(logits, labels)
            return out

    x, y = digits_flat.train.tensors
    batches = [{"x": x[i : i + 32], "labels": y[i : i + 32]} for i in range(0, 320, 32)]
    model = WithLoss()
    trainer = ignitrain.create_trainer(model, cfg(), batches)
    logits, labels = trainer.predict(batches, return_targets=True)
    assert logits.shape == (320, 10)
    assert torch.equal(labels, y[:320])


def test_argument_validation(digits_flat):
    predictor = SupervisedPredictor(make_mlp())
    with pytest.raises(ValueError, match="data=None"):
        predict(predictor, None, cfg())
    with pytest.raises(TypeError, match="argmax=1"):
        predict(predictor, digits_flat.val, cfg(), argmax=1)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        SupervisedPredictor("model")
    with pytest.raises(ValueError, match="sample count"):
        predict(GANPredictor(make_mlp(4, 8, 2), latent_shape=(4,)), 0, cfg())
    with pytest.raises(ValueError, match="no batches"):
        predict(predictor, [], cfg())


@pytest.mark.slow
def test_two_processes_every_rank_gets_the_whole_in_order_without_padding(tmp_path):
    from tests._predict_workers import predict_worker

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ignitrain.launch(predict_worker, str(tmp_path), backend="gloo", nproc_per_node=2)
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    preds = [torch.load(tmp_path / f"preds{r}.pt", weights_only=True) for r in range(2)]
    assert torch.equal(preds[0], preds[1])  # every rank gets the whole
    assert records[0]["shape"] == [101, 10]
    # batches of 16 instead of 32: equal up to float rounding, no duplicated row
    assert all(r["padded_shape"] == [101, 10] and r["padded_diff"] < 1e-5 for r in records)
    from ignitrain import datasets

    val = datasets.digits(seed=0, image=False).val
    x, y = val.tensors[0][:101], val.tensors[1][:101]
    assert records[0]["targets"] == y.tolist()  # dataset order
    model = make_mlp()
    model.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(preds[0], model(x))
