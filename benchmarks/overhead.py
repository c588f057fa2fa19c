"""Per-step overhead of ignitrain against a hand-written loop and plain Ignite.

The same tiny MLP (``--width``, default 128) is trained with Adam (lr 1e-3) at batch 64
on scikit-learn's digits (80/20 split, no download), in one process, with
``torch.set_num_threads(--threads)``. Runners, interleaved round by round in an order
shuffled with a fixed seed (``--rounds`` rounds after one discarded warm-up round, each
runner ``--epochs`` epochs per round, a fresh model each round):

``hand``
    A hand-written loop: train (``loss.item()`` every step, as a script that logs the
    loss does), then evaluate accuracy and loss on the validation set, every epoch.
``hand_ckpt``
    The same loop plus a bare ``torch.save`` of model and optimizer state each epoch
    (what a script that checkpoints without fsync or rotation pays).
``ignite``
    Plain Ignite: ``create_supervised_trainer`` + ``create_supervised_evaluator``
    (``Accuracy``, ``Loss``), validation each epoch, a ``RunningAverage`` of the loss,
    TensorBoard (batch loss and LR every 10 iterations, validation metrics each
    epoch) and, when checkpointing is on, a ``ModelCheckpoint`` each epoch plus a best
    ``ModelCheckpoint`` on accuracy, written to a temporary directory.
``ignitrain``
    ``create_classification_trainer`` with its defaults (History, TensorBoard, epoch
    checkpoint and best checkpoint, ``history.json``) into a temporary ``output_dir``;
    ``progress_bar=False`` (not a terminal anyway).
``ignitrain_nodir``
    The same with ``output_dir=None`` (nothing written to disk): separates the cost of
    the engine and handlers from the cost of files.

Sections (``--sections``, all by default), in one run:

``ratios``
    Each scenario ``STEPSxWIDTH`` of ``--scenarios`` (default 200- and 25-step epochs at
    width 128, 200 at 512, 25 at 2048; the train split is tiled to ``STEPS`` full
    batches): every runner, interleaved round by round. For each epoch, its wall time
    (training, validation and every handler that runs at its end) divided by its
    training steps; "ms/step" is the median over all timed epochs with its quartiles;
    "x hand" the median over rounds of (the runner's median epoch / ``hand``'s in the
    same round) with its [min, max] over rounds and a 95% bootstrap confidence interval
    of that median; "x hand_ckpt" the same against ``hand_ckpt``, the loop that does the
    same work as the defaults (validation and a checkpoint each epoch); "cpu" the same
    as "x hand" from this process's CPU time (all its threads), less sensitive to other
    processes on a shared machine;
    "run x hand" the whole ``run()``/``train()`` call (start and completion handlers,
    e.g. the final checkpoint). Building the trainer is not timed. Wider models run
    fewer epochs per round (``--epochs`` x 128 / width, at least 1) in proportionally
    more rounds, so that every scenario times the same number of epochs per runner
    (``--rounds`` x ``--epochs``).
``handlers``
    Ignite's ``HandlersTimeProfiler`` on ``--rounds`` ``ignitrain`` runs of the first
    scenario (after ``--warmup-rounds``): each handler's CPU time (training thread) per
    training step, median over runs with [min, max], the process function (the step)
    and data loading.
``growth``
    Epoch-end time against the run's length (``history_growth.py``): a History of
    2k, 20k, 200k and 1M logged iterations.
``memory``
    Peak RSS above the pre-run level, each runner alone in a fresh process, one
    25-step epoch at ``--memory-width`` (2048).

glibc's allocator is pinned for the whole run (``--malloc pinned``, the default): the
process re-executes itself with ``MALLOC_MMAP_THRESHOLD_`` = 32 MiB and
``MALLOC_TRIM_THRESHOLD_`` = 256 MiB. With glibc's dynamic thresholds the same training
loop took from 0 to 162 minor page faults per step at width 512 (about 3 us each),
depending on which large blocks the process had freed before: noise that falls on
whichever runner comes next, not a cost of that runner. ``--malloc default`` keeps
glibc's own behaviour.

Usage::

    python benchmarks/overhead.py                    # everything (tens of minutes)
    python benchmarks/overhead.py --json out.json    # also write the figures
    python benchmarks/overhead.py --sections ratios --scenarios 200x128
    python benchmarks/overhead.py --no-checkpoint    # checkpointing off in every runner
    python benchmarks/overhead.py --quick            # smoke run (about a minute)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402
import _report as report  # noqa: E402

__all__ = ["main", "build_runners"]


DEFAULT_SCENARIOS = "200x128,25x128,200x512,25x2048"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scenarios",
        default=DEFAULT_SCENARIOS,
        help="comma-separated STEPSxWIDTH: training steps per epoch (0: the digits split "
        "as it is, 23 steps) and MLP hidden width",
    )
    parser.add_argument("--width", type=int, help="one scenario: this width (steps: --steps)")
    parser.add_argument("--steps", type=int, help="one scenario: steps per epoch")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--epochs",
        type=int,
        default=3,
        help="epochs per runner per round at width <= 128 (fewer at larger widths, >= 1)",
    )
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds")
    parser.add_argument("--warmup-rounds", type=int, default=1, help="discarded rounds")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0, help="runner order and model init")
    parser.add_argument(
        "--no-checkpoint",
        action="store_true",
        help="no checkpoints in any runner (ignitrain: save_every=0, save_best=False)",
    )
    parser.add_argument(
        "--runners",
        default="hand,hand_ckpt,ignite,ignitrain,ignitrain_nodir",
        help="comma-separated subset of hand,hand_ckpt,ignite,ignitrain,ignitrain_nodir",
    )
    parser.add_argument(
        "--sections",
        default="ratios,handlers,growth,memory",
        help="comma-separated subset of ratios,handlers,growth,memory",
    )
    parser.add_argument(
        "--growth-lengths",
        default="2000,20000,200000,1000000",
        help="logged iterations for the epoch-end-against-run-length section",
    )
    parser.add_argument("--memory-width", type=int, default=2048)
    parser.add_argument(
        "--malloc",
        choices=("pinned", "default"),
        default="pinned",
        help="pinned: fixed glibc mmap/trim thresholds for every runner (see above)",
    )
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument(
        "--set", metavar="KEY=VALUE", action="append", default=[],
        help="a TrainConfig option of the ignitrain runners (VALUE read as YAML), e.g. "
        "ema_decay=0.999, profile=true, mlflow=true: what a feature costs, on vs off",
    )  # fmt: skip
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run (seconds): 2 rounds x 1 epoch, short scenarios, small histories",
    )
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.epochs, args.warmup_rounds = 2, 1, 1
        args.scenarios = "25x128,25x512"
        args.growth_lengths = "2000,20000"
        args.memory_width = 512
    if args.width is not None or args.steps is not None:
        args.scenarios = f"{args.steps or 0}x{args.width or 128}"
    try:
        args.scenario_list = [
            tuple(int(v) for v in item.lower().split("x")) for item in args.scenarios.split(",")
        ]
        args.growth_list = [int(n) for n in args.growth_lengths.split(",")]
    except ValueError:
        parser.error(f"--scenarios {args.scenarios!r}: expected STEPSxWIDTH,... (e.g. 200x128)")
    for name in ("batch_size", "epochs", "rounds", "threads", "memory_width"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


# -- the runners ----------------------------------------------------------------------


def hand_written(
    args: argparse.Namespace,
    train_ds: Any,
    val_ds: Any,
    on_epoch: Callable[[torch.nn.Module, torch.optim.Optimizer], None] | None = None,
) -> common.RunResult:
    """The loop a careful user writes by hand: train, then evaluate, each epoch."""
    model = common.make_mlp(args.width, seed=args.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    train = common.train_loader(train_ds, args.batch_size, seed=args.seed)
    val = common.eval_loader(val_ds, args.batch_size)
    clock = common.LapClock()
    t0 = time.perf_counter()
    clock.start()
    for _ in range(args.epochs):
        model.train()
        steps, loss_sum = 0, 0.0
        for x, y in train:
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item()
            steps += 1
        model.eval()
        correct, total, val_loss = 0, 0, 0.0
        with torch.no_grad():
            for x, y in val:
                logits = model(x)
                val_loss += F.cross_entropy(logits, y, reduction="sum").item()
                correct += (logits.argmax(1) == y).sum().item()
                total += len(y)
        _ = (loss_sum / steps, correct / total, val_loss / total)
        if on_epoch is not None:
            on_epoch(model, optimizer)
        clock.lap(steps)
    return _finish(clock, t0, args)


def hand_written_ckpt(args: argparse.Namespace, train_ds: Any, val_ds: Any) -> common.RunResult:
    """The hand-written loop plus what a careful script saves each epoch: a bare
    ``torch.save`` of model and optimizer state (no fsync, no rotation, no best file)."""
    out_dir = Path(tempfile.mkdtemp(prefix="bench-hand-"))
    saved = {"epoch": 0}

    def save(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        saved["epoch"] += 1
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), **saved}
        torch.save(state, out_dir / "last.pt")

    try:
        return hand_written(args, train_ds, val_ds, on_epoch=save)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def plain_ignite(
    args: argparse.Namespace, train_ds: Any, val_ds: Any, checkpoint: bool
) -> common.RunResult:
    """Ignite's own factories and handlers, wired by hand the way its docs show."""
    from ignite.engine import Events, create_supervised_evaluator, create_supervised_trainer
    from ignite.handlers import ModelCheckpoint, global_step_from_engine
    from ignite.handlers.tensorboard_logger import (
        OptimizerParamsHandler,
        OutputHandler,
        TensorboardLogger,
    )
    from ignite.metrics import Accuracy, Loss, RunningAverage

    model = common.make_mlp(args.width, seed=args.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    train = common.train_loader(train_ds, args.batch_size, seed=args.seed)
    val = common.eval_loader(val_ds, args.batch_size)
    trainer = create_supervised_trainer(model, optimizer, loss_fn)
    evaluator = create_supervised_evaluator(
        model, metrics={"accuracy": Accuracy(), "loss": Loss(loss_fn)}
    )
    RunningAverage(output_transform=lambda loss: loss).attach(trainer, "loss")
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: evaluator.run(val))

    out_dir = Path(tempfile.mkdtemp(prefix="bench-ignite-"))
    tb = TensorboardLogger(log_dir=str(out_dir / "tb"))
    tb.attach(
        trainer,
        OutputHandler("train", output_transform=lambda loss: {"batch_loss": loss}),
        Events.ITERATION_COMPLETED(every=10),
    )
    tb.attach(trainer, OptimizerParamsHandler(optimizer), Events.ITERATION_COMPLETED(every=10))
    tb.attach(
        evaluator,
        OutputHandler(
            "val", metric_names="all", global_step_transform=global_step_from_engine(trainer)
        ),
        Events.COMPLETED,
    )
    if checkpoint:
        objects = {"model": model, "optimizer": optimizer, "trainer": trainer}
        every_epoch = ModelCheckpoint(
            out_dir / "checkpoints", "last", n_saved=1, require_empty=False
        )
        trainer.add_event_handler(Events.EPOCH_COMPLETED, every_epoch, objects)
        best = ModelCheckpoint(
            out_dir / "checkpoints",
            "best",
            n_saved=1,
            require_empty=False,
            score_name="accuracy",
            score_function=lambda e: e.state.metrics["accuracy"],
            global_step_transform=global_step_from_engine(trainer),
        )
        evaluator.add_event_handler(Events.COMPLETED, best, {"model": model})
    trainer.add_event_handler(Events.COMPLETED, lambda _: tb.close())

    clock = common.LapClock()
    common.attach_lap_clock(trainer, clock)
    t0 = time.perf_counter()
    trainer.run(train, max_epochs=args.epochs)
    result = _finish(clock, t0, args)
    shutil.rmtree(out_dir, ignore_errors=True)
    return result


