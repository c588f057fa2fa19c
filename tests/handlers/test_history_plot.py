"""History.plot's best-epoch mark and argument checks."""

import math

import pytest

from ignitrain import History
from ignitrain.handlers.history_plot import best_point, plot_history


def _history():
    h = History()
    for epoch, (acc, loss) in enumerate([(0.5, 1.0), (0.9, 0.4), (0.9, 0.5), (math.nan, 0.7)], 1):
        h.log("val/accuracy", acc, epoch)
        h.log("val/loss", loss, epoch)
        h.log("train/loss", loss + 0.1, epoch)
    return h


def test_best_point_is_the_first_epoch_reaching_the_best_value():
    h = _history()
    assert best_point(h, None, None) == (2, "val/accuracy", 0.9)  # first val/ series, max
    assert best_point(h, "val/loss", None) == (2, "val/loss", 0.4)  # a loss: min
    assert best_point(h, "val/loss", 4) == (4, "val/loss", 0.7)  # the epoch asked for
    assert best_point(h, "missing", None) is None
    assert best_point(History(), None, None) is None


def test_plot_history_writes_a_png_and_checks_its_arguments(tmp_path):
    pytest.importorskip("matplotlib")
    path = plot_history(_history(), tmp_path / "plots" / "h.png", columns=2)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="columns=0 is not allowed"):
        plot_history(_history(), tmp_path / "x.png", columns=0)
    with pytest.raises(ValueError, match="history is empty"):
        plot_history(History(), tmp_path / "x.png")
