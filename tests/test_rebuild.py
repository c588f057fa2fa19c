"""Models rebuild from their checkpoint alone; which checkpoint of a run is used."""

from __future__ import annotations

import math

import pytest
import torch

import ignitrain
from examples.models import DigitsMLP
from ignitrain import TrainConfig, datasets
from ignitrain.checkpoint_choice import choose_checkpoint
from ignitrain.evaluation_record import read_evaluation, write_evaluation
from ignitrain.rebuild import model_from_description


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    splits = datasets.digits(seed=0, image=False)
    cfg = TrainConfig(
        num_epochs=4, lr=0.01, batch_size=64, n_saved=2, output_dir=str(out),
        tensorboard=False, verbose=False,
    )  # fmt: skip
    trainer = ignitrain.create_classification_trainer(
        DigitsMLP(hidden=8), cfg, splits.train, splits.val
    )
    trainer.train()
    return out, trainer, splits


def test_best_is_the_best_kept_by_the_metric_and_last_the_newest(run):
    out, trainer, _ = run
    best = choose_checkpoint(out)
    accuracies = trainer.history["val/accuracy"]
    assert best.which == "best" and best.metric == "accuracy"
    assert best.value == pytest.approx(max(accuracies), abs=1e-6)
    assert best.describe().startswith("best (accuracy=")
    last = choose_checkpoint(out, "last")
    assert last.which == "last" and "checkpoint_last_" in last.path.name
    given = choose_checkpoint(out, str(best.path))
    assert given.which == "path" and given.path == best.path
    assert choose_checkpoint(best.path).which == "path"


def test_a_run_without_best_checkpoints_falls_back_with_a_note(run, tmp_path):
    out, _, _ = run
    (tmp_path / "checkpoints").mkdir()
    for path in (out / "checkpoints").glob("checkpoint_last_*.pt"):
        (tmp_path / "checkpoints" / path.name).write_bytes(path.read_bytes())
    chosen = choose_checkpoint(tmp_path)
    assert chosen.which == "last" and "no best checkpoint" in chosen.note


def test_choice_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        choose_checkpoint(tmp_path / "gone")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        choose_checkpoint(tmp_path, str(tmp_path / "nope.pt"))
    with pytest.raises(FileNotFoundError, match="No valid checkpoint"):
        choose_checkpoint(tmp_path, "last")
    with pytest.raises(ValueError, match="expected 'best', 'last' or a path"):
        choose_checkpoint(tmp_path, "")


def test_a_plain_model_rebuilds_from_the_checkpoint_alone(run):
    out, trainer, splits = run
    model = ignitrain.rebuild_model(out, which="last")
    assert isinstance(model, DigitsMLP) and not model.training and model.hidden == 8
    x = splits.test.tensors[0][:32]
    with torch.no_grad():
        assert torch.equal(model(x), trainer.model.eval()(x))


def test_description_errors_are_clear():
    with pytest.raises(ValueError, match="expected a mapping with the model's 'class'"):
        model_from_description({"args": {}})
    with pytest.raises(ValueError, match="cannot import"):
        model_from_description({"class": "examples.models.NoSuchModel"})
    with pytest.raises(ValueError, match="cannot rebuild examples.models.DigitsMLP"):
        model_from_description({"class": "examples.models.DigitsMLP", "args": {"width": 3}})


def test_the_evaluation_record_round_trips(tmp_path):
    assert read_evaluation(tmp_path) is None
    write_evaluation(tmp_path, {"metrics": {"accuracy": 0.9}, "which": "best"})
    assert read_evaluation(tmp_path) == {"metrics": {"accuracy": 0.9}, "which": "best"}
    with pytest.raises(TypeError, match="expected a mapping with 'metrics'"):
        write_evaluation(tmp_path, {"accuracy": 0.9})


def test_a_tiny_gpt2_rebuilds_from_its_checkpoint(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=32, n_positions=16, n_embd=32, n_layer=2, n_head=2, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    model = transformers.GPT2LMHeadModel(config)  # built from a config: nothing downloaded
    ids = (torch.randint(0, 32, (64, 1)) + torch.arange(16)) % 32
    data = [{"input_ids": ids[i : i + 32], "labels": ids[i : i + 32]} for i in range(0, 64, 32)]
    cfg = TrainConfig(num_epochs=1, output_dir=str(tmp_path), tensorboard=False, verbose=False)
    ignitrain.create_trainer(model, cfg, data).train()
    payload = ignitrain.load_checkpoint(tmp_path)
    described = payload["model_description"]["model"]
    assert described["class"] == "transformers.models.gpt2.modeling_gpt2.GPT2LMHeadModel"
    assert described["hf_config"]["n_embd"] == 32 and described["hf_config"]["n_layer"] == 2
    rebuilt = ignitrain.rebuild_model(tmp_path, which="last")
    assert type(rebuilt) is type(model)
    for (name, a), b in zip(model.state_dict().items(), rebuilt.state_dict().values()):
        assert torch.equal(a, b), name
    with torch.no_grad():
        loss = rebuilt(input_ids=ids[:4], labels=ids[:4]).loss
    assert math.isfinite(loss.item())