def ignitrain_defaults(
    args: argparse.Namespace, train_ds: Any, val_ds: Any, checkpoint: bool, to_disk: bool
) -> common.RunResult:
    """``create_classification_trainer`` with its default handlers."""
    import ignitrain
    from ignitrain import TrainConfig

    out_dir = Path(tempfile.mkdtemp(prefix="bench-ignitrain-")) if to_disk else None
    options: dict[str, Any] = {}
    if not checkpoint:
        options.update(save_every=0, save_best=False)
    options.update(_set_options(args.set))
    if not to_disk:
        options.pop("mlflow", None)  # needs an output_dir
    config = TrainConfig(
        num_epochs=args.epochs,
        optimizer="adam",
        lr=1e-3,
        batch_size=args.batch_size,
        device="cpu",
        seed=args.seed,
        progress_bar=False,
        output_dir=str(out_dir) if out_dir else None,
        **options,
    )
    model = common.make_mlp(args.width, seed=args.seed)
    trainer = ignitrain.create_classification_trainer(model, config, train_ds, val_ds)
    clock = common.LapClock()
    common.attach_lap_clock(trainer.engine, clock)
    t0 = time.perf_counter()
    trainer.train()
    result = _finish(clock, t0, args)
    if out_dir is not None:
        shutil.rmtree(out_dir, ignore_errors=True)
    return result


