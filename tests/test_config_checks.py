"""``ignitrain.config_checks``: every TrainConfig option checked at construction."""

import pytest

from ignitrain import TrainConfig
from ignitrain.config_checks import END, check_eval_every, validate_config
from ignitrain.errors import ConfigError
from ignitrain.handlers import evaluation


def test_check_eval_every_accepts_epochs_and_end():
    assert check_eval_every({"test": "end", "val": 2}) == {"test": END, "val": 2}
    assert check_eval_every(None) == {}


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        ([("val", 1)], TypeError, r"TrainConfig\.eval_every=.* expected a mapping split"),
        ({"val": 0}, ValueError, r"integer >= 1 \(every N epochs\) or 'end'"),
        ({"val": True}, ValueError, r"integer >= 1"),
        ({"val": "later"}, ValueError, r"or 'end'"),
    ],
)
def test_check_eval_every_rejects_with_the_field(value, error, match):
    with pytest.raises(error, match=match):
        check_eval_every(value)


def test_the_evaluation_module_keeps_its_names():
    # moved below config so that checking a config never imports the handlers package
    assert evaluation.check_eval_every is check_eval_every
    assert evaluation.END == END


def test_validate_config_normalises_in_place():
    cfg = TrainConfig()
    cfg.amp, cfg.best_metric, cfg.lr = "BF16", "val/loss", 1
    validate_config(cfg)
    assert (cfg.amp, cfg.best_metric, cfg.lr) == ("bf16", "loss", 1.0)
    assert isinstance(cfg.lr, float)


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        ({"lr": "1e-3"}, TypeError, r"TrainConfig\.lr='1e-3' is not allowed: expected a positive"),
        ({"num_epochs": 0}, ConfigError, r"TrainConfig\.num_epochs=0 .* integer >= 1"),
        ({"amp": "bf61"}, ConfigError, r"amp='bf61'.* Did you mean 'bf16'\?"),
        ({"parallel": "fsdb"}, ConfigError, r"parallel='fsdb'.* Did you mean 'fsdp'\?"),
        ({"fsdp_cpu_offload": True}, ConfigError, "only take effect with parallel='fsdp'"),
        ({"max_grad_norm": 1.0, "grad_clip_value": 1.0}, ConfigError, "contradict each other"),
        ({"ema_decay": 1.0}, ConfigError, r"ema_decay=1\.0 .* number in \(0, 1\)"),
        ({"stop_when": {"accuracy": float("nan")}}, TypeError, "finite numbers"),
        ({"callbacks": [3]}, TypeError, r"TrainConfig\.callbacks contains 3"),
    ],
)
def test_bad_values_name_the_field_and_what_is_allowed(changes, error, match):
    with pytest.raises(error, match=match):
        TrainConfig(**changes)
