"""The seq2seq evaluation metrics: ordinary Ignite ``Metric`` s over token tensors.

Each is ``reset``/``update``/``compute``, reduced across processes with
``sync_all_reduce``, and can be used on any evaluator whose output is a dict with
``"logits"``, ``"target"`` and ``"decoded"`` or a matching tuple (padded positions never
count):

- :class:`TokenAccuracy`: teacher-forced next-token accuracy over non-pad tokens.
- :class:`SequenceAccuracy`: greedy-decoded sequences equal to the target (through EOS).
- :class:`TokenLoss`: the training loss, averaged over non-pad tokens.
- :class:`Perplexity`: ``exp`` of the mean token cross-entropy (pad excluded).

:func:`token_loss` and :func:`exact_match` are the per-batch pieces they share with the
training step (``ignitrain.flavors.seq2seq``, which re-exports every name here).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from ignite.exceptions import NotComputableError
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce
from torch import nn

from ignitrain.errors import ConfigError, is_count, suggest

__all__ = [
    "SEQ2SEQ_METRICS",
    "SpecialTokens",
    "seq2seq_metrics",
    "check_metric_names",
    "token_loss",
    "exact_match",
    "TokenAccuracy",
    "SequenceAccuracy",
    "TokenLoss",
    "Perplexity",
]


#: The metric names every seq2seq evaluator reports.
SEQ2SEQ_METRICS: tuple[str, ...] = ("loss", "token_accuracy", "sequence_accuracy", "perplexity")


@dataclass(frozen=True)
class SpecialTokens:
    """The indices of the padding, begin- and end-of-sequence tokens."""

    pad: int = 0
    bos: int = 1
    eos: int = 2

    def __post_init__(self) -> None:
        for name, value in (("pad_idx", self.pad), ("bos_idx", self.bos), ("eos_idx", self.eos)):
            if not is_count(value) or value < 0:
                raise ValueError(f"{name}={value!r} is not allowed: expected a token index >= 0")
        if len({self.pad, self.bos, self.eos}) < 3:
            raise ValueError(
                f"pad_idx={self.pad}, bos_idx={self.bos}, eos_idx={self.eos} are not allowed: "
                "the three special tokens must be different indices"
            )


# -- per-batch pieces ---------------------------------------------------------------------


def token_loss(
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    logits: torch.Tensor,
    target: torch.Tensor,
    pad_idx: int,
) -> torch.Tensor:
    """Mean of ``loss_fn`` over the non-pad tokens of ``target``.

    ``loss_fn`` is called as ``loss_fn(logits_2d (M, V), target_1d (M,))`` and must
    return the mean over those ``M`` tokens (``nn.CrossEntropyLoss`` with any
    ``label_smoothing``/``weight`` does). An ``nn.CrossEntropyLoss`` gets every token
    with the padded ones set to its ``ignore_index`` (no host sync on GPU); any other
    loss gets only the non-pad tokens.
    """
    vocab = logits.size(-1)
    keep = target != pad_idx
    if isinstance(loss_fn, nn.CrossEntropyLoss):
        labels = target.masked_fill(~keep, loss_fn.ignore_index)
        return loss_fn(logits.reshape(-1, vocab), labels.reshape(-1))
    return loss_fn(logits[keep], target[keep])


def exact_match(
    decoded: torch.Tensor, target: torch.Tensor, *, pad_idx: int, eos_idx: int
) -> torch.Tensor:
    """``(N,)`` booleans: row equals ``target`` up to and including its first EOS.

    Both sides are compared after blanking everything behind their first EOS to pad,
    so the lengths of the two tensors need not match.
    """
    length = max(decoded.size(1), target.size(1))
    decoded = F.pad(decoded, (0, length - decoded.size(1)), value=pad_idx)
    target = F.pad(target.to(decoded.device), (0, length - target.size(1)), value=pad_idx)
    same = _blank_after_eos(decoded, pad_idx, eos_idx) == _blank_after_eos(target, pad_idx, eos_idx)
    return same.all(dim=1)


def _blank_after_eos(x: torch.Tensor, pad_idx: int, eos_idx: int) -> torch.Tensor:
    is_eos = (x == eos_idx).long()
    after_first = (is_eos.cumsum(dim=1) - is_eos) > 0
    return x.masked_fill(after_first, pad_idx)


# -- metrics ----------------------------------------------------------------------------


class TokenAccuracy(Metric):
    """Fraction of non-pad target tokens whose teacher-forced argmax is right.

    ``update((logits (N, T, V), target (N, T)))``; from a dict output it reads the
    ``"logits"`` and ``"target"`` keys.
    """

    required_output_keys = ("logits", "target")

    def __init__(
        self, pad_idx: int = 0, output_transform: Callable = lambda x: x, device: Any = "cpu"
    ):
        self.pad_idx = pad_idx
        super().__init__(output_transform, device=device, skip_unrolling=True)

    @reinit__is_reduced
    def reset(self) -> None:
        self._correct = torch.tensor(0, dtype=torch.long, device=self._device)
        self._count = torch.tensor(0, dtype=torch.long, device=self._device)

    @reinit__is_reduced
    def update(self, output: tuple[torch.Tensor, torch.Tensor]) -> None:
        logits, target = output[0].detach(), output[1].detach()
        keep = target != self.pad_idx
        self._correct += ((logits.argmax(-1) == target) & keep).sum().to(self._device)
        self._count += keep.sum().to(self._device)

    @sync_all_reduce("_correct", "_count")
    def compute(self) -> float:
        if self._count.item() == 0:
            raise NotComputableError("TokenAccuracy needs at least one non-pad token")
        return self._correct.item() / self._count.item()


class SequenceAccuracy(Metric):
    """Fraction of sequences decoded exactly right, through the first EOS.

    ``update((decoded (N, L), target (N, T)))``; from a dict output it reads the
    ``"decoded"`` and ``"target"`` keys. See :func:`exact_match`.
    """

    required_output_keys = ("decoded", "target")

    def __init__(
        self,
        pad_idx: int = 0,
        eos_idx: int = 2,
        output_transform: Callable = lambda x: x,
        device: Any = "cpu",
    ):
        self.pad_idx, self.eos_idx = pad_idx, eos_idx
        super().__init__(output_transform, device=device, skip_unrolling=True)

    @reinit__is_reduced
    def reset(self) -> None:
        self._correct = torch.tensor(0, dtype=torch.long, device=self._device)
        self._count = 0

    @reinit__is_reduced
    def update(self, output: tuple[torch.Tensor, torch.Tensor]) -> None:
        decoded, target = output[0].detach(), output[1].detach()
        self._correct += (
            exact_match(decoded, target, pad_idx=self.pad_idx, eos_idx=self.eos_idx)
            .sum()
            .to(self._device)
        )
        self._count += target.size(0)

    @sync_all_reduce("_correct", "_count")
    def compute(self) -> float:
        if self._count == 0:
            raise NotComputableError("SequenceAccuracy needs at least one sequence")
        return self._correct.item() / self._count


class TokenLoss(Metric):
    """Mean of ``loss_fn`` over all non-pad target tokens (see :func:`token_loss`).

    Each batch's mean is weighted by its number of non-pad tokens, so the result is
    the mean over every token of the dataset, whatever the batch composition.
    """

    required_output_keys = ("logits", "target")

    def __init__(
        self,
        loss_fn: Callable,
        pad_idx: int = 0,
        output_transform: Callable = lambda x: x,
        device: Any = "cpu",
    ):
        self.loss_fn = loss_fn
        self.pad_idx = pad_idx
        super().__init__(output_transform, device=device, skip_unrolling=True)

    @reinit__is_reduced
    def reset(self) -> None:
        self._sum = torch.tensor(0.0, dtype=self._double_dtype, device=self._device)
        self._count = torch.tensor(0, dtype=torch.long, device=self._device)

    @reinit__is_reduced
    def update(self, output: tuple[torch.Tensor, torch.Tensor]) -> None:
        logits, target = output[0].detach(), output[1].detach()
        count = (target != self.pad_idx).sum()
        mean = token_loss(self.loss_fn, logits, target, self.pad_idx)
        if mean.dim() != 0:
            raise ValueError(
                f"the loss must return a mean (a scalar); got shape {tuple(mean.shape)}"
            )
        self._sum += (mean.to(self._double_dtype) * count).to(self._device)
        self._count += count.to(self._device)

    def _mean(self) -> float:
        if self._count.item() == 0:
            raise NotComputableError(f"{type(self).__name__} needs at least one non-pad token")
        return self._sum.item() / self._count.item()

    @sync_all_reduce("_sum", "_count")
    def compute(self) -> float:
        return self._mean()


class Perplexity(TokenLoss):
    """``exp`` of the mean token cross-entropy over non-pad tokens.

    Always plain cross-entropy (no label smoothing), so it is a true perplexity even
    when training uses a smoothed loss. ``inf`` when the mean exceeds ``log(max float)``.
    """

    def __init__(
        self, pad_idx: int = 0, output_transform: Callable = lambda x: x, device: Any = "cpu"
    ):
        super().__init__(nn.CrossEntropyLoss(), pad_idx, output_transform, device)

    @sync_all_reduce("_sum", "_count")
    def compute(self) -> float:
        mean = self._mean()
        return math.exp(mean) if mean < 709.0 else math.inf


def seq2seq_metrics(
    loss_fn: Callable, tokens: SpecialTokens = SpecialTokens()
) -> dict[str, Metric]:
    """Fresh ``loss``, ``token_accuracy``, ``sequence_accuracy`` and ``perplexity`` metrics."""
    return {
        "loss": TokenLoss(loss_fn, tokens.pad),
        "token_accuracy": TokenAccuracy(tokens.pad),
        "sequence_accuracy": SequenceAccuracy(tokens.pad, tokens.eos),
        "perplexity": Perplexity(tokens.pad),
    }


def check_metric_names(names: Any) -> None:
    """Each of ``names`` must be one of :data:`SEQ2SEQ_METRICS`.

    Raises:
        ConfigError: a name is not (with a close match).
    """
    for name in names:
        if name not in SEQ2SEQ_METRICS:
            raise ConfigError(
                f"TrainConfig.metrics contains {name!r}, not a seq2seq metric."
                f"{suggest(name, SEQ2SEQ_METRICS)} All of {', '.join(SEQ2SEQ_METRICS)} are "
                "always reported; pass other Ignite metrics through metrics="
            )
