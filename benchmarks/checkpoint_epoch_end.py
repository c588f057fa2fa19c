"""Training-thread time of checkpointing per epoch end (issue 16 item 3).

``create_classification_trainer`` defaults (MLP width 128, batch 64, 25-step epochs, 10
epochs, validation each epoch, a periodic and a best checkpoint per epoch, background
store); every handler the checkpoint handler registers outside ITERATION_* events is
timed with ``time.thread_time()`` (CPU of the training thread only) and wall time.
Per run: the median over epochs 2-9; printed: the median over ``ROUNDS`` runs.

Usage::

    python benchmarks/checkpoint_epoch_end.py [ROUNDS]
"""

import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402
import torch  # noqa: E402

import ignitrain  # noqa: E402
from ignitrain import TrainConfig  # noqa: E402

torch.set_num_threads(1)


def one_round(epochs=10, steps=25, width=128):
    train_ds, val_ds = common.digits_datasets(seed=0)
    train_ds = common.tiled(train_ds, steps, 64)
    out = Path(tempfile.mkdtemp(prefix="ckpt-ee-"))
    config = TrainConfig(
        num_epochs=epochs,
        optimizer="adam",
        lr=1e-3,
        batch_size=64,
        device="cpu",
        seed=0,
        progress_bar=False,
        output_dir=str(out),
    )
    model = common.make_mlp(width, seed=0)
    trainer = ignitrain.create_classification_trainer(model, config, train_ds, val_ds)
    h = trainer.checkpoints
    per_epoch = {}

    def wrap(fn):
        def timed(engine, *a):
            t, w = time.thread_time(), time.perf_counter()
            try:
                return fn(engine, *a)
            finally:
                ep = h.engine.state.epoch
                c, wall = per_epoch.get(ep, (0.0, 0.0))
                per_epoch[ep] = (c + time.thread_time() - t, wall + time.perf_counter() - w)

        timed.__name__ = getattr(fn, "__name__", "x")
        return timed

    for i, (engine, event, fn) in enumerate(list(h._handlers)):
        if "ITERATION" in str(event):
            continue
        engine.remove_event_handler(fn, event)
        w = wrap(fn)
        engine.add_event_handler(event, w)
        h._handlers[i] = (engine, event, w)
    trainer.train()
    shutil.rmtree(out, ignore_errors=True)
    # epochs 2..epochs-1 (skip the first: warm-up; the last: COMPLETED/last file)
    return (
        statistics.median(per_epoch[e][0] for e in range(2, epochs)),
        statistics.median(per_epoch[e][1] for e in range(2, epochs)),
    )


if __name__ == "__main__":
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    res = [one_round() for _ in range(rounds)]
    for k, name in ((0, "CPU (thread_time)"), (1, "wall")):
        meds = [r[k] for r in res]
        med, low, high = statistics.median(meds) * 1e3, min(meds) * 1e3, max(meds) * 1e3
        print(
            f"per-epoch-end training-thread {name} ms: median {med:.2f} "
            f"(min {low:.2f}, max {high:.2f}) over {rounds} rounds"
        )
