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

What is measured: for each epoch, its wall time (training, validation and every
handler that runs at the end of the epoch) divided by the epoch's training steps; the
table shows the median over all timed epochs ("ms/step") and each runner's ratio to
``hand``. "run ms/step" is the whole ``run()``/``train()`` call (start and completion
handlers, e.g. opening the TensorBoard writer and the final checkpoint, included) per
step; building the trainer is not timed.

Usage::

    python benchmarks/overhead.py                    # width 128, 1 thread, 7 rounds x 3 epochs
    python benchmarks/overhead.py --json out.json    # also write the figures
    python benchmarks/overhead.py --no-checkpoint    # checkpointing off in every runner
    python benchmarks/overhead.py --quick            # smoke run (seconds)
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
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

__all__ = ["main", "build_runners"]

TARGET_RATIO = 1.10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=128, help="hidden width of the MLP")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per runner per round")
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
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument(
        "--set", metavar="KEY=VALUE", action="append", default=[],
        help="a TrainConfig option of the ignitrain runners (VALUE read as YAML), e.g. "
        "ema_decay=0.999, profile=true, mlflow=true: what a feature costs, on vs off",
    )  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 2 rounds x 1 epoch (figures are noisy)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.epochs = 2, 1
    for name in ("width", "batch_size", "epochs", "rounds", "threads"):
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
    args: argparse.Namespace, checkpoint: bool
) -> dict[str, Callable[[], common.RunResult]]:
    train_ds, val_ds = common.digits_datasets(seed=args.seed)
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


# -- report ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    common.configure(args.threads)
    checkpoint = not args.no_checkpoint
    if checkpoint and not checkpoints_available():
        print("note: ignitrain.handlers.checkpoint is not importable yet: checkpointing off")
        checkpoint = False
    runners = build_runners(args, checkpoint)
    print(
        f"overhead: MLP width {args.width}, batch {args.batch_size}, {args.threads} thread(s), "
        f"{args.rounds} rounds x {args.epochs} epochs, checkpoints {'on' if checkpoint else 'off'}"
    )
    results = common.run_interleaved(
        runners, rounds=args.rounds, warmup_rounds=args.warmup_rounds, seed=args.seed
    )
    summary = {name: common.summarize(res) for name, res in results.items()}
    base = summary.get("hand")
    rows = []
    for name, stats in summary.items():
        row = {"runner": name, **stats}
        if base:
            row["ratio"] = stats["ms_per_step"] / base["ms_per_step"]
            row["cpu_ratio"] = stats["cpu_ms_per_step"] / base["cpu_ms_per_step"]
            row["run_ratio"] = stats["run_ms_per_step"] / base["run_ms_per_step"]
        rows.append(row)
    print()
    print(
        common.format_table(
            rows,
            [
                ("runner", "runner", ""),
                ("ms_per_step", "ms/step", ".3f"),
                ("ms_per_step_q1", "q1", ".3f"),
                ("ms_per_step_q3", "q3", ".3f"),
                ("ratio", "x hand", ".3f"),
                ("cpu_ms_per_step", "cpu ms/step", ".3f"),
                ("cpu_ratio", "cpu x hand", ".3f"),
                ("run_ms_per_step", "run ms/step", ".3f"),
                ("run_ratio", "run x hand", ".3f"),
            ],
        )
    )
    print(
        "ms/step: median over epochs of (epoch wall time incl. validation and handlers / train "
        "steps); cpu: the same with this process's CPU time; run: whole train()/run() call"
    )
    if base and "ignitrain" in summary:
        ratio = summary["ignitrain"]["ms_per_step"] / base["ms_per_step"]
        verdict = "within" if ratio <= TARGET_RATIO else "OVER"
        print(f"ignitrain / hand = {ratio:.3f} ({verdict} the {TARGET_RATIO:.2f}x target)")
    payload = {
        "benchmark": "overhead",
        "settings": {**vars(args), "checkpoint": checkpoint},
        "machine": common.machine_info(args.threads),
        "definition": "ms_per_step = median over epochs of epoch wall time / train steps",
        "results": {row["runner"]: row for row in rows},
        "raw": {
            name: [
                {
                    "laps": r.laps,
                    "cpu_laps": r.cpu_laps,
                    "steps": r.steps,
                    "run_seconds": r.run_seconds,
                }
                for r in res
            ]
            for name, res in results.items()
        },
    }
    if args.json:
        common.write_json(args.json, payload)
        print(f"wrote {args.json}")
    return payload


if __name__ == "__main__":
    main()
