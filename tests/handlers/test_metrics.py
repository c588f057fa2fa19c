"""AccuracyLoss equals Ignite's Accuracy + Loss; EpochMean keeps a resumed epoch's sums;
the one OutputMean (one key or every key) and TrainOutputMeans against values by hand."""

import math

import pytest
import torch
from ignite.engine import Engine, Events
from ignite.exceptions import NotComputableError
from ignite.metrics import Accuracy, Loss

from ignitrain.handlers.metrics import (
    AccuracyLoss,
    EpochMean,
    OutputMean,
    TrainOutputMeans,
    attach_epoch_mean,
    batch_size_of,
)


def _outputs(shape_tail=(), batches=5, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in range(batches):
        n = 7 if b < batches - 1 else 3  # a short last batch weighs less in the loss
        y_pred = torch.randn(n, classes, *shape_tail, generator=g)
        y = torch.randint(0, classes, (n, *shape_tail), generator=g)
        out.append((y_pred, y))
    return out


@pytest.mark.parametrize("tail", [(), (3,)])
def test_fused_metric_equals_ignites_accuracy_and_loss(tail):
    data = _outputs(tail)
    results = []
    for fused in (True, False):
        evaluator = Engine(lambda e, batch: batch)
        loss_fn = torch.nn.functional.cross_entropy
        if fused:
            AccuracyLoss(loss_fn).attach(evaluator, "accuracy_loss")
        else:
            Accuracy().attach(evaluator, "accuracy")
            Loss(loss_fn).attach(evaluator, "loss")
        results.append(evaluator.run(data).metrics)
    fused, ignite = results
    assert fused == ignite  # the same two keys, the same floats: nothing under the name
    assert set(fused) == {"accuracy", "loss"}


def test_fused_metric_resets_each_run_and_validates():
    metric = AccuracyLoss(torch.nn.functional.cross_entropy, names=("acc", "ce"))
    evaluator = Engine(lambda e, batch: batch)
    metric.attach(evaluator, "fused")
    right = [(torch.tensor([[5.0, 0.0]]), torch.tensor([0]))]
    wrong = [(torch.tensor([[5.0, 0.0]]), torch.tensor([1]))]
    assert evaluator.run(right).metrics["acc"] == 1.0
    assert evaluator.run(wrong).metrics["acc"] == 0.0
    with pytest.raises(ValueError, match=r"expects y_pred \(N, C, ...\) .* got y_pred \(4,\)"):
        metric.update((torch.zeros(4), torch.zeros(4)))
    with pytest.raises(ValueError, match="names=.*is not allowed"):
        AccuracyLoss(torch.nn.functional.cross_entropy, names=("accuracy",))
    with pytest.raises(TypeError, match="loss_fn must be callable, got str"):
        AccuracyLoss("cross_entropy")


def test_epoch_mean_keeps_the_sums_of_an_epoch_resumed_mid_way():
    values = [float(v) for v in range(1, 9)]
    engine = Engine(lambda e, v: {"loss": v})
    mean = attach_epoch_mean(engine)
    seen = []
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: seen.append(e.state.metrics["loss"]))
    engine.run(values, max_epochs=1, epoch_length=8)
    assert seen == [4.5]
    # a run stopped after 5 iterations of epoch 2, restored into a fresh engine
    second = Engine(lambda e, v: {"loss": v})
    restored = attach_epoch_mean(second)
    restored.load_state_dict({"total": sum(values[:5]), "count": 5})
    second.load_state_dict({"iteration": 13, "max_epochs": 2, "epoch_length": 8})
    second.add_event_handler(Events.EPOCH_COMPLETED, lambda e: seen.append(e.state.metrics["loss"]))
    second.run(values[5:] * 4, max_epochs=2)
    assert seen[-1] == pytest.approx(4.5)  # all eight values, not only the last three
    assert restored.count == 8 and mean.count == 8


def test_accuracy_loss_against_values_by_hand():
    # 3 samples: argmax right for the first two; cross-entropy by hand
    y_pred = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    y = torch.tensor([0, 1, 1])
    metric = AccuracyLoss(torch.nn.functional.cross_entropy)
    metric.update((y_pred[:2], y[:2]))
    metric.update((y_pred[2:], y[2:]))
    by_hand = [
        math.log(1 + math.exp(-2.0)),
        math.log(1 + math.exp(-1.0)),
        math.log(1 + math.exp(3.0)),
    ]
    result = metric.compute()
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert result["loss"] == pytest.approx(sum(by_hand) / 3, rel=1e-6)


