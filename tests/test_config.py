"""TrainConfig: validation (one case per kind of bad input), files, round-trips."""

import json

import pytest
import torch

from ignitrain import TrainConfig

BAD = [
    # (kwargs, exception, message fragment)
    ({"lrr": 0.1}, TypeError, r"unknown option 'lrr'\. Did you mean 'lr'\?"),
    ({"num_epoch": 3}, TypeError, r"Did you mean 'num_epochs'\?"),
    (
        {"lr": "fast"},
        TypeError,
        r"TrainConfig\.lr='fast' is not allowed: expected a positive number",
    ),
    ({"lr": -0.1}, ValueError, r"TrainConfig\.lr=-0\.1 is not allowed"),
    ({"lr": float("nan")}, ValueError, r"TrainConfig\.lr=nan"),
    ({"num_epochs": 0}, ValueError, r"num_epochs=0 is not allowed: expected an integer >= 1"),
    ({"batch_size": 1.5}, TypeError, r"batch_size=1\.5 .* integer"),
    ({"batch_size": True}, TypeError, r"batch_size=True"),
    ({"momentum": 1.5}, ValueError, r"momentum=1\.5 .* <= 1\.0"),
    ({"save_every": -2}, ValueError, r"save_every=-2 .* -1 every epoch, 0 never"),
    ({"shuffle": "yes"}, TypeError, r"shuffle='yes' .* True or False"),
    (
        {"optimizer": "adamm"},
        ValueError,
        r"optimizer='adamm' is not a known optimizer\. Did you mean 'adam'\?",
    ),
    ({"optimizer": 3}, TypeError, r"optimizer=3"),
    (
        {"loss": "cross_entropyy"},
        ValueError,
        r"loss='cross_entropyy' .* Did you mean 'crossentropy'\?",
    ),
    ({"amp": "bf61"}, ValueError, r"amp='bf61' .* Did you mean 'bf16'\?"),
    ({"best_mode": "maximum"}, ValueError, r"best_mode='maximum' .* 'min', 'max' or None"),
    ({"device": "gpu"}, ValueError, r"device='gpu'"),
    ({"lr_scheduler": "cosin"}, ValueError, r"lr_scheduler='cosin' .* Did you mean 'cosine'\?"),
    ({"lr_scheduler": {"step_size": 3}}, ValueError, r"lr_scheduler=.*'name' key"),
    ({"stop_when": {"accuracy": "high"}}, TypeError, r"stop_when=.*finite numbers"),
    ({"stop_when": ["accuracy"]}, TypeError, r"stop_when=\['accuracy'\]"),
    ({"metrics": 5}, TypeError, r"metrics=5"),
    (
        {"max_grad_norm": 1.0, "grad_clip_value": 0.5},
        ValueError,
        r"clip by norm or by value, not both",
    ),
    ({"resume": "latest"}, ValueError, r"resume='latest' .* output_dir"),
    ({"resume": "/no/such/file.pt"}, ValueError, r"resume='/no/such/file\.pt'"),
    (
        {"momentum_scheduler": "cosine", "optimizer": "adagrad"},
        ValueError,
        r"momentum_scheduler=.*adagrad",
    ),
    ({"output_dir": ""}, TypeError, r"output_dir=''"),
    ({"early_stopping_patience": 0}, ValueError, r"early_stopping_patience=0"),
]


@pytest.mark.parametrize(
    "kwargs, exc, match", BAD, ids=[next(iter(k)) + str(i) for i, (k, _, _) in enumerate(BAD)]
)
def test_bad_values_raise_one_clear_error(kwargs, exc, match, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(exc, match=match):
        TrainConfig(**kwargs)
    assert list(tmp_path.iterdir()) == []  # nothing created on disk


def test_positional_arguments_are_refused():
    with pytest.raises(TypeError, match="keyword arguments only"):
        TrainConfig(10)


def test_defaults_and_normalisation():
    cfg = TrainConfig(lr=1, amp="BF16", metrics="f1", stop_when={"accuracy": 1})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.amp == "bf16"
    assert cfg.metrics == ["f1"]
    assert cfg.stop_when == {"accuracy": 1.0}


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_file_round_trip(tmp_path, suffix):
    cfg = TrainConfig(
        num_epochs=3,
        optimizer="SGD",
        lr=0.05,
        momentum=0.9,
        lr_scheduler={"name": "step", "step_size": 2},
        stop_when={"accuracy": 0.99},
        output_dir=str(tmp_path / "run"),
    )
    path = tmp_path / f"cfg{suffix}"
    cfg.to_file(path)
    again = TrainConfig.from_file(path)
    assert again == cfg
    assert again.to_dict() == cfg.to_dict()


def test_from_file_errors_name_file_and_line(tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("lr: 0.1\nnum_epochs: [3\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: invalid YAML at line \d+"):
        TrainConfig.from_file(bad_yaml)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"lr": 0.1,,}')
    with pytest.raises(ValueError, match=r"bad\.json: invalid JSON at line 1"):
        TrainConfig.from_file(bad_json)
    typo = tmp_path / "typo.json"
    typo.write_text(json.dumps({"learning_rate": 0.1}))
    with pytest.raises(TypeError, match="unknown option 'learning_rate'"):
        TrainConfig.from_file(typo)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TrainConfig.from_file(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="must end in"):
        TrainConfig.from_file(bad_yaml.rename(tmp_path / "cfg.txt"))


def test_objects_become_import_paths_in_to_dict():
    cfg = TrainConfig(
        loss=torch.nn.SmoothL1Loss(), optimizer=lambda params: torch.optim.SGD(params, lr=0.1)
    )
    data = cfg.to_dict()
    assert data["loss"] == "torch.nn.modules.loss.SmoothL1Loss"
    assert data["optimizer"].endswith("<lambda>")
    json.dumps(data)  # plain data


def test_replace_validates():
    cfg = TrainConfig()
    assert cfg.replace(lr=0.5).lr == 0.5
    with pytest.raises(TypeError, match="Did you mean 'lr'"):
        cfg.replace(lrr=0.5)
    with pytest.raises(ValueError, match="lr=0"):
        cfg.replace(lr=0)