def _set_options(pairs: list[str]) -> dict[str, Any]:
    import yaml

    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set {pair!r}: expected KEY=VALUE")
        options[key.strip()] = yaml.safe_load(value)
    return options


def _finish(clock: common.LapClock, t0: float, args: argparse.Namespace) -> common.RunResult:
    result = clock.result
    result.run_seconds = time.perf_counter() - t0
    result.run_steps = sum(result.steps)
    result.samples = args.batch_size
    return result


def checkpoints_available() -> bool:
    """Whether ignitrain's checkpoint handlers exist yet (they are written separately)."""
    return importlib.util.find_spec("ignitrain.handlers.checkpoint") is not None


def build_runners(
    args: argparse.Namespace, checkpoint: bool, train_ds: Any, val_ds: Any
) -> dict[str, Callable[[], common.RunResult]]:
    available = {
        "hand": lambda: hand_written(args, train_ds, val_ds),
        "hand_ckpt": lambda: hand_written_ckpt(args, train_ds, val_ds),
        "ignite": lambda: plain_ignite(args, train_ds, val_ds, checkpoint),
        "ignitrain": lambda: ignitrain_defaults(args, train_ds, val_ds, checkpoint, True),
        "ignitrain_nodir": lambda: ignitrain_defaults(args, train_ds, val_ds, checkpoint, False),
    }
    names = [n.strip() for n in args.runners.split(",") if n.strip()]
    if not checkpoint:  # without checkpoints hand_ckpt is hand
        names = [n for n in names if n != "hand_ckpt"]
    unknown = [n for n in names if n not in available]
    if unknown or not names:
        raise SystemExit(f"--runners: unknown {unknown}; choose from {sorted(available)}")
    return {name: available[name] for name in names}


