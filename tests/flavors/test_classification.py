"""Classification flavor on real data (scikit-learn's digits)."""

import pytest
import torch
from ignite.engine import Events
from ignite.metrics import Accuracy
from torch import nn

import ignitrain
from ignitrain import TrainConfig
from tests.conftest import make_mlp


def test_learns_digits_and_evaluates(digits_flat, tmp_path):
    cfg = TrainConfig(
        num_epochs=6,
        optimizer="adam",
        lr=1e-2,
        batch_size=64,
        output_dir=str(tmp_path),
        metrics=["top3", "precision", "recall", "f1"],
        log_every=5,
        progress_bar=False,
    )
    trainer = ignitrain.create_classification_trainer(
        make_mlp(), cfg, digits_flat.train, digits_flat.val
    )
    seen = []
    trainer.engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: seen.append(e.state.epoch))
    history = trainer.train()
    assert seen == [1, 2, 3, 4, 5, 6]
    assert history["val/accuracy"][-1] > 0.9
    assert history["train/loss"][-1] < history["train/loss"][0]
    assert len(history["val/loss"]) == 6
    metrics = trainer.evaluate(digits_flat.test)
    assert set(metrics) == {"accuracy", "loss", "top3", "precision", "recall", "f1"}
    assert all(isinstance(v, float) for v in metrics.values())
    assert metrics["accuracy"] > 0.9 and metrics["top3"] >= metrics["accuracy"]
    assert history["val/accuracy"] == ignitrain.History.load(tmp_path)["val/accuracy"]
    # evaluate() used a fresh engine: validation history did not grow
    assert len(history["val/accuracy"]) == 6


def test_evaluate_matches_a_hand_computed_accuracy(digits_flat):
    cfg = TrainConfig(num_epochs=1, batch_size=32, progress_bar=False)
    model = make_mlp()
    trainer = ignitrain.create_classification_trainer(model, cfg, digits_flat.train)
    trainer.train()
    x = torch.stack([digits_flat.test[i][0] for i in range(len(digits_flat.test))])
    y = torch.stack([digits_flat.test[i][1] for i in range(len(digits_flat.test))])
    model.eval()
    with torch.no_grad():
        logits = model(x)
    expected = (logits.argmax(1) == y).float().mean().item()
    got = trainer.evaluate(digits_flat.test)
    assert got["accuracy"] == pytest.approx(expected)
    assert got["loss"] == pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-5)


def test_validate_every_and_user_metrics_and_loaders(digits_flat):
    train_loader = torch.utils.data.DataLoader(digits_flat.train, batch_size=128, shuffle=True)
    cfg = TrainConfig(num_epochs=5, validate_every=2, progress_bar=False)
    trainer = ignitrain.create_classification_trainer(
        make_mlp(), cfg, train_loader, digits_flat.val, metrics={"acc2": Accuracy()}
    )
    history = trainer.train()
    assert history.steps("val/accuracy") == [2, 4, 5]  # every 2nd epoch and the last
    assert history["val/acc2"] == history["val/accuracy"]
    assert "acc2" in trainer.evaluate(digits_flat.test)


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (
            lambda d: ignitrain.create_classification_trainer("model", TrainConfig(), d.train),
            TypeError,
            "model must be a torch.nn.Module, got str",
        ),
        (
            lambda d: ignitrain.create_classification_trainer(make_mlp(), "cfg", d.train),
            TypeError,
            "config must be an ignitrain.TrainConfig",
        ),
        (
            lambda d: ignitrain.create_classification_trainer(make_mlp(), TrainConfig(), None),
            ValueError,
            "train_data must be a Dataset",
        ),
        (
            lambda d: ignitrain.create_classification_trainer(
                make_mlp(), TrainConfig(metrics=["top5", "recal"]), d.train
            ),
            ValueError,
            "'recal', not a classification metric. Did you mean 'recall'",
        ),
        (
            lambda d: ignitrain.create_classification_trainer(
                make_mlp(), TrainConfig(), d.train, metrics={"a": 1}
            ),
            TypeError,
            r"metrics\['a'\] must be an ignite.metrics.Metric",
        ),
        (
            lambda d: ignitrain.create_classification_trainer(
                make_mlp(), TrainConfig(early_stopping_patience=2), d.train
            ),
            ValueError,
            "need validation data",
        ),
        (
            lambda d: ignitrain.create_classification_trainer(make_mlp(), {"lrr": 1}, d.train),
            TypeError,
            "Did you mean 'lr'",
        ),
        (
            lambda d: ignitrain.create_classification_trainer(nn.ReLU(), TrainConfig(), d.train),
            ValueError,
            "has no parameters",
        ),
    ],
)
def test_bad_arguments(digits_flat, call, exc, match):
    with pytest.raises(exc, match=match):
        call(digits_flat)


def test_wrong_batch_structure_is_explained(digits_flat):
    xs = [digits_flat.train[i][0] for i in range(8)]
    trainer = ignitrain.create_classification_trainer(
        make_mlp(), TrainConfig(progress_bar=False), [torch.stack(xs)]
    )
    with pytest.raises(ValueError, match=r"batches of \(input, target\); got Tensor"):
        trainer.train()


def test_stop_on_nan_false_never_keeps_nan_weights_as_best(digits_flat, tmp_path):
    # issue 12 item 5: training on through NaN once kept NaN weights as "best" (the
    # accuracy of NaN logits is a number)
    config = TrainConfig(
        num_epochs=3, batch_size=128, lr=0.1, stop_on_nan=False, n_saved=3,
        output_dir=str(tmp_path), progress_bar=False, tensorboard=False,
    )  # fmt: skip
    trainer = ignitrain.create_classification_trainer(
        make_mlp(), config, digits_flat.train, digits_flat.val
    )

    @trainer.engine.on(Events.ITERATION_COMPLETED(once=15))  # in epoch 2 of 3
    def poison(engine):
        with torch.no_grad():
            trainer.model[0].weight[0, 0] = float("nan")

    with pytest.warns(UserWarning, match=r"weights hold NaN/Inf .*no best checkpoint for accuracy"):
        trainer.train()
    best = sorted((tmp_path / "checkpoints").glob("checkpoint_best_*.pt"))
    assert len(best) == 1 and "_iter00000010" in best[0].name  # epoch 1 only (n_saved=3)
    state = torch.load(best[0], weights_only=True)["model"]
    assert all(torch.isfinite(t).all() for t in state.values())
