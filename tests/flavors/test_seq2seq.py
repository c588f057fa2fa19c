"""Seq2seq flavor: learning a real (synthetic) task, padding masked in the loss and every
metric (values checked by hand), greedy decoding, scheduled sampling, exact resume and
argument checks."""

import math

import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Events
from torch import nn
from torch.utils.data import TensorDataset

from ignitrain.config import ConfigError
from ignitrain.flavors.seq2seq import (
    Perplexity,
    SequenceAccuracy,
    SpecialTokens,
    TokenAccuracy,
    TokenLoss,
    create_seq2seq_trainer,
    exact_match,
    greedy_decode,
    scheduled_inputs,
    token_loss,
)
from tests.conftest import config_maker

PAD, BOS, EOS, DIGIT0, DIGITS = 0, 1, 2, 3, 5
VOCAB = DIGIT0 + DIGITS


pytestmark = pytest.mark.usefixtures("one_thread")


def reversal(num, seed, min_len=2, max_len=4):
    """Digit strings (padded ``src``) and ``BOS reversed EOS`` targets (padded ``tgt``)."""
    gen = torch.Generator().manual_seed(seed)
    src = torch.full((num, max_len), PAD)
    tgt = torch.full((num, max_len + 2), PAD)
    for i in range(num):
        length = int(torch.randint(min_len, max_len + 1, (1,), generator=gen))
        tokens = torch.randint(0, DIGITS, (length,), generator=gen) + DIGIT0
        src[i, :length] = tokens
        tgt[i, 0], tgt[i, 1 : length + 1], tgt[i, length + 1] = BOS, tokens.flip(0), EOS
    return TensorDataset(src, tgt)