def test_epoch_mean_of_a_dict_output_and_a_custom_value():
    engine = Engine(lambda e, v: {"loss": torch.tensor(v), "other": 10 * v})
    loss = attach_epoch_mean(engine)
    other = EpochMean("other", lambda output: output["other"]).attach(engine)
    engine.run([1.0, 2.0, 6.0], max_epochs=2)
    assert engine.state.metrics["loss"] == pytest.approx(3.0)
    assert engine.state.metrics["other"] == pytest.approx(30.0)
    assert loss.count == 3 and other.total == pytest.approx(90.0)  # reset at each epoch
    # nothing to average: NaN, not an error
    empty = Engine(lambda e, v: {"other": v})
    attach_epoch_mean(empty)
    empty.run([1.0], max_epochs=1)
    assert math.isnan(empty.state.metrics["loss"])


def test_output_mean_of_one_key_weighs_by_n():
    # the autoencoder/GAN evaluation output: per-batch means and the batch size "n"
    outputs = [{"mse": 1.0, "n": 3}, {"mse": 5.0, "n": 1}, {"other": 7.0, "n": 2, "mse": 2.0}]
    evaluator = Engine(lambda e, batch: batch)
    OutputMean("mse", weight_key="n").attach(evaluator, "mse")
    metrics = evaluator.run(outputs).metrics
    assert metrics == {"mse": pytest.approx((1.0 * 3 + 5.0 * 1 + 2.0 * 2) / 6)}
    assert isinstance(metrics["mse"], float)


def test_output_mean_of_every_key_weighs_by_the_batch_size():
    # the generic flavor: every scalar of the eval step, weighted by len(batch)
    batches = [torch.zeros(3, 2), torch.zeros(1, 2)]
    steps = iter([{"loss": torch.tensor(1.0), "acc": 0.5}, {"loss": 3.0, "logits": torch.ones(2)}])
    evaluator = Engine(lambda e, batch: next(steps))
    OutputMean(perplexity=True).attach(evaluator, "step_outputs")
    metrics = evaluator.run(batches).metrics
    assert metrics["loss"] == pytest.approx(1.5)  # (1 * 3 + 3 * 1) / 4
    assert metrics["acc"] == pytest.approx(0.5)  # only the batch that had it
    assert metrics["perplexity"] == pytest.approx(math.exp(1.5))
    assert "logits" not in metrics
    assert batch_size_of({"x": torch.zeros(5, 2)}) == 5 and batch_size_of([1, 2]) == 1


def test_output_mean_validation():
    with pytest.raises(TypeError, match=r"key=.* is not allowed.*pass output_transform"):
        OutputMean(lambda out: out)
    with pytest.raises(TypeError, match="weight_key=3 is not allowed"):
        OutputMean("loss", weight_key=3)
    with pytest.raises(ValueError, match="perplexity=True is not allowed with key='loss'"):
        OutputMean("loss", perplexity=True)
    metric = OutputMean()
    with pytest.raises(TypeError, match="expects a dict of values, got list"):
        metric.update(([1.0], 1.0))
    with pytest.raises(NotComputableError, match="at least one batch with a scalar value"):
        metric.compute()
    with pytest.raises(KeyError, match="mse"):
        OutputMean("mse").update({"loss": 1.0})
    needs_loss = OutputMean(perplexity=True)
    needs_loss.update({"acc": 1.0})
    with pytest.raises(ValueError, match="perplexity needs a 'loss' value"):
        needs_loss.compute()


def test_train_output_means_survive_a_mid_epoch_resume():
    values = [{"loss": 0.0, "acc": float(v)} for v in range(1, 9)]
    engine = Engine(lambda e, v: v)
    means = TrainOutputMeans().attach(engine)
    engine.run(values, max_epochs=1)
    assert engine.state.metrics == {"acc": pytest.approx(4.5)}  # "loss" excluded
    second = Engine(lambda e, v: v)
    restored = TrainOutputMeans().attach(second)
    restored.load_state_dict(
        {"sums": {"acc": sum(range(1, 6))}, "counts": {"acc": 5.0}}
    )  # stopped after 5 iterations of epoch 2
    second.load_state_dict({"iteration": 13, "max_epochs": 2, "epoch_length": 8})
    second.run(values[5:] * 4, max_epochs=2)
    assert second.state.metrics["acc"] == pytest.approx(4.5)
    assert means.state_dict()["sums"] == {"acc": 36.0}
    with pytest.raises(TypeError, match="exclude='loss' is not allowed"):
        TrainOutputMeans(exclude="loss")
