"""Small models that the example scripts and the CLI job configs refer to by import path.

A job config names a model as ``{class: examples.models.DigitsCNN, args: {...}}``;
``ignitrain`` imports ``examples.models`` from the directory it runs in, so run the
CLI from the repository root. Every model keeps its constructor arguments as
attributes of the same name, so a checkpoint's model description (class + args) is
enough to rebuild it for inference.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MLP", "DigitsMLP", "DigitsCNN", "DiabetesMLP"]


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Argument {name} must be a positive integer, got {value!r}")


def _check_dropout(dropout: object) -> None:
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"Argument dropout must be a number in [0, 1), got {dropout!r}")


class MLP(nn.Module):
    """Flatten, then ``depth`` hidden layers of ``hidden`` units with ReLU, then a linear head.

    Args:
        in_features: Inputs per sample (after flattening).
        out_features: Outputs per sample (classes for classification, targets for
            regression).
        hidden: Units per hidden layer.
        depth: Number of hidden layers (0: a linear model).
        dropout: Dropout after each hidden layer.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: int = 64,
        depth: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            _check_positive(name, value)
        _check_positive("hidden", hidden)
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            raise ValueError(f"Argument depth must be an integer >= 0, got {depth!r}")
        _check_dropout(dropout)
        self.in_features, self.out_features = in_features, out_features
        self.hidden, self.depth, self.dropout = hidden, depth, dropout
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = hidden
        layers.append(nn.Linear(width, out_features))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DigitsMLP(MLP):
    """An MLP for the 8x8 digits (64 inputs, flat or as images) -> 10 class logits."""

    def __init__(self, hidden: int = 64, depth: int = 1, dropout: float = 0.0) -> None:
        super().__init__(64, 10, hidden=hidden, depth=depth, dropout=dropout)


class DigitsCNN(nn.Module):
    """Two 3x3 conv blocks with batch norm and a linear head for ``(N, 1, 8, 8)`` digits.

    The head sees the whole 4x4 feature map: an earlier version pooled it to 1x1 and
    lost where the strokes are (it early-stopped near 42% validation accuracy).

    Args:
        channels: Channels of both convolutions.
        dropout: Dropout before the head.
    """

    def __init__(self, channels: int = 16, dropout: float = 0.0) -> None:
        super().__init__()
        _check_positive("channels", channels)
        _check_dropout(dropout)
        self.channels, self.dropout = channels, dropout
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels * 16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class DiabetesMLP(MLP):
    """An MLP for the diabetes regression data: 10 features -> 1 target, shape ``(N, 1)``."""

    def __init__(self, hidden: int = 32, depth: int = 1, dropout: float = 0.0) -> None:
        super().__init__(10, 1, hidden=hidden, depth=depth, dropout=dropout)
