"""The parts every factory is built from (ignitrain/flavors/_parts.py), through the public
face ``ignitrain.flavors``: the one config check, the one seeder, loaders, model, optimizer."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from ignitrain import TrainConfig, flavors
from ignitrain.flavors import _parts
from tests.conftest import make_mlp

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_public_face_names_the_shared_steps():
    assert set(flavors.__all__) == {
        "AttachOptions",
        "attach_handlers",
        "attach_validation",
        "build_trainer",
        "check_config",
    }
    assert flavors.check_config is _parts.check_config
    assert flavors.AttachOptions() == flavors.AttachOptions("loss", ("loss",), True)


def test_check_config_converts_a_mapping_and_refuses_other_types():
    config = flavors.check_config({"num_epochs": 2})
    assert isinstance(config, TrainConfig) and config.num_epochs == 2
    with pytest.raises(TypeError, match="config must be an ignitrain.TrainConfig, got str"):
        flavors.check_config("num_epochs: 2")


def test_setup_run_seeds_every_generator_like_seed_everything():
    _parts.setup_run(TrainConfig(seed=7))
    drawn = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    assert drawn == (random.random(), np.random.rand(), torch.rand(1).item())
    assert _parts.setup_run(TrainConfig(device="cpu")) == torch.device("cpu")


def test_check_model_builds_a_factory_after_seeding():
    first = _parts.check_model(lambda: nn.Linear(3, 2), seed=1)
    second = _parts.check_model(lambda: nn.Linear(3, 2), seed=1)
    assert torch.equal(first.weight, second.weight)  # the same seed, the same weights
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got int"):
        _parts.check_model(3)
    with pytest.raises(ValueError, match=r"model \(ReLU\) has no parameters to train"):
        _parts.check_model(nn.ReLU())


def test_check_metrics_and_loaders_name_the_bad_input(digits_flat):
    assert _parts.check_metrics(None) == {}
    with pytest.raises(TypeError, match=r"metrics\['acc'\] must be an ignite.metrics.Metric"):
        _parts.check_metrics({"acc": 0.5})
    with pytest.raises(ValueError, match="train_data must be a Dataset.*got None"):
        _parts.make_loaders(None, None, TrainConfig())
    tiny = torch.utils.data.TensorDataset(torch.zeros(3, 64), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"train_data gives no batches \(batch_size=8"):
        _parts.make_loaders(tiny, None, TrainConfig(batch_size=8, drop_last=True))
    train, val = _parts.make_loaders(digits_flat.train, digits_flat.val, TrainConfig())
    assert len(train) > 0 and len(val) > 0


def test_make_optimizer_from_the_config_or_a_factory():
    model = make_mlp()
    sgd = _parts.make_optimizer(TrainConfig(optimizer="SGD", lr=0.1, momentum=0.5), model)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.5
    with pytest.raises(TypeError, match="optimizer factory must return a torch.optim.Optimizer"):
        _parts.make_optimizer(TrainConfig(), model, lambda params, **kw: "adam")