class GRUSeq2Seq(nn.Module):
    """Encoder GRU's last state starts the decoder GRU; ``(src, tgt_in) -> (N, T, V)``."""

    def __init__(self, hidden=48, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(VOCAB, hidden, padding_idx=PAD)
        self.enc = nn.GRU(hidden, hidden, batch_first=True)
        self.dec = nn.GRU(hidden, hidden, batch_first=True)
        self.out = nn.Linear(hidden, VOCAB)

    def forward(self, src, tgt_in):
        _, state = self.enc(self.embed(src))
        hidden, _ = self.dec(self.embed(tgt_in), state)
        return self.out(hidden)


cfg = config_maker(num_epochs=3, optimizer="adam", lr=1e-2, batch_size=32, progress_bar=False)


# -- learning ---------------------------------------------------------------------------


def test_loss_falls_and_greedy_exact_match_rises_on_reversal(tmp_path):
    trainer = create_seq2seq_trainer(
        GRUSeq2Seq(), cfg(num_epochs=6, output_dir=str(tmp_path)), reversal(1024, 0),
        reversal(256, 1), pad_idx=PAD, bos_idx=BOS, eos_idx=EOS,
    )  # fmt: skip
    before = trainer.evaluate(reversal(256, 1))
    history = trainer.train()
    loss = history["train/loss"]
    assert loss[-1] < 0.5 * loss[0]
    assert history["val/token_accuracy"][-1] > before["token_accuracy"] + 0.3
    assert history["val/sequence_accuracy"][-1] > 0.3 > before["sequence_accuracy"]
    # perplexity is exp of the plain token cross-entropy, the same value as val/loss here
    assert history["val/perplexity"][-1] == pytest.approx(math.exp(history["val/loss"][-1]))
    assert (tmp_path / "history.json").exists()


# -- padding masked, values by hand ----------------------------------------------------


def handmade():
    """Target rows ``3 4 EOS PAD`` and ``5 EOS PAD PAD``; the argmax predictions are
    ``3 5 EOS 4`` and ``5 3 BOS BOS``: 3 of the 5 real tokens right, every pad wrong."""
    target = torch.tensor([[3, 4, EOS, PAD], [5, EOS, PAD, PAD]])
    pred = torch.tensor([[3, 5, EOS, 4], [5, 3, BOS, BOS]])
    logits = 2.0 * F.one_hot(pred, 6).float()
    return logits, target


def test_token_metrics_count_only_non_pad_tokens():
    logits, target = handmade()
    accuracy = TokenAccuracy(pad_idx=PAD)
    accuracy.update((logits, target))
    assert accuracy.compute() == pytest.approx(3 / 5)  # 3 / 8 if pads counted

    # log-softmax of a right token: 2 - log(e^2 + 5); of a wrong one: -log(e^2 + 5)
    expected = -(3 * 2.0) / 5 + math.log(math.exp(2.0) + 5)
    for loss_fn in (nn.CrossEntropyLoss(), lambda lg, t: F.cross_entropy(lg, t)):
        assert token_loss(loss_fn, logits, target, PAD).item() == pytest.approx(expected)
        metric = TokenLoss(loss_fn, pad_idx=PAD)
        metric.update((logits, target))
        assert metric.compute() == pytest.approx(expected)
    perplexity = Perplexity(pad_idx=PAD)
    perplexity.update((logits, target))
    assert perplexity.compute() == pytest.approx(math.exp(expected))

    # garbage logits at padded positions change nothing
    noisy = logits.clone()
    noisy[target == PAD] = torch.randn(int((target == PAD).sum()), 6) * 50
    assert token_loss(nn.CrossEntropyLoss(), noisy, target, PAD).item() == pytest.approx(expected)


def test_token_loss_is_a_mean_over_tokens_not_over_batches():
    logits, target = handmade()
    metric = TokenLoss(nn.CrossEntropyLoss(), pad_idx=PAD)
    metric.update((logits[:1], target[:1]))  # 3 tokens
    metric.update((logits[1:], target[1:]))  # 2 tokens
    whole = token_loss(nn.CrossEntropyLoss(), logits, target, PAD).item()
    assert metric.compute() == pytest.approx(whole)


def test_exact_match_ignores_everything_after_eos_and_length_differences():
    target = torch.tensor([[3, 4, EOS, PAD], [5, EOS, PAD, PAD], [6, EOS, PAD, PAD]])
    decoded = torch.tensor([[3, 4, EOS, 7, 7], [5, EOS, PAD, PAD, PAD], [6, 6, PAD, PAD, PAD]])
    assert exact_match(decoded, target, pad_idx=PAD, eos_idx=EOS).tolist() == [True, True, False]
    assert exact_match(decoded[:, :2], target, pad_idx=PAD, eos_idx=EOS).tolist() == [
        False,  # cut before its EOS
        True,
        False,
    ]
    metric = SequenceAccuracy(pad_idx=PAD, eos_idx=EOS)
    metric.update((decoded, target))
    assert metric.compute() == pytest.approx(2 / 3)


class Echo(nn.Module):
    """Predicts ``src[:, t]`` at decoder position ``t`` (``src`` holds EOS and pads)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(5.0))

    def forward(self, src, tgt_in):
        t = tgt_in.size(1)
        padded = F.pad(src, (0, max(0, t - src.size(1))), value=PAD)[:, :t]
        return self.scale * F.one_hot(padded, VOCAB).float()


def test_greedy_decode_stops_rows_at_eos_and_pads_them():
    src = torch.tensor([[5, 6, EOS, PAD], [7, EOS, PAD, PAD]])
    decoded = greedy_decode(Echo(), src, max_len=10)
    assert decoded.tolist() == [[5, 6, EOS], [7, EOS, PAD]]  # stopped once all rows ended
    assert greedy_decode(Echo(), src, max_len=2).tolist() == [[5, 6], [7, EOS]]
    with pytest.raises(ValueError, match="batch_size="):
        greedy_decode(Echo(), {"not": "a tensor"}, max_len=3)


def test_evaluation_values_match_a_hand_computation():
    model = GRUSeq2Seq(seed=3)
    data = reversal(5, seed=7)
    config = cfg(num_epochs=1, batch_size=2, val_batch_size=2)  # batches of 2, 2, 1
    trainer = create_seq2seq_trainer(model, config, data)
    got = trainer.evaluate(data)

    src, tgt = data.tensors
    model.eval()
    with torch.no_grad():
        logits = model(src, tgt[:, :-1])
        target = tgt[:, 1:]
        keep = target != PAD
        loss = F.cross_entropy(logits[keep], target[keep]).item()
        accuracy = (logits.argmax(-1)[keep] == target[keep]).float().mean().item()
        # greedy decoding written out: feed back the argmax, stop at EOS
        ys = torch.full((5, 1), BOS)
        for _ in range(target.size(1)):
            ys = torch.cat([ys, model(src, ys)[:, -1].argmax(-1, keepdim=True)], dim=1)
    exact = sum(_until_eos(ys[i, 1:].tolist()) == _until_eos(target[i].tolist()) for i in range(5))
    assert got["loss"] == pytest.approx(loss, rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)
    assert got["token_accuracy"] == pytest.approx(accuracy)
    assert got["sequence_accuracy"] == pytest.approx(exact / 5)


def _until_eos(tokens):
    return tokens[: tokens.index(EOS) + 1] if EOS in tokens else tokens


def test_scheduled_inputs_replace_only_real_tokens_after_bos():
    tgt_in = torch.tensor([[BOS, 3, 4, PAD], [BOS, 5, PAD, PAD]])
    src = torch.tensor([[6, 7, 6, 7], [7, 6, 7, 6]])  # Echo predicts src[:, t] at t
    assert torch.equal(scheduled_inputs(Echo(), src, tgt_in, 1.0, PAD), tgt_in)
    mixed = scheduled_inputs(Echo(), src, tgt_in, 0.0, PAD)
    # position t >= 1 takes the prediction made at t - 1; BOS and pads are kept
    assert mixed.tolist() == [[BOS, 6, 7, PAD], [BOS, 7, PAD, PAD]]


def test_teacher_forcing_schedule_is_logged_per_epoch():
    trainer = create_seq2seq_trainer(
        GRUSeq2Seq(), cfg(num_epochs=2), reversal(128, 0), teacher_forcing=lambda e: 1.1 - 0.3 * e
    )
    history = trainer.train()
    assert history["train/teacher_forcing"] == pytest.approx([0.8, 0.5])


# -- resume -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kill_at", [Events.EPOCH_COMPLETED(once=2), Events.ITERATION_COMPLETED(once=13)]
)
def test_resume_continues_bit_for_bit(tmp_path, kill_at):
    def run(out=None, resume=None, kill=None):
        config = cfg(
            num_epochs=3, output_dir=out, resume=resume, deterministic=True, num_workers=0,
            lr_scheduler="cosine", seed=0, save_every=1 if out else -1,
        )  # fmt: skip
        # scheduled sampling draws from the global RNG: the resume must restore it too
        trainer = create_seq2seq_trainer(
            GRUSeq2Seq(), config, reversal(256, 0), reversal(64, 1), teacher_forcing=0.8
        )
        if kill is not None:
            trainer.engine.add_event_handler(kill, lambda engine: engine.terminate())
        return trainer, trainer.train()

    straight, _ = run()
    killed, _ = run(out=str(tmp_path), kill=kill_at)
    assert killed.engine.state.iteration < 3 * 8
    resumed, history = run(out=str(tmp_path), resume="latest")
    assert resumed.engine.state.iteration == straight.engine.state.iteration == 3 * 8
    assert history.steps("train/loss") == [1, 2, 3]
    for a, b in zip(
        straight.model.state_dict().values(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


# -- bad inputs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(pad_idx=1), ValueError, "special tokens must be different"),
        (dict(eos_idx=-1), ValueError, "eos_idx=-1 is not allowed"),
        (dict(teacher_forcing=1.5), ValueError, r"teacher_forcing=1.5 is not allowed.*\[0, 1\]"),
        (dict(max_decode_len=0), ValueError, "max_decode_len=0 is not allowed"),
        (dict(config=cfg(metrics=["bleu"])), ConfigError, "'bleu', not a seq2seq metric"),
        (dict(model=lambda s, t: s), TypeError, "model must be a torch.nn.Module"),
        (dict(optimizer=lambda params: None), TypeError, "must return a torch.optim.Optimizer"),
        (dict(loss=3), TypeError, "loss"),
        (dict(metrics={"m": 1}), TypeError, r"metrics\['m'\] must be an ignite"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, exc, match):
    args = dict(model=GRUSeq2Seq(), config=cfg(), train_data=reversal(64, 0))
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        create_seq2seq_trainer(**args)


class FlatLogits(GRUSeq2Seq):
    def forward(self, src, tgt_in):
        return super().forward(src, tgt_in)[:, -1]  # (N, V): forgot the time axis


def test_bad_batches_and_outputs_fail_at_the_first_step():
    data = reversal(64, 0)
    with pytest.raises(ValueError, match=r"logits of shape \(N, T, V\) = \(32, 5, V\)"):
        create_seq2seq_trainer(FlatLogits(), cfg(), data).train()

    src, tgt = data.tensors
    minus_padded = TensorDataset(src, tgt.masked_fill(tgt == PAD, -1))
    with pytest.raises(ValueError, match="negative token -1.*pad with pad_idx=0"):
        create_seq2seq_trainer(GRUSeq2Seq(), cfg(), minus_padded).train()

    eos_padded = TensorDataset(src, tgt.masked_fill(tgt == PAD, EOS))
    with pytest.raises(ValueError, match="padded with pad_idx=0 after EOS"):
        create_seq2seq_trainer(GRUSeq2Seq(), cfg(), eos_padded).train()

    # Echo never embeds tgt, so the out-of-vocabulary token reaches the logits check
    with pytest.raises(ValueError, match="tgt holds token 8 but .* V=8"):
        create_seq2seq_trainer(Echo(), cfg(), data).evaluate(
            TensorDataset(src, tgt.masked_fill(tgt == 3, VOCAB))
        )

    with pytest.raises(ValueError, match="must start with bos_idx=1"):
        create_seq2seq_trainer(GRUSeq2Seq(), cfg(), TensorDataset(src, tgt[:, 1:])).train()

    with pytest.raises(ValueError, match=r"\(src, tgt\) pairs; got list of length 3"):
        create_seq2seq_trainer(GRUSeq2Seq(), cfg(), TensorDataset(src, tgt, tgt)).train()

    with pytest.raises(ValueError, match="tgt must be an integer tensor"):
        create_seq2seq_trainer(GRUSeq2Seq(), cfg(), TensorDataset(src, tgt.float())).train()


def test_special_tokens_validation():
    with pytest.raises(ValueError, match="pad_idx=True is not allowed"):
        SpecialTokens(pad=True)