def scenario_data(args: argparse.Namespace, steps: int) -> tuple[Any, Any]:
    train_ds, val_ds = common.digits_datasets(seed=args.seed)
    if steps:
        train_ds = common.tiled(train_ds, steps, args.batch_size)
    return train_ds, val_ds


# -- sections -------------------------------------------------------------------------


def ratios_section(args: argparse.Namespace, checkpoint: bool) -> list[dict]:
    """Each scenario: every runner interleaved round by round; ratio to ``hand``."""
    rows: list[dict] = []
    for steps, width in args.scenario_list:
        local = argparse.Namespace(**vars(args))
        local.width = width
        local.epochs = max(1, args.epochs * 128 // max(width, 128))
        train_ds, val_ds = scenario_data(args, steps)
        runners = build_runners(local, checkpoint, train_ds, val_ds)
        # the same number of timed epochs per runner in every scenario: one-epoch
        # rounds of a wide model are as noisy as any, so there are more of them
        local.rounds = args.rounds * -(-args.epochs // local.epochs)
        label = f"{steps or 'digits'} steps x width {width}"
        print(f"\n== {label}: {local.rounds} rounds x {local.epochs} epoch(s)")
        results = common.run_interleaved(
            runners, rounds=local.rounds, warmup_rounds=args.warmup_rounds, seed=args.seed
        )
        rows += _ratio_rows(label, results)
    return rows


def _ratio_rows(label: str, results: dict[str, list[common.RunResult]]) -> list[dict]:
    def round_median(result: common.RunResult, cpu: bool = False) -> float:
        laps = result.cpu_laps if cpu else result.laps
        return statistics.median(1e3 * t / s for t, s in zip(laps, result.steps) if s)

    def paired(res: list[common.RunResult], base: list[common.RunResult], cpu=False):
        # each round's median lap against the base runner's in the same round
        return [round_median(r, cpu) / round_median(b, cpu) for r, b in zip(res, base)]

    base, same_work = results.get("hand"), results.get("hand_ckpt")
    rows = []
    for name, res in results.items():
        stats = common.summarize(res)
        row = {"scenario": label, "runner": name, **stats}
        if base:
            ratios = paired(res, base)
            row["ratio"] = statistics.median(ratios)
            row["ratio_min"], row["ratio_max"] = min(ratios), max(ratios)
            row["ratio_ci"] = median_ci(ratios)
            cpu = paired(res, base, cpu=True)
            row["cpu_ratio"] = statistics.median(cpu)
            row["cpu_ratio_min"], row["cpu_ratio_max"] = min(cpu), max(cpu)
            row["run_ratio"] = stats["run_ms_per_step"] / common.summarize(base)["run_ms_per_step"]
        if same_work:
            ratios = paired(res, same_work)
            row["ckpt_ratio"] = statistics.median(ratios)
            row["ckpt_ratio_ci"] = median_ci(ratios)
        rows.append(row)
    return rows


def median_ci(values: list[float], level: float = 0.95, resamples: int = 2000) -> list[float]:
    """A percentile-bootstrap confidence interval of the median of ``values`` (seeded).

    Per-round ratios spread by +-5-10% on these shared machines, so a median alone
    cannot tell 1.025 from 1.035: the interval says how far the run pins it down.
    """
    if len(values) < 3:
        return [float("nan"), float("nan")]
    rng = random.Random(0)
    medians = sorted(
        statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples)
    )
    tail = (1 - level) / 2
    return [medians[int(tail * resamples)], medians[int((1 - tail) * resamples) - 1]]


def handlers_section(args: argparse.Namespace, checkpoint: bool) -> list[dict]:
    """Ignite's ``HandlersTimeProfiler`` on ignitrain runs of the first scenario.

    One discarded warm-up run, then ``--rounds`` runs; each handler's time per training
    step is the median over the runs with its [min, max]. Timed in CPU time of the
    training thread (``time.thread_time``): what a handler costs the training loop,
    not what other processes on a shared machine take from it; the background writer
    thread's own work is not counted.
    """
    steps, width = args.scenario_list[0]
    train_ds, val_ds = scenario_data(args, steps)
    runs = [
        _profile_run(args, checkpoint, width, train_ds, val_ds)
        for _ in range(args.warmup_rounds + args.rounds)
    ][args.warmup_rounds :]
    keys = list(dict.fromkeys(key for run in runs for key in run))
    rows = []
    for handler, event in keys:
        per_step = [run.get((handler, event), 0.0) for run in runs]
        rows.append(
            {
                "handler": handler[:48],
                "event": event,
                "us_per_step": statistics.median(per_step),
                "us_min": min(per_step),
                "us_max": max(per_step),
            }
        )
    rows.sort(key=lambda r: (r["handler"].startswith("("), -r["us_per_step"]))
    for row in rows:
        row["spread"] = f"[{row['us_min']:.1f}, {row['us_max']:.1f}]"
    return rows


def _profile_run(
    args: argparse.Namespace, checkpoint: bool, width: int, train_ds: Any, val_ds: Any
) -> dict[tuple[str, str], float]:
    """One profiled ignitrain run: ``(handler, event) -> CPU us per training step``."""
    import ignite.handlers.timing as ignite_timing
    from ignite.handlers import HandlersTimeProfiler

    import ignitrain
    from ignitrain import TrainConfig

    out_dir = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    options = {} if checkpoint else {"save_every": 0, "save_best": False}
    config = TrainConfig(
        num_epochs=max(2, args.epochs),
        optimizer="adam",
        lr=1e-3,
        batch_size=args.batch_size,
        device="cpu",
        seed=args.seed,
        progress_bar=False,
        output_dir=str(out_dir),
        **options,
    )
    trainer = ignitrain.create_classification_trainer(
        common.make_mlp(width, seed=args.seed), config, train_ds, val_ds
    )
    profiler = HandlersTimeProfiler()
    # Ignite drops a filtered handler's call under 100 us (to skip the filter's "not
    # due" calls): that hides e.g. the History's every-10-iterations record; count all
    profiler.EVENT_FILTER_THESHOLD_TIME = 0.0
    profiler.attach(trainer.engine)
    # Ignite's Timer reads time.perf_counter through its module: CPU time of this
    # thread instead, for the length of this run only
    wall = ignite_timing.perf_counter
    ignite_timing.perf_counter = time.thread_time
    try:
        trainer.train()
    finally:
        ignite_timing.perf_counter = wall
    shutil.rmtree(out_dir, ignore_errors=True)
    total_steps = trainer.engine.state.iteration
    per_step: dict[tuple[str, str], float] = {}
    for handler, event, total, *_rest in profiler.get_results():
        if not isinstance(total, (int, float)) or handler in ("Total", "Processing", "Dataflow"):
            continue
        key = (handler, str(event))
        per_step[key] = per_step.get(key, 0.0) + 1e6 * total / total_steps
    per_step[("(process function: the step)", "")] = (
        1e6 * sum(float(t) for t in profiler.processing_times) / total_steps
    )
    per_step[("(data loading)", "")] = (
        1e6 * sum(float(t) for t in profiler.dataflow_times) / total_steps
    )
    return per_step


def growth_section(args: argparse.Namespace) -> list[dict]:
    import history_growth

    quick = args.quick
    return history_growth.measure(
        tuple(args.growth_list), epochs=2 if quick else 12, rounds=2 if quick else 4
    )


def memory_section(args: argparse.Namespace) -> list[dict]:
    """Peak RSS above the pre-run level, each runner alone in a fresh process."""
    rows = []
    names = ("hand", "hand_ckpt", "ignite", "ignitrain", "ignitrain_nodir")
    names = [n for n in names if n in args.runners and (n != "hand_ckpt" or not args.no_checkpoint)]
    for name in names:
        cmd = [
            sys.executable,
            __file__,
            "--memory-child",
            name,
            "--width",
            str(args.memory_width),
            "--steps",
            "25",
            "--threads",
            str(args.threads),
        ]
        if args.no_checkpoint:
            cmd.append("--no-checkpoint")
        # glibc raises its mmap threshold after large frees, so freed tensors may stay in
        # the heap and the peak would depend on the order of earlier allocations: a fixed
        # threshold returns every large block on free (the same rule for every runner)
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
        env.pop("MALLOC_TRIM_THRESHOLD_", None)  # the pinned ratios' setting, not this one's
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        if out.returncode != 0:
            raise SystemExit(f"memory child {name} failed:\n{out.stderr[-2000:]}")
        rows.append({"runner": name, **json.loads(out.stdout.strip().splitlines()[-1])})
    base = next((r for r in rows if r["runner"] == "hand"), None)
    for row in rows:
        if base:
            row["x_hand"] = row["peak_mib"] / base["peak_mib"]
    return rows


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_child(args: argparse.Namespace) -> None:
    common.configure(args.threads)
    args.epochs = 1
    train_ds, val_ds = scenario_data(args, args.steps or 25)
    checkpoint = not args.no_checkpoint
    runner = build_runners(args, checkpoint, train_ds, val_ds)[args.memory_child]
    import ignite.engine  # noqa: F401 -- imports are not the run's memory

    import ignitrain  # noqa: F401

    before = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak RSS
    runner()
    peak = _rss_kib("VmHWM")
    print(json.dumps({"before_mib": before / 1024, "peak_mib": (peak - before) / 1024}))


# -- report ---------------------------------------------------------------------------


#: glibc settings of ``--malloc pinned`` (the environment is read once, at start-up)
PINNED_MALLOC = {
    "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),
    "MALLOC_TRIM_THRESHOLD_": str(256 * 2**20),
}


def _pin_malloc(args: argparse.Namespace, argv: list[str] | None) -> None:
    """Re-execute this script with :data:`PINNED_MALLOC` unless it already runs so."""
    if args.malloc != "pinned" or args.memory_child or argv is not None:
        return
    if all(os.environ.get(k) == v for k, v in PINNED_MALLOC.items()):
        return
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **PINNED_MALLOC})


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    _pin_malloc(args, argv)
    if args.memory_child:
        memory_child(args)
        return {}
    common.configure(args.threads)
    checkpoint = not args.no_checkpoint
    if checkpoint and not checkpoints_available():
        print("note: ignitrain.handlers.checkpoint is not importable yet: checkpointing off")
        checkpoint = False
    sections = {s.strip() for s in args.sections.split(",")}
    print(
        f"overhead: batch {args.batch_size}, {args.threads} thread(s), {args.rounds} rounds "
        f"(+{args.warmup_rounds} warm-up), checkpoints {'on' if checkpoint else 'off'}, "
        f"malloc {_malloc_setting()}"
    )
    payload: dict[str, Any] = {
        "benchmark": "overhead",
        "settings": {
            k: v for k, v in vars(args).items() if k not in ("scenario_list", "growth_list")
        }
        | {"checkpoint": checkpoint},
        "machine": common.machine_info(args.threads) | {"malloc": _malloc_setting()},
        "definition": "ms_per_step = median over epochs of epoch wall time / train steps; "
        "ratio = median over rounds of (runner's median lap / hand's median lap, same round)",
    }
    if "ratios" in sections:
        rows = ratios_section(args, checkpoint)
        report.print_table(
            _with_spreads(rows),
            RATIO_COLUMNS,
            note="ms/step: median over epochs of (epoch wall time incl. validation and "
            "handlers / train steps); x hand: median over rounds of the same-round ratio, "
            "[min, max] and a 95% bootstrap CI of the median; x hand_ckpt: the same against "
            "hand_ckpt (a checkpoint each epoch, as the defaults); cpu: the same with this "
            "process's CPU time (all its threads: less sensitive to other processes); "
            "run x hand: the whole train()/run() call",
        )
        payload["ratios"] = rows
    if "handlers" in sections:
        rows = handlers_section(args, checkpoint)
        steps, width = args.scenario_list[0]
        report.print_table(
            rows,
            [
                ("handler", "handler (HandlersTimeProfiler)", ""),
                ("event", "event", ""),
                ("us_per_step", "CPU us per training step (median)", ".1f"),
                ("spread", "[min, max] over runs", ""),
            ],
            title=f"where ignitrain's time goes ({steps or 'digits'} steps x width {width})",
        )
        payload["handlers"] = rows
    if "growth" in sections:
        import history_growth

        print("\n== epoch-end time against the run's length (History of N logged iterations)")
        rows = growth_section(args)
        print(history_growth.format_rows(rows))
        payload["growth"] = rows
    if "memory" in sections:
        print(f"\n== peak memory above the pre-run level (width {args.memory_width}, 25 steps)")
        rows = memory_section(args)
        print(
            common.format_table(
                rows,
                [
                    ("runner", "runner", ""),
                    ("peak_mib", "peak MiB over pre-run", ".1f"),
                    ("x_hand", "x hand", ".3f"),
                    ("before_mib", "pre-run RSS MiB", ".0f"),
                ],
            )
        )
        payload["memory"] = rows
    report.save_json(args.json, payload)
    return payload


