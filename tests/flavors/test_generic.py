"""Generic flavor: models that return their own loss (object with .loss, dict, tuple,
scalar), Hugging Face style dict batches, user train/eval steps, exact resume, argument
checks, and a tiny GPT-2 from ``transformers`` when it is installed."""

import math
from collections.abc import Mapping
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Events
from ignite.metrics import Accuracy
from torch import nn
from torch.utils.data import Dataset

from ignitrain.config import ConfigError
from ignitrain.flavors.generic import OutputMean, create_trainer, extract_loss
from tests.conftest import config_maker

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass
class Output:
    loss: torch.Tensor | None
    logits: torch.Tensor


class DigitsLossModel(nn.Module):
    """A digits classifier that computes its own loss, returning it as ``style`` says."""

    def __init__(self, style="object", seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.style = style
        self.net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x, labels=None):
        logits = self.net(x)
        loss = None if labels is None else F.cross_entropy(logits, labels)
        if self.style == "object":
            return Output(loss, logits)
        if self.style == "dict":
            return {"loss": loss, "logits": logits}
        if self.style == "tuple":
            return loss, logits
        return loss  # "scalar"


class AsDicts(Dataset):
    """``{"x": ..., "labels": ...}`` samples, as a tokenized Hugging Face dataset gives."""

    def __init__(self, tensor_dataset):
        self.x, self.y = tensor_dataset.tensors

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


class Encoding(Mapping):
    """A Mapping that is not a dict (like ``transformers.BatchEncoding``)."""

    def __init__(self, data):
        self.data = data

    def __getitem__(self, key):
        return self.data[key]

    def __iter__(self):
        return iter(self.data)

    def __len__(self):
        return len(self.data)


cfg = config_maker(num_epochs=3, optimizer="adam", lr=1e-2, batch_size=64, progress_bar=False)


def hand_loss(model, split):
    x, y = split.tensors
    model.eval()
    with torch.no_grad():
        return F.cross_entropy(model.net(x), y).item()


# -- models that return their own loss --------------------------------------------------


@pytest.mark.parametrize("style", ["object", "dict", "tuple", "scalar"])
def test_loss_falls_for_every_output_style_with_dict_batches(digits_flat, style):
    model = DigitsLossModel(style)
    trainer = create_trainer(
        model, cfg(metrics=["perplexity"]), AsDicts(digits_flat.train), AsDicts(digits_flat.val)
    )
    before = hand_loss(model, digits_flat.val)
    history = trainer.train()
    assert history["train/loss"][-1] < 0.5 * history["train/loss"][0]
    after = hand_loss(model, digits_flat.val)
    assert after < 0.3 * before
    # val/loss is the mean over samples (batch-size weighted), val/perplexity its exp
    assert history["val/loss"][-1] == pytest.approx(after, rel=1e-5)
    assert history["val/perplexity"][-1] == pytest.approx(math.exp(after), rel=1e-5)


def test_tuple_batches_go_in_as_positional_arguments(digits_flat):
    model = DigitsLossModel("tuple")
    history = create_trainer(model, cfg(num_epochs=2), digits_flat.train).train()
    assert history["train/loss"][-1] < history["train/loss"][0]


def test_mapping_batches_that_are_not_dicts_are_moved_and_unpacked(digits_flat):
    x, y = digits_flat.train.tensors
    batches = [
        Encoding({"x": x[i : i + 100], "labels": y[i : i + 100]}) for i in range(0, 1000, 100)
    ]
    trainer = create_trainer(DigitsLossModel("object"), cfg(num_epochs=2), batches, batches)
    history = trainer.train()
    assert history["train/loss"][-1] < history["train/loss"][0]
    assert trainer.evaluate(batches)["loss"] == pytest.approx(history["val/loss"][-1])


def test_extract_loss_lookup_order():
    loss = torch.tensor(0.5)
    assert extract_loss(loss) is not None and extract_loss(loss).item() == 0.5
    assert extract_loss({"loss": loss, "logits": torch.ones(2)}).item() == 0.5
    assert extract_loss(Output(loss.reshape(1), torch.ones(2))).shape == ()
    assert extract_loss((loss, torch.ones(3))).item() == 0.5


# -- user steps -------------------------------------------------------------------------


def test_user_train_and_eval_steps_report_their_values(digits_flat):
    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    seen_training = []

    def train_step(model, batch):
        x, y = batch
        seen_training.append(model.training)
        logits = model(x)
        accuracy = (logits.argmax(1) == y).float().mean()
        return {"loss": F.cross_entropy(logits, y), "batch_accuracy": accuracy}

    def eval_step(model, batch):
        x, y = batch
        logits = model(x)
        return {
            "loss": F.cross_entropy(logits, y),
            "hand_accuracy": (logits.argmax(1) == y).float().mean(),
            "y_pred": logits,  # not a scalar: for the Ignite metric below
            "y": y,
        }

    trainer = create_trainer(
        net, cfg(), digits_flat.train, digits_flat.val, train_step=train_step,
        eval_step=eval_step, metrics={"accuracy": Accuracy(lambda o: (o["y_pred"], o["y"]))},
    )  # fmt: skip
    history = trainer.train()
    assert all(seen_training)
    assert history["train/batch_accuracy"][-1] > history["train/batch_accuracy"][0]
    # the weighted mean of per-batch accuracies is the accuracy over the whole set
    x, y = digits_flat.val.tensors
    with torch.no_grad():
        expected = (net(x).argmax(1) == y).float().mean().item()
    assert history["val/hand_accuracy"][-1] == pytest.approx(expected)
    assert history["val/accuracy"][-1] == pytest.approx(expected)
    assert "val/y_pred" not in history


