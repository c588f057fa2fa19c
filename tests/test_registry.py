"""Registry: names -> optimizers, losses, schedules; case-insensitive with suggestions."""

import pytest
import torch
from torch import nn

from ignitrain import registry


@pytest.mark.parametrize(
    "name, cls",
    [
        ("sgd", torch.optim.SGD),
        ("SGD", torch.optim.SGD),
        ("AdamW", torch.optim.AdamW),
        ("adam_w", torch.optim.AdamW),
        ("RMSProp", torch.optim.RMSprop),
    ],
)
def test_optimizer_names(name, cls):
    assert registry.optimizer_class(name) is cls


@pytest.mark.parametrize(
    "name, cls",
    [
        ("CrossEntropyLoss", nn.CrossEntropyLoss),
        ("cross_entropy", nn.CrossEntropyLoss),
        ("ce", nn.CrossEntropyLoss),
        ("MSE", nn.MSELoss),
        ("smooth_l1", nn.SmoothL1Loss),
    ],
)
def test_loss_names(name, cls):
    assert registry.loss_class(name) is cls
    assert isinstance(registry.build_loss(name), cls)


def test_unknown_names_list_what_exists():
    with pytest.raises(
        ValueError,
        match=r"'sgdd' is not a known optimizer\. Did you mean 'sgd'\?"
        r".*Known optimizer names: .*adamw",
    ):
        registry.optimizer_class("sgdd")
    with pytest.raises(ValueError, match="Known loss names"):
        registry.loss_class("hinge_embedding_thing")
    with pytest.raises(TypeError, match="expected a optimizer name|expected a"):
        registry.optimizer_class(3)


@pytest.mark.parametrize(
    "alias, canonical",
    [
        ("CosineAnnealingLR", "cosine"),
        ("StepLR", "step"),
        ("ReduceLROnPlateau", "plateau"),
        ("one_cycle", "onecycle"),
        ("piecewise", "piecewise_linear"),
    ],
)
def test_schedule_aliases(alias, canonical):
    assert registry.canonical_schedule_name(alias) == canonical


def test_build_optimizer_maps_momentum_to_betas():
    params = [nn.Parameter(torch.zeros(2))]
    sgd = registry.build_optimizer("sgd", params, lr=0.1, momentum=0.8, weight_decay=0.01)
    assert sgd.param_groups[0]["momentum"] == 0.8 and sgd.param_groups[0]["weight_decay"] == 0.01
    adam = registry.build_optimizer("adam", params, lr=0.1, momentum=0.85)
    assert adam.param_groups[0]["betas"] == (0.85, 0.999)
    with pytest.raises(ValueError, match="Adagrad has no momentum"):
        registry.build_optimizer("adagrad", params, lr=0.1, momentum=0.9)
    given = torch.optim.SGD(params, lr=0.3)
    assert registry.build_optimizer(given, params, lr=0.1) is given
    built = registry.build_optimizer(lambda p: torch.optim.Adam(p, lr=0.2), params, lr=0.1)
    assert built.param_groups[0]["lr"] == 0.2


# -- loss specs (issue 13) ---------------------------------------------------------------------


def test_loss_specs_build_with_their_arguments_and_describe_back():
    from ignitrain.registry import build_loss, check_loss_spec, describe_loss

    loss = build_loss({"name": "cross_entropy", "label_smoothing": 0.1})
    assert isinstance(loss, nn.CrossEntropyLoss) and loss.label_smoothing == 0.1
    weighted = build_loss({"name": "BCEWithLogitsLoss", "pos_weight": [2.0]})
    assert torch.equal(weighted.pos_weight, torch.tensor([2.0]))
    assert describe_loss(weighted) == {"name": "BCEWithLogitsLoss", "pos_weight": [2.0]}
    assert describe_loss(nn.HuberLoss(delta=0.5)) == {"name": "HuberLoss", "delta": 0.5}
    assert describe_loss(nn.MSELoss()) == "torch.nn.modules.loss.MSELoss"  # defaults: a path
    assert describe_loss("mse") == "mse" and describe_loss(None) is None
    assert check_loss_spec({"name": "ce"}) == {"name": "ce"}
    with pytest.raises(ValueError, match="has no argument 'delt'. Did you mean 'delta'"):
        check_loss_spec({"name": "huber", "delt": 1.0})
    with pytest.raises(ValueError, match="not a known loss"):
        check_loss_spec({"name": "no_such_loss"})
