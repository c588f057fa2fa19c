"""AccuracyLoss equals Ignite's Accuracy + Loss; EpochMean keeps a resumed epoch's sums."""

import pytest
import torch
from ignite.engine import Engine, Events
from ignite.metrics import Accuracy, Loss

from ignitrain.handlers.metrics import AccuracyLoss, attach_epoch_mean


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
