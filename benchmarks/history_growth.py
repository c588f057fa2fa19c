"""Epoch-end time against the run's length: does the per-epoch cost grow with the run?

A real ``create_classification_trainer`` run (MLP width 128, batch 64, 25-step epochs,
validation, History with ``log_every=1``, TensorBoard, a checkpoint each epoch, into a
temporary ``output_dir``) starts with a History that already holds ``N`` logged
iterations (``train/batch_loss`` and ``lr`` each: ``2 N`` values, at negative steps so
the run appends after them), as a run that has trained ``N`` iterations would.

Measured per epoch, the lengths interleaved over rounds (see :func:`measure`): from
the end of the epoch's last iteration (after every ``ITERATION_COMPLETED`` handler) to
the end of its last ``EPOCH_COMPLETED`` handler (validation, History, checkpoint, ...).
The first epoch of each run writes the whole journal once and is not counted; the
median and range of the later epochs are reported, in wall time and in the training
thread's CPU time (``time.thread_time``: what the epoch end costs the training thread,
without the time other processes on a shared machine take).

"History part": the History's own share of the epoch end, timed alone 200 times (one
epoch's 50 values appended to the journal, its checkpoint state ``torch.save``-d).
A short untimed run first pays for imports and first calls.
For reference, the same History's whole serialisation (``json.dumps`` of
``to_dict()`` and ``torch.save`` of it: what writing ``history.json`` and putting the
values into each checkpoint cost per epoch before the journal) is timed beside it.

Usage::

    python benchmarks/history_growth.py                  # 2k, 20k, 200k, 1M
    python benchmarks/history_growth.py --lengths 2000,20000 --epochs 3
"""

from __future__ import annotations

import argparse
import io
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

__all__ = ["epoch_end_times", "full_serialisation_ms", "measure", "main"]

DEFAULT_LENGTHS = (2_000, 20_000, 200_000, 1_000_000)


def _prefilled(history: Any, logged: int) -> None:
    for step in range(-logged, 0):
        history.log("train/batch_loss", 0.5 + (step % 7) * 1e-3, step)
        history.log("lr", 1e-3, step)


def epoch_end_times(
    logged: int, *, epochs: int = 4, steps: int = 25, width: int = 128, seed: int = 0
) -> dict[str, Any]:
    """Epoch-end seconds of each epoch after the first, for a History of ``logged``
    iterations; plus the end-of-run ``history.json`` write."""
    from ignite.engine import Events

    import ignitrain
    from ignitrain import TrainConfig

    train_ds, val_ds = common.digits_datasets(seed=seed)
    out_dir = Path(tempfile.mkdtemp(prefix="bench-history-"))
    try:
        config = TrainConfig(
            num_epochs=epochs,
            optimizer="adam",
            lr=1e-3,
            batch_size=64,
            device="cpu",
            seed=seed,
            log_every=1,
            progress_bar=False,
            output_dir=str(out_dir),
        )
        trainer = ignitrain.create_classification_trainer(
            common.make_mlp(width, seed=seed), config, common.tiled(train_ds, steps, 64), val_ds
        )
        _prefilled(trainer.history, logged)
        marks: dict[str, float] = {}
        ends: list[float] = []
        cpu_ends: list[float] = []

        def last_iteration(engine: Any) -> None:
            marks["iter"], marks["cpu"] = time.perf_counter(), time.thread_time()

        def epoch_done(engine: Any) -> None:
            ends.append(time.perf_counter() - marks["iter"])
            cpu_ends.append(time.thread_time() - marks["cpu"])

        def completed(engine: Any) -> None:
            marks["done"] = time.perf_counter()

        engine = trainer.engine
        engine.add_event_handler(Events.ITERATION_COMPLETED, last_iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, epoch_done)
        t0 = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - t0
        return {
            "logged": logged,
            "epoch_end_s": ends[1:],
            "epoch_end_cpu_s": cpu_ends[1:],
            "first_epoch_end_s": ends[0],
            "run_s": total,
            "journal_mb": (out_dir / "history.jsonl").stat().st_size / 2**20,
        }
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def full_serialisation_ms(logged: int) -> float:
    """What the whole History cost per epoch before the journal: ``history.json`` text
    and the values inside the checkpoint."""
    from ignitrain import History

    history = History()
    _prefilled(history, logged)
    t0 = time.perf_counter()
    json.dumps(history.to_dict(), allow_nan=True)
    torch.save({"history": history.to_dict()}, io.BytesIO())
    return 1e3 * (time.perf_counter() - t0)


