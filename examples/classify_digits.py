"""Classify scikit-learn's handwritten digits (ships with the package: no download).

A small CNN on 8x8 digit images, trained with SGD + momentum and a cosine schedule;
validation after every epoch, the best checkpoint kept, early stopping, TensorBoard
logs, ``history.json`` and a PNG of the curves under ``--output-dir``; the held-out
test split is evaluated at the end.

Run it as::

    python examples/classify_digits.py                       # one process
    python examples/classify_digits.py --nproc 2             # two processes (gloo)
    torchrun --nproc_per_node=2 examples/classify_digits.py  # the same under torchrun
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch
from ignite.engine import Events
from torch import nn

import ignitrain
from ignitrain import TrainConfig, datasets

__all__ = ["DigitsCNN", "main", "run"]


class DigitsCNN(nn.Module):
    """Two 3x3 conv blocks and a linear head: ~30k parameters, > 97% on digits."""

    def __init__(self, channels: int = 32, num_classes: int = 10, dropout: float = 0.2):
        super().__init__()
        self.channels, self.num_classes, self.dropout = channels, num_classes, dropout
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels * 16, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="runs/digits")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--nproc", type=int, default=None, help="spawn N processes (gloo)")
    parser.add_argument("--resume", default=None, help="'latest' or a checkpoint path")
    return parser.parse_args()


def run(local_rank: int, args: argparse.Namespace) -> None:
    splits = datasets.digits(seed=0)  # the same split on every rank
    config = TrainConfig(
        num_epochs=args.epochs,
        optimizer="sgd",
        lr=0.05,
        momentum=0.9,
        weight_decay=5e-4,
        batch_size=64,
        lr_scheduler="cosine",
        warmup_steps=20,
        early_stopping_patience=6,
        best_metric="accuracy",
        output_dir=args.output_dir,
        resume=args.resume,
        seed=0,
    )
    torch.manual_seed(0)  # the same initial weights in every process and every run
    trainer = ignitrain.create_classification_trainer(DigitsCNN(), config, splits.train, splits.val)

    @trainer.engine.on(Events.COMPLETED)  # plain Ignite: add whatever you like
    def announce(engine):
        logging.getLogger("ignitrain").info("finished at epoch %d", engine.state.epoch)

    start = time.perf_counter()
    history = trainer.train()
    elapsed = time.perf_counter() - start
    metrics = trainer.evaluate(splits.test)  # reduced over processes: same on every rank
    if local_rank == 0:
        out = Path(args.output_dir)
        history.plot(out / "history.png")
        print(
            f"best val accuracy {history.best('val/accuracy'):.4f} | "
            f"test accuracy {metrics['accuracy']:.4f} | test loss {metrics['loss']:.4f} | "
            f"{elapsed:.1f}s training | outputs in {out}"
        )


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args()
    ignitrain.launch(run, args, nproc_per_node=args.nproc)


if __name__ == "__main__":
    main()
