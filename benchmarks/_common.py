"""Helpers shared by the benchmark scripts: data, models, interleaving, clocks, tables.

Every benchmark here compares *runners* (a hand-written loop, plain Ignite, ignitrain)
doing the same work in one process. Runners are interleaved round by round in an order
shuffled with a fixed seed, so slow drift of the machine (thermal, other processes)
spreads over all of them instead of biasing whichever ran last.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

__all__ = [
    "RunResult",
    "LapClock",
    "configure",
    "digits_datasets",
    "make_mlp",
    "tiled",
    "train_loader",
    "eval_loader",
    "attach_lap_clock",
    "run_interleaved",
    "summarize",
    "format_table",
    "machine_info",
    "write_json",
]


@dataclass
class RunResult:
    """What one runner measured in one round.

    Attributes:
        laps: Wall seconds of each timed unit (an epoch, or a block of steps).
        cpu_laps: CPU seconds of this process (all its threads) in each lap: less
            sensitive than wall time to other processes on a shared machine.
        steps: Training steps in each lap.
        run_seconds: Wall seconds of the whole run call (start/end handlers included).
        run_steps: Training steps of the whole run.
        samples: Training samples per step (for throughput figures).
    """

    laps: list[float] = field(default_factory=list)
    cpu_laps: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    run_seconds: float = 0.0
    run_steps: int = 0
    samples: int = 0


class LapClock:
    """Contiguous laps: each lap ends where the previous one ended (nothing falls between)."""

    def __init__(self) -> None:
        self.result = RunResult()
        self._last = 0.0
        self._last_cpu = 0.0
        self._sync: Callable[[], None] = _no_sync

    def start(self, sync: Callable[[], None] | None = None) -> None:
        """Start the first lap now; ``sync`` (e.g. ``torch.cuda.synchronize``) runs first."""
        self._sync = sync or _no_sync
        self._sync()
        self._last = time.perf_counter()
        self._last_cpu = time.process_time()

    def lap(self, steps: int) -> None:
        """End a lap of ``steps`` training steps."""
        self._sync()
        now, cpu = time.perf_counter(), time.process_time()
        self.result.laps.append(now - self._last)
        self.result.cpu_laps.append(cpu - self._last_cpu)
        self.result.steps.append(int(steps))
        self._last, self._last_cpu = now, cpu


def _no_sync() -> None:
    return None


def configure(threads: int | None) -> None:
    """One intra-op thread count for every runner (``None``: torch's default); quiet
    Ignite's INFO chatter."""
    if threads is not None:
        torch.set_num_threads(threads)
    # Ignite's auto_dataloader logs its kwargs at INFO on every call
    logging.getLogger("ignite").setLevel(logging.WARNING)
    logging.getLogger("ignite.distributed.auto.auto_dataloader").setLevel(logging.WARNING)


def digits_datasets(
    val_fraction: float = 0.2, seed: int = 0
) -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's digits (ships with the package, no download), split train/val.

    Pixels are scaled to [0, 1]; targets are int64 class indices.
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_val = int(len(x) * val_fraction)
    val, train = order[:n_val], order[n_val:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val])


def tiled(dataset: TensorDataset, steps: int, batch_size: int) -> TensorDataset:
    """``dataset`` repeated (or cut) to exactly ``steps`` full batches per epoch."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} is not allowed: expected an integer >= 1")
    index = torch.arange(steps * batch_size) % len(dataset)
    return TensorDataset(*(t[index] for t in dataset.tensors))


def make_mlp(
    width: int = 128, in_features: int = 64, classes: int = 10, seed: int = 0
) -> nn.Module:
    """The tiny MLP every digits benchmark trains (same init for every runner)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(in_features, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, classes),
    )


def train_loader(dataset: Any, batch_size: int, seed: int = 0) -> DataLoader:
    """A shuffling loader with its own generator, as a careful script would write it."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )


def eval_loader(dataset: Any, batch_size: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)


def attach_lap_clock(engine: Any, clock: LapClock, sync: Callable[[], None] | None = None) -> None:
    """Time an Ignite engine epoch by epoch.

    Call after every other handler is attached: Ignite fires handlers in the order they
    were added, so the lap ends after the validation, logging and checkpoint handlers
    of ``EPOCH_COMPLETED`` have run. The first lap starts after the ``STARTED``
    handlers (writer opening and similar one-off set-up are in ``run_seconds`` only).
    """
    from ignite.engine import Events

    engine.add_event_handler(Events.STARTED, lambda _: clock.start(sync))
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: clock.lap(e.state.epoch_length or 0))


def run_interleaved(
    runners: Mapping[str, Callable[[], RunResult]],
    *,
    rounds: int,
    warmup_rounds: int = 1,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, list[RunResult]]:
    """Run every runner once per round, in an order shuffled per round with ``seed``.

    The first ``warmup_rounds`` rounds are run (same shuffling) and discarded: they pay
    for lazy imports, allocator growth and first-call dispatch.
    """
    rng = random.Random(seed)
    names = list(runners)
    results: dict[str, list[RunResult]] = {name: [] for name in names}
    for r in range(warmup_rounds + rounds):
        order = names[:]
        rng.shuffle(order)
        timed = r >= warmup_rounds
        for name in order:
            result = runners[name]()
            if timed:
                results[name].append(result)
        label = f"round {r - warmup_rounds + 1}/{rounds}" if timed else f"warm-up {r + 1}"
        log(f"  {label}: {' -> '.join(order)}")
    return results


def summarize(results: Sequence[RunResult]) -> dict[str, float]:
    """Median and spread of ms/step over all laps, and run-level figures.

    ``cpu_ms_per_step`` is the same median over the laps' process CPU time.

    ``ms_per_step`` is the median over laps of (lap wall time / training steps in the
    lap); ``run_ms_per_step`` the median over rounds of (run wall time / run steps).
    """
    per_step = [1e3 * t / s for r in results for t, s in zip(r.laps, r.steps) if s]
    cpu_per_step = [1e3 * t / s for r in results for t, s in zip(r.cpu_laps, r.steps) if s]
    runs = [1e3 * r.run_seconds / r.run_steps for r in results if r.run_steps]
    samples = results[0].samples if results else 0
    out = {
        "ms_per_step": statistics.median(per_step) if per_step else float("nan"),
        "ms_per_step_q1": _quantile(per_step, 0.25),
        "ms_per_step_q3": _quantile(per_step, 0.75),
        "ms_per_step_min": min(per_step) if per_step else float("nan"),
        "cpu_ms_per_step": statistics.median(cpu_per_step) if cpu_per_step else float("nan"),
        "laps": len(per_step),
        "run_ms_per_step": statistics.median(runs) if runs else float("nan"),
    }
    if samples:
        out["samples_per_s"] = 1e3 * samples / out["ms_per_step"]
    return out


def _quantile(values: Sequence[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1]


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """A fixed-width text table; ``columns`` are ``(key, header, format spec)``."""
    cells = [[header for _, header, _ in columns]]
    for row in rows:
        line = []
        for key, _, spec in columns:
            value = row.get(key, "")
            line.append(format(value, spec) if isinstance(value, (int, float)) else str(value))
        cells.append(line)
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def machine_info(threads: int) -> dict[str, Any]:
    """Where the figures were taken."""
    import ignite

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ignite": ignite.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def write_json(path: str | os.PathLike, payload: Mapping[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
