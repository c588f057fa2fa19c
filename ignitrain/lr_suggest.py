"""Whether a learning-rate range test curve supports its suggestion.

A range test always yields *some* minimum-gradient point, even over a flat or noisy
curve (seen: ``suggested lr 1.45e-07``, the bottom of the sweep, over a loss that did
not move). :func:`judge_lr_curve` reads the curve the way a person reads the plot and
says whether the suggestion can be trusted, and if not, why. It knows nothing of how
the curve was made (our finder or Ignite's ``FastaiLRFinder``): it takes the learning
rates and the losses.

    verdict = judge_lr_curve(result.lrs, result.losses, result.suggestion)
    if not verdict.reliable:
        print("no reliable suggestion:", verdict.reason)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["LRVerdict", "judge_lr_curve", "MIN_POINTS", "FLAT_DROP", "NOISE_RATIO"]

MIN_POINTS = 10
"""Fewer points than this cannot be read."""

FLAT_DROP = 0.05
"""The loss must fall by at least this fraction of its starting value somewhere."""

NOISE_RATIO = 0.25
"""A typical deviation from the trend larger than this fraction of the drop is noise."""

_EDGE = 0.05  # a suggestion within the first/last 5% of the sweep (in log LR) is an edge


@dataclass(frozen=True)
class LRVerdict:
    """The judgement on one range-test curve.

    Attributes:
        reliable: Whether ``suggestion`` can be used as a learning rate.
        reason: Why not (``""`` when reliable), in words for the user.
        suggestion: The suggestion judged (``None`` when there was none).
    """

    reliable: bool
    reason: str
    suggestion: float | None


def _check(lrs: Sequence[float], losses: Sequence[float]) -> tuple[list[float], list[float]]:
    if isinstance(lrs, (str, bytes)) or isinstance(losses, (str, bytes)):
        raise TypeError("Arguments lrs and losses must be sequences of numbers, not strings")
    try:
        lrs, losses = [float(v) for v in lrs], [float(v) for v in losses]
    except (TypeError, ValueError):
        raise TypeError("Arguments lrs and losses must be sequences of numbers") from None
    if len(lrs) != len(losses):
        raise ValueError(
            f"Arguments lrs and losses must have the same length, got {len(lrs)} and {len(losses)}"
        )
    if any(not lr > 0 for lr in lrs):
        raise ValueError("Argument lrs must hold positive learning rates")
    return lrs, losses


def _running_median(values: list[float], half: int = 3) -> list[float]:
    out = []
    for i in range(len(values)):
        window = sorted(values[max(0, i - half) : i + half + 1])
        out.append(window[len(window) // 2])
    return out


def judge_lr_curve(
    lrs: Sequence[float], losses: Sequence[float], suggestion: float | None = None
) -> LRVerdict:
    """Judge a range-test curve (LR rising, loss recorded at each LR).

    Unreliable when, in this order: the curve is too short (< :data:`MIN_POINTS`); the
    loss is not finite before it ever fell; the loss never falls by :data:`FLAT_DROP` of
    its start (flat); its lowest point is in the first 10% of the sweep (it diverges at
    once: even the smallest rates are too large, or the start is already the best); the
    typical deviation from the trend (a running median of 7 points) exceeds
    :data:`NOISE_RATIO` of the drop (noisy);
    the suggestion is missing or sits at an end of the sweep.

    Args:
        lrs: Learning rate of each point, increasing.
        losses: Loss at each point (smoothed or raw).
        suggestion: The finder's suggested learning rate.

    Returns:
        An :class:`LRVerdict`.

    Raises:
        TypeError: ``lrs``/``losses`` are not sequences of numbers.
        ValueError: different lengths, or a learning rate <= 0.
    """
    lrs, losses = _check(lrs, losses)

    def unreliable(reason: str) -> LRVerdict:
        return LRVerdict(False, reason, suggestion)

    if len(lrs) < MIN_POINTS:
        return unreliable(f"the curve has {len(lrs)} points (needs {MIN_POINTS}); raise --num-iter")
    finite = [i for i, v in enumerate(losses) if math.isfinite(v)]
    if not finite or finite[0] != 0:
        return unreliable("the loss is not finite from the start")
    # the curve up to the first non-finite value (where the finder stopped), and its
    # running median: the trend a person sees through the jitter
    end = next((i for i, v in enumerate(losses) if not math.isfinite(v)), len(losses))
    curve = losses[:end]
    trend = _running_median(curve)
    start, low = trend[0], min(trend)
    low_at = trend.index(low)
    drop = start - low
    if drop <= FLAT_DROP * max(abs(start), 1e-12):
        if low_at == 0 and max(trend) > start * (1 + FLAT_DROP):
            return unreliable("the loss rises from the first step: it diverges at once")
        return unreliable(
            f"the loss is flat (it falls by {drop / max(abs(start), 1e-12):.1%} of its start "
            f"at most): the model does not learn over lr {lrs[0]:.3g} .. {lrs[end - 1]:.3g}"
        )
    if low_at < max(1, len(trend) // 10):
        return unreliable("the loss is lowest at the start of the sweep: it diverges at once")
    deviations = sorted(abs(v - t) for v, t in zip(curve, trend))
    noise = deviations[len(deviations) // 2]
    if noise > NOISE_RATIO * drop:
        return unreliable(
            f"the curve is noise (typical deviation {noise:.3g} from its trend against a drop "
            f"of {drop:.3g}): use more iterations or a larger batch"
        )
    if suggestion is None or not math.isfinite(suggestion) or suggestion <= 0:
        return unreliable("the finder gave no suggestion")
    span = math.log(lrs[-1] / lrs[0]) if lrs[-1] > lrs[0] else 0.0
    where = math.log(suggestion / lrs[0]) / span if span else 0.0
    if where < _EDGE or where > 1 - _EDGE:
        return unreliable(f"the suggestion {suggestion:.3g} is at an end of the sweep")
    return LRVerdict(True, "", suggestion)
