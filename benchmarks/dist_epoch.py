"""Time per epoch of the digits example on 1 process against 2 gloo processes.

The model and training set-up of ``examples/classify_digits.py`` (its ``DigitsCNN``,
SGD + momentum, cosine schedule, batch 64, validation each epoch, checkpoints,
History and TensorBoard into a temporary ``output_dir``), launched through
``ignitrain.launch`` with ``nproc_per_node`` 1 (no process group: the plain
single-process path) and 2 (two spawned processes, gloo, DDP). The two set-ups are
interleaved round by round so drift of the machine spreads over both.

What is measured, on rank 0: the wall time of each epoch (training, validation and
every epoch-end handler; the first epoch of each run is discarded: it pays for lazy
set-up and DDP's first buckets) -- the table shows the median -- and the whole
``launch`` call (process start-up, imports and process-group set-up included).

Each process gets ``cores // nproc`` intra-op threads by default, as ``launch`` gives
spawned processes (``--threads`` to fix one figure for all): on 2 cores that is 1 process
with 2 threads against 2 processes with 1 thread each; two processes with two threads
each would only measure oversubscription. On a 2-core machine no speed-up is expected: the figure
shows what data-parallel costs here (gradient all-reduce, metric reduction, rank
agreement), not how it scales.

Usage::

    python benchmarks/dist_epoch.py                 # 2 rounds x 4 epochs per set-up
    python benchmarks/dist_epoch.py --quick         # smoke run: 1 round x 2 epochs
    python benchmarks/dist_epoch.py --threads 1      # one thread per process everywhere
    python benchmarks/dist_epoch.py --nprocs 1,2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

_HERE = Path(__file__).resolve().parent
# Spawned processes import this module again: the paths must be set at import time.
sys.path.insert(0, str(_HERE))
sys.path.insert(0, str(_HERE.parent / "examples"))
import _common as common  # noqa: E402
import _report as report  # noqa: E402

__all__ = ["main", "run_worker"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run (first discarded)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
    parser.add_argument("--nprocs", default="1,2", help="comma-separated process counts")
    parser.add_argument(
        "--threads", type=int, default=None, help="intra-op threads per process (cores // nproc)"
    )
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round x 2 epochs")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.epochs = 1, 2
    try:
        args.nproc_list = [int(n) for n in args.nprocs.split(",") if n.strip()]
    except ValueError:
        parser.error(f"--nprocs must be integers separated by commas, got {args.nprocs!r}")
    if not args.nproc_list or min(args.nproc_list) < 1:
        parser.error(f"--nprocs must list counts >= 1, got {args.nprocs!r}")
    if args.epochs < 2:
        parser.error(f"--epochs must be >= 2 (the first is discarded), got {args.epochs}")
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    return args


def run_worker(local_rank: int, epochs: int, threads: int, out_dir: str, result_path: str) -> None:
    """One process of the job: the example's set-up, epochs timed on rank 0."""
    import ignite.distributed as idist
    from classify_digits import DigitsCNN

    import ignitrain
    from ignitrain import TrainConfig, datasets

    common.configure(threads)
    splits = datasets.digits(seed=0)
    config = TrainConfig(
        num_epochs=epochs,
        optimizer="sgd",
        lr=0.05,
        momentum=0.9,
        weight_decay=5e-4,
        batch_size=64,
        lr_scheduler="cosine",
        warmup_steps=20,
        best_metric="accuracy",
        output_dir=out_dir,
        progress_bar=False,
        seed=0,
    )
    torch.manual_seed(0)
    trainer = ignitrain.create_classification_trainer(DigitsCNN(), config, splits.train, splits.val)
    clock = common.LapClock()
    common.attach_lap_clock(trainer.engine, clock)  # last: laps include every handler
    trainer.train()
    if idist.get_rank() == 0:
        state = trainer.engine.state
        record = {
            "epoch_seconds": clock.result.laps,
            "epoch_cpu_seconds": clock.result.cpu_laps,
            "steps_per_epoch": state.epoch_length,
            "world_size": idist.get_world_size(),
            "threads": torch.get_num_threads(),
            "val_accuracy": float(trainer.history.latest("val/accuracy")),
        }
        Path(result_path).write_text(json.dumps(record))


def run_once(nproc: int, args: argparse.Namespace) -> dict[str, Any]:
    """Launch one training job with ``nproc`` processes; what rank 0 measured."""
    import ignitrain

    threads = args.threads or max(1, (os.cpu_count() or 1) // nproc)
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-dist{nproc}-"))
    result_path = tmp / "result.json"
    try:
        start = time.perf_counter()
        ignitrain.launch(
            run_worker,
            args.epochs,
            threads,
            str(tmp / "run"),
            str(result_path),
            backend="gloo" if nproc > 1 else None,
            nproc_per_node=nproc,
            threads_per_process=threads,
        )
        record = json.loads(result_path.read_text())
        record["launch_seconds"] = time.perf_counter() - start
        return record
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    common.configure(None)
    print(
        f"dist_epoch: DigitsCNN on digits, global batch 64, {args.rounds} round(s) x "
        f"{args.epochs} epochs per set-up, {os.cpu_count()} cores"
    )
    records: dict[int, list[dict[str, Any]]] = {n: [] for n in args.nproc_list}
    for r in range(args.rounds):
        # Alternate which set-up goes first so neither always runs on a warmer machine.
        order = args.nproc_list if r % 2 == 0 else list(reversed(args.nproc_list))
        for nproc in order:
            records[nproc].append(run_once(nproc, args))
        print(f"  round {r + 1}/{args.rounds}: nproc {' -> '.join(map(str, order))}")

    rows = []
    for nproc, recs in records.items():
        epochs = [t for rec in recs for t in rec["epoch_seconds"][1:]]
        cpu = [t for rec in recs for t in rec["epoch_cpu_seconds"][1:]]
        rows.append(
            {
                "nproc": nproc,
                "threads": recs[0]["threads"],
                "steps": recs[0]["steps_per_epoch"],
                "epoch_ms": 1e3 * statistics.median(epochs),
                "epoch_min_ms": 1e3 * min(epochs),
                "cpu_ms": 1e3 * statistics.median(cpu),
                "launch_s": statistics.median(rec["launch_seconds"] for rec in recs),
                "val_acc": recs[-1]["val_accuracy"],
            }
        )
    base = rows[0]["epoch_ms"]
    for row in rows:
        row["ratio"] = row["epoch_ms"] / base
    report.print_table(
        rows,
        [
            ("nproc", "processes", ""),
            ("threads", "threads/proc", ""),
            ("steps", "steps/epoch/rank", ""),
            ("epoch_ms", "epoch ms (median)", ".1f"),
            ("epoch_min_ms", "min", ".1f"),
            ("ratio", f"x {rows[0]['nproc']} proc", ".3f"),
            ("cpu_ms", "rank-0 cpu ms", ".1f"),
            ("launch_s", "launch s", ".2f"),
            ("val_acc", "val acc", ".4f"),
        ],
        note="epoch ms: wall time of an epoch on rank 0 (train + validation + handlers), first "
        "epoch of each run discarded; launch s: the whole launch() call",
    )
    payload = {
        "benchmark": "dist_epoch",
        "settings": {k: v for k, v in vars(args).items()},
        "machine": common.machine_info(torch.get_num_threads()),
        "results": rows,
        "raw": {str(n): recs for n, recs in records.items()},
    }
    report.save_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
