"""Workers of the 2-process tests of ``predict`` and EMA (run through ``ignitrain.launch``)."""

from __future__ import annotations

import json
import os

import ignite.distributed as idist
import torch

import ignitrain
from ignitrain import TrainConfig, datasets
from tests.conftest import make_mlp


def predict_worker(local_rank: int, out_dir: str) -> None:
    """Train 1 epoch on 2 ranks, predict the 7-sample-odd val split, record per rank."""
    torch.set_num_threads(1)
    data = datasets.digits(seed=0, image=False)
    config = TrainConfig(num_epochs=1, batch_size=32, progress_bar=False, seed=0)
    trainer = ignitrain.create_classification_trainer(make_mlp(), config, data.train)
    subset = torch.utils.data.Subset(data.val, range(101))  # odd: ranks hold 51 and 50
    preds, targets = trainer.predict(subset, return_targets=True)
    # a DistributedSampler loader pads rank 1 with sample 0: predict must drop it
    sampler = torch.utils.data.DistributedSampler(subset, shuffle=False)
    padded = torch.utils.data.DataLoader(subset, batch_size=16, sampler=sampler)
    from_padded = trainer.predict(padded)
    # rank 0's model: the reference computed in one process by the test
    if idist.get_rank() == 0:
        torch.save(trainer.model.state_dict(), os.path.join(out_dir, "model.pt"))
    record = {
        "rank": idist.get_rank(),
        "shape": list(preds.shape),
        "targets": targets.tolist(),
        "preds_sum": float(preds.sum()),
        "padded_shape": list(from_padded.shape),
        "padded_diff": float((preds - from_padded).abs().max()),
    }
    torch.save(preds, os.path.join(out_dir, f"preds{idist.get_rank()}.pt"))
    with open(os.path.join(out_dir, f"rank{idist.get_rank()}.json"), "w") as fh:
        json.dump(record, fh)


def ema_worker(local_rank: int, out_dir: str) -> None:
    """2 epochs with EMA on 2 ranks: every rank's EMA weights, and the EMA metrics."""
    torch.set_num_threads(1)
    data = datasets.digits(seed=0, image=False)
    config = TrainConfig(
        num_epochs=2, batch_size=32, progress_bar=False, seed=0, ema_decay=0.9,
        output_dir=out_dir,
    )  # fmt: skip
    trainer = ignitrain.create_classification_trainer(make_mlp(), config, data.train, data.val)
    history = trainer.train()
    ema = trainer.checkpointables["ema"].ema_model
    flat = torch.cat([p.detach().flatten() for p in ema.parameters()])
    torch.save(flat, os.path.join(out_dir, f"ema{idist.get_rank()}.pt"))
    with open(os.path.join(out_dir, f"ema_rank{idist.get_rank()}.json"), "w") as fh:
        json.dump({"ema_acc": history["ema/val/accuracy"], "acc": history["val/accuracy"]}, fh)
