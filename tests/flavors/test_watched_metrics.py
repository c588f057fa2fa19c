"""Issue 12: a metric name watched by a stop rule or the best checkpoint is checked at
factory time, not after the first epoch's evaluation."""

import pytest
import torch
from torch import nn

from ignitrain import TrainConfig, create_classification_trainer, create_trainer
from ignitrain.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


def _model():
    torch.manual_seed(0)
    return nn.Linear(64, 10)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"best_metric": "acuracy"}, r"best_metric: metric 'acuracy'.*Did you mean 'accuracy'"),
        ({"best_metric": "val/acuracy"}, r"best_metric: metric 'acuracy'"),
        ({"stop_when": {"los": 0.1}}, r"stop_when: metric 'los'.*Did you mean 'loss'"),
        ({"early_stopping_patience": 2, "best_metric": "top3"}, r"metric 'top3'"),
    ],
)
def test_a_typo_in_a_watched_metric_fails_at_the_factory(digits_flat, options, match):
    train, val = digits_flat[0], digits_flat[1]
    with pytest.raises(ConfigError, match=match):
        create_classification_trainer(_model(), TrainConfig(num_epochs=1, **options), train, val)


def test_split_prefixed_and_extra_metrics_are_accepted(digits_flat):
    train, val = digits_flat[0], digits_flat[1]
    config = TrainConfig(
        num_epochs=1, best_metric="val/loss", stop_when={"top3": 1.1}, metrics=["top3"]
    )
    trainer = create_classification_trainer(_model(), config, train, val)
    assert trainer.train().meta["stop_reason"] == "completed"


def test_metrics_known_only_after_a_run_are_not_checked_early(digits_flat):
    # the generic flavor averages every key its step returns: names unknown before a run
    train, val = digits_flat[0], digits_flat[1]
    model = _model()

    def step(net, batch):
        x, y = batch
        return {"loss": nn.functional.cross_entropy(net(x), y), "custom": torch.tensor(1.0)}

    config = TrainConfig(num_epochs=1, best_metric="custom", best_mode="max")
    trainer = create_trainer(model, config, train, val, train_step=step)
    assert trainer.train().meta["stop_reason"] == "completed"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"betaz": (0.9, 0.99)}, r"optimizer_kwargs=\{'betaz'.*Adam takes no \['betaz'\]"),
        ({"eps": -1.0}, r"optimizer_kwargs=\{'eps': -1.0\}.*Invalid epsilon value"),
    ],
)
def test_bad_optimizer_kwargs_name_the_field_at_the_factory(digits_flat, kwargs, match):
    train, val = digits_flat[0], digits_flat[1]
    config = TrainConfig(num_epochs=1, optimizer_kwargs=kwargs)
    with pytest.raises(ConfigError, match=match):
        create_classification_trainer(_model(), config, train, val)


def test_a_warmup_longer_than_the_run_is_said_at_the_factory(digits_flat):
    train, val = digits_flat[0], digits_flat[1]
    config = TrainConfig(num_epochs=1, batch_size=64, warmup_steps=1000)
    with pytest.warns(UserWarning, match=r"warmup_steps=1000 is not shorter than the run"):
        create_classification_trainer(_model(), config, train, val)
