"""Does EMA help on digits? Raw weights against their EMA, in the same runs.

Each run trains a small MLP on scikit-learn's digits (no download) with SGD at a high
learning rate (where averaging has noise to remove) and ``ema_decay``; the validation
and test sets are evaluation sets of the same run, so ``test/accuracy`` (raw weights)
and ``ema/test/accuracy`` (EMA weights) come from one trajectory. Printed: per seed the
final test accuracy and loss of both, and the mean over seeds.

Usage::

    python benchmarks/ema_digits.py                    # 3 seeds, 20 epochs, decay 0.98
    python benchmarks/ema_digits.py --seeds 5 --decay 0.99 --lr 0.3
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch import nn

import ignitrain
from ignitrain import TrainConfig, datasets

__all__ = ["main"]


def run(seed: int, args: argparse.Namespace) -> dict[str, float]:
    data = datasets.digits(seed=0, image=False)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 10))
    config = TrainConfig(
        num_epochs=args.epochs, optimizer="sgd", lr=args.lr, momentum=0.9, batch_size=32,
        seed=seed, progress_bar=False, ema_decay=args.decay, ema_warmup=args.warmup,
        eval_every={"test": "end"},
    )  # fmt: skip
    sets = {"val": data.val, "test": data.test}
    trainer = ignitrain.create_classification_trainer(model, config, data.train, sets)
    h = trainer.train()
    return {k: h.latest(k) for k in ("test/accuracy", "ema/test/accuracy", "test/loss",
                                     "ema/test/loss")}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.2)
    parser.add_argument("--decay", type=float, default=0.98)
    parser.add_argument("--warmup", type=int, default=50)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = [run(seed, args) for seed in range(args.seeds)]
    print(f"digits MLP, SGD lr {args.lr}, {args.epochs} epochs, ema_decay {args.decay}")
    print("seed  test acc  ema test acc  test loss  ema test loss")
    for seed, r in enumerate(rows):
        print(f"{seed:4d}  {r['test/accuracy']:.4f}    {r['ema/test/accuracy']:.4f}        "
              f"{r['test/loss']:.4f}     {r['ema/test/loss']:.4f}")  # fmt: skip
    mean = {k: statistics.mean(r[k] for r in rows) for k in rows[0]}
    print(f"mean  {mean['test/accuracy']:.4f}    {mean['ema/test/accuracy']:.4f}        "
          f"{mean['test/loss']:.4f}     {mean['ema/test/loss']:.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