def test_train_step_alone_is_reused_for_evaluation_in_eval_mode(digits_flat):
    modes = []

    def step(model, batch):
        modes.append(model.training)
        x, y = batch
        return F.cross_entropy(model(x), y)

    net = nn.Sequential(nn.Linear(64, 10))
    trainer = create_trainer(net, cfg(num_epochs=1), digits_flat.train, train_step=step)
    trainer.train()
    modes.clear()
    metrics = trainer.evaluate(digits_flat.val)
    assert modes and not any(modes)
    x, y = digits_flat.val.tensors
    with torch.no_grad():
        assert metrics["loss"] == pytest.approx(F.cross_entropy(net(x), y).item(), rel=1e-5)


def test_output_mean_weights_by_batch_size():
    metric = OutputMean(perplexity=True)
    metric.update(({"loss": 1.0, "skip": torch.ones(3)}, 3.0))
    metric.update(({"loss": 2.0}, 1.0))
    result = metric.compute()
    assert result == pytest.approx({"loss": 1.25, "perplexity": math.exp(1.25)})


# -- resume -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kill_at", [Events.EPOCH_COMPLETED(once=2), Events.ITERATION_COMPLETED(once=30)]
)
def test_resume_continues_bit_for_bit(digits_flat, tmp_path, kill_at):
    def run(out=None, resume=None, kill=None):
        config = cfg(
            num_epochs=3, output_dir=out, resume=resume, deterministic=True, num_workers=0,
            lr_scheduler="cosine", seed=0, save_every=1 if out else -1, batch_size=64,
        )  # fmt: skip
        trainer = create_trainer(
            DigitsLossModel("dict"), config, AsDicts(digits_flat.train), AsDicts(digits_flat.val)
        )
        if kill is not None:
            trainer.engine.add_event_handler(kill, lambda engine: engine.terminate())
        return trainer, trainer.train()

    straight, _ = run()
    killed, _ = run(out=str(tmp_path), kill=kill_at)
    length = straight.engine.state.epoch_length
    assert killed.engine.state.iteration < 3 * length
    resumed, history = run(out=str(tmp_path), resume="latest")
    assert resumed.engine.state.iteration == 3 * length
    assert history.steps("train/loss") == [1, 2, 3]
    assert history["train/loss"] == pytest.approx(straight.history["train/loss"])
    for a, b in zip(
        straight.model.state_dict().values(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


# -- bad inputs -------------------------------------------------------------------------


def one_arg_step(batch):
    return batch


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(config=cfg(loss="mse")), ConfigError, "TrainConfig.loss='mse' is not used"),
        (dict(config=cfg(metrics=["perplexitty"])), ConfigError, "Did you mean 'perplexity'"),
        (dict(train_step="step"), TypeError, r"train_step must be a callable \(model, batch\)"),
        (dict(eval_step=one_arg_step), TypeError, "eval_step must accept two arguments"),
        (dict(model=lambda batch: batch), TypeError, "model must be a torch.nn.Module"),
        (dict(optimizer=lambda params: None), TypeError, "must return a torch.optim.Optimizer"),
        (dict(train_data=None), ValueError, "train_data must be a Dataset"),
    ],
)
def test_bad_arguments_fail_at_construction(digits_flat, kwargs, exc, match):
    args = dict(model=DigitsLossModel(), config=cfg(), train_data=AsDicts(digits_flat.train))
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        create_trainer(**args)


@pytest.mark.parametrize(
    "train_step, match",
    [
        (lambda m, b: m(b["x"]).logits, r"floating scalar tensor.*shape \(64, 10\)"),
        (lambda m, b: m(b["x"]), "its loss is None"),  # labels not passed
        (lambda m, b: {"logits": m(**b).logits}, "among keys \\['logits'\\]"),
        (lambda m, b: m(**b).loss.detach(), "does not require grad"),
        (lambda m, b: "loss", "must return a scalar loss tensor, a dict"),
    ],
)
def test_wrong_step_outputs_fail_at_the_first_step(digits_flat, train_step, match):
    trainer = create_trainer(
        DigitsLossModel("object"), cfg(), AsDicts(digits_flat.train), train_step=train_step
    )
    with pytest.raises((TypeError, ValueError), match=match):
        trainer.train()


def test_model_without_loss_in_its_output_names_what_it_returned(digits_flat):
    model = nn.Linear(64, 10)  # returns logits: no loss to train on
    batches = [digits_flat.train.tensors[0][:64]]  # tensor batches: model(batch)
    with pytest.raises(ValueError, match=r"could not find the loss.*shape \(64, 10\)"):
        create_trainer(model, cfg(), batches).train()


# -- transformers -----------------------------------------------------------------------


def test_tiny_gpt2_from_a_config_trains_a_few_steps():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=32, n_positions=16, n_embd=32, n_layer=2, n_head=2, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    model = transformers.GPT2LMHeadModel(config)  # random weights, nothing downloaded
    # counting sequences mod 32 from random starts: next token = previous + 1
    starts = torch.randint(0, 32, (256, 1), generator=torch.Generator().manual_seed(0))
    ids = (starts + torch.arange(16)) % 32
    data = [
        {"input_ids": ids[i : i + 32], "attention_mask": torch.ones_like(ids[i : i + 32]),
         "labels": ids[i : i + 32]}
        for i in range(0, 256, 32)
    ]  # fmt: skip
    trainer = create_trainer(
        model, cfg(num_epochs=3, lr=3e-3, metrics=["perplexity"]), data, data[:2]
    )
    history = trainer.train()
    assert history["train/loss"][-1] < 0.7 * history["train/loss"][0]
    assert history["val/perplexity"][-1] < math.exp(history["train/loss"][0]) / 2
    assert history["val/perplexity"][-1] == pytest.approx(math.exp(history["val/loss"][-1]))