def _malloc_setting() -> str:
    found = [f"{k}={os.environ[k]}" for k in PINNED_MALLOC if k in os.environ]
    return ", ".join(found) or "glibc default (dynamic thresholds)"


RATIO_COLUMNS = [
    ("scenario", "scenario", ""),
    ("runner", "runner", ""),
    ("ms_per_step", "ms/step", ".3f"),
    ("ms_per_step_q1", "q1", ".3f"),
    ("ms_per_step_q3", "q3", ".3f"),
    ("ratio", "x hand", ".3f"),
    ("spread", "x hand [min, max]", ""),
    ("ci", "x hand 95% CI", ""),
    ("ckpt_ratio", "x hand_ckpt", ".3f"),
    ("ckpt_ci", "x hand_ckpt 95% CI", ""),
    ("cpu_ms_per_step", "cpu ms/step", ".3f"),
    ("cpu_ratio", "cpu x hand", ".3f"),
    ("cpu_spread", "cpu [min, max]", ""),
    ("run_ratio", "run x hand", ".3f"),
]


def _with_spreads(rows: list[dict]) -> list[dict]:
    """The ratio rows with their [min, max] spreads as text columns (added in place)."""
    for row in rows:
        if "ratio" in row:
            row["spread"] = f"[{row['ratio_min']:.3f}, {row['ratio_max']:.3f}]"
            row["cpu_spread"] = f"[{row['cpu_ratio_min']:.3f}, {row['cpu_ratio_max']:.3f}]"
            row["ci"] = "[{:.3f}, {:.3f}]".format(*row["ratio_ci"])
        if "ckpt_ratio" in row:
            row["ckpt_ci"] = "[{:.3f}, {:.3f}]".format(*row["ckpt_ratio_ci"])
    return rows


if __name__ == "__main__":
    main()