def history_part_ms(logged: int, repeats: int = 200) -> list[float]:
    """The History's own epoch-end work in a run of ``logged`` iterations: one epoch's
    records (25 iterations) appended to the journal, and its checkpoint state saved."""
    from ignitrain import History

    out_dir = Path(tempfile.mkdtemp(prefix="bench-journal-"))
    try:
        history = History()
        history.journal_to(out_dir / "history.jsonl")
        _prefilled(history, logged)
        history.flush()  # the run so far is on disk
        times = []
        for r in range(repeats):
            for i in range(25):
                history.log("train/batch_loss", 0.5, r * 25 + i)
                history.log("lr", 1e-3, r * 25 + i)
            t0 = time.perf_counter()
            history.flush()  # what the epoch end does (the fsync runs on the checkpoint writer)
            torch.save({"history": history.state_dict()}, io.BytesIO())
            times.append(1e3 * (time.perf_counter() - t0))
        history.close()
        return times
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def measure(
    lengths: tuple[int, ...] = DEFAULT_LENGTHS, epochs: int = 12, rounds: int = 4
) -> list[dict]:
    """One row per length: epoch-end median and range (ms), and the old full cost.

    The lengths are interleaved: ``rounds`` rounds, each running every length once in
    a shuffled order (seeded) for ``max(1, epochs // rounds) + 1`` epochs (the first
    one not counted), so that a shared machine slowing down over the minutes this takes falls
    on every length alike. Run one after another, a 1M-iteration run measured last
    once read 1.21x the first while its History part stayed flat (0.99x).
    """
    epoch_end_times(min(lengths), epochs=2)  # warm-up: imports, first calls
    history_part_ms(min(lengths), repeats=20)
    per_run = max(1, epochs // rounds) + 1
    ends: dict[int, list[float]] = {n: [] for n in lengths}
    cpu: dict[int, list[float]] = {n: [] for n in lengths}
    journal_mb: dict[int, float] = {}
    rng = random.Random(0)
    for _ in range(rounds):
        order = list(lengths)
        rng.shuffle(order)
        for logged in order:
            got = epoch_end_times(logged, epochs=per_run)
            ends[logged] += [1e3 * t for t in got["epoch_end_s"]]
            cpu[logged] += [1e3 * t for t in got["epoch_end_cpu_s"]]
            journal_mb[logged] = got["journal_mb"]
    rows = []
    for logged in lengths:
        part = history_part_ms(logged)
        rows.append(
            {
                "logged": logged,
                "epoch_end_ms": statistics.median(ends[logged]),
                "min_ms": min(ends[logged]),
                "max_ms": max(ends[logged]),
                "epochs": len(ends[logged]),
                "cpu_ms": statistics.median(cpu[logged]),
                "cpu_min_ms": min(cpu[logged]),
                "cpu_max_ms": max(cpu[logged]),
                "history_ms": statistics.median(part),
                "history_min_ms": min(part),
                "history_max_ms": max(part),
                "journal_mb": journal_mb[logged],
                "full_serialisation_ms": full_serialisation_ms(logged),
            }
        )
    base, base_part = rows[0]["epoch_end_ms"], rows[0]["history_ms"]
    base_cpu = rows[0]["cpu_ms"]
    for row in rows:
        row["x_shortest"] = row["epoch_end_ms"] / base
        row["cpu_x_shortest"] = row["cpu_ms"] / base_cpu
        row["history_x_shortest"] = row["history_ms"] / base_part
    return rows


def format_rows(rows: list[dict]) -> str:
    return common.format_table(
        rows,
        [
            ("logged", "logged iterations", ","),
            ("epoch_end_ms", "epoch end ms (median)", ".2f"),
            ("min_ms", "min", ".2f"),
            ("max_ms", "max", ".2f"),
            ("x_shortest", "x 1st", ".3f"),
            ("cpu_ms", "training-thread CPU ms", ".2f"),
            ("cpu_min_ms", "min", ".2f"),
            ("cpu_max_ms", "max", ".2f"),
            ("cpu_x_shortest", "x 1st", ".3f"),
            ("history_ms", "History part ms", ".3f"),
            ("history_min_ms", "min", ".3f"),
            ("history_max_ms", "max", ".3f"),
            ("history_x_shortest", "x 1st", ".3f"),
            ("journal_mb", "journal MiB", ".1f"),
            ("full_serialisation_ms", "old: whole History ms", ".1f"),
        ],
    )


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default=",".join(map(str, DEFAULT_LENGTHS)))
    parser.add_argument(
        "--epochs", type=int, default=12, help="counted epochs per length, over all rounds"
    )
    parser.add_argument("--rounds", type=int, default=4, help="rounds over the lengths")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.rounds < 1:
        parser.error(f"--epochs and --rounds must be >= 1, got {args.epochs}, {args.rounds}")
    common.configure(args.threads)
    lengths = tuple(int(n) for n in args.lengths.split(","))
    rows = measure(lengths, epochs=args.epochs, rounds=args.rounds)
    print(format_rows(rows))
    return rows


if __name__ == "__main__":
    main()
