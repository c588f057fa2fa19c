"""The reliability judgement of a range-test curve, on curves shaped like real ones."""

import math

import numpy as np
import pytest

from ignitrain.lr_suggest import LRVerdict, judge_lr_curve

LRS = list(np.geomspace(1e-7, 10, 100))


def _good_curve():
    # falls from 2.3 to 0.3 between 1e-4 and 1e-1, then diverges: the textbook shape
    x = np.log10(LRS)
    return list(2.3 - 2.0 / (1 + np.exp(-(x + 2.5) * 3)) + np.where(x > -0.5, (x + 0.5) * 4, 0))


def test_a_textbook_curve_gives_a_reliable_suggestion():
    verdict = judge_lr_curve(LRS, _good_curve(), suggestion=3e-3)
    assert verdict == LRVerdict(True, "", 3e-3)


def test_the_flat_curve_of_the_issue_is_unreliable():
    # digits_cnn before the fix: the loss never moved and the "suggestion" was the
    # bottom of the sweep (1.45e-07)
    rng = np.random.default_rng(0)
    flat = list(2.302 + rng.normal(0, 0.002, 100))
    verdict = judge_lr_curve(LRS, flat, suggestion=1.45e-7)
    assert not verdict.reliable and "flat" in verdict.reason


def test_a_curve_that_diverges_at_once_is_unreliable():
    rising = [1.0 + 0.05 * i for i in range(40)]
    verdict = judge_lr_curve(LRS[:40], rising, suggestion=LRS[3])
    assert not verdict.reliable and "diverges at once" in verdict.reason
    early_low = [2.0, 1.0, *[1.0 + 0.2 * i for i in range(1, 39)]]
    assert "diverges at once" in judge_lr_curve(LRS[:40], early_low, LRS[5]).reason


def test_a_noisy_curve_is_unreliable():
    rng = np.random.default_rng(1)
    noisy = list(np.linspace(2.3, 2.0, 100) + rng.normal(0, 0.4, 100))
    noisy[0] = 2.3
    verdict = judge_lr_curve(LRS, noisy, suggestion=1e-3)
    assert not verdict.reliable and "noise" in verdict.reason


def test_short_curves_missing_or_edge_suggestions_are_unreliable():
    assert "points" in judge_lr_curve(LRS[:5], _good_curve()[:5], 1e-6).reason
    assert "no suggestion" in judge_lr_curve(LRS, _good_curve(), None).reason
    assert "end of the sweep" in judge_lr_curve(LRS, _good_curve(), 1.2e-7).reason
    nan_first = [math.nan, *_good_curve()[1:]]
    assert "not finite" in judge_lr_curve(LRS, nan_first, 1e-3).reason


def test_a_curve_cut_short_by_divergence_is_read_up_to_the_first_nan():
    curve = _good_curve()[:80] + [math.inf] * 20
    assert judge_lr_curve(LRS, curve, 3e-3).reliable


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="same length"):
        judge_lr_curve([1e-3, 1e-2], [1.0])
    with pytest.raises(ValueError, match="positive learning rates"):
        judge_lr_curve([0.0] * 10, [1.0] * 10)
    with pytest.raises(TypeError, match="sequences of numbers"):
        judge_lr_curve("abc", "def")
    with pytest.raises(TypeError, match="sequences of numbers"):
        judge_lr_curve([None] * 3, [1.0] * 3)
