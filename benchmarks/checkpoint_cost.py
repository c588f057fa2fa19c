"""Cost of one per-epoch checkpoint of a ~10M-parameter model + Adam, against bare torch.save.

Runners, interleaved round by round in a shuffled order (fixed seed) so drift of the
machine spreads over all of them; the dirty page cache is flushed (``os.sync``,
untimed) before every measurement so one runner's writeback does not land on the next:

    bare torch.save     torch.save({"model": sd, "optimizer": osd}, path)  -- not durable
    save_atomic         build_payload + temp file, fsync, rename, fsync dir
    store (inline)      what attach_checkpoints does per epoch: build_payload with the
                        engine and RNG states, CheckpointStore.save (atomic write,
                        latest pointer, eviction)
    store (background)  the same with CheckpointStore(background=True): the time until
                        training can go on (fsync + rename + pointer finish on a thread)
    Ignite Checkpoint   what attach_checkpoints does now: Ignite's Checkpoint (n_saved,
                        naming) calling DurableSaver on the background store

Also reported: loading with safe_load (CRC-checked, weights_only) against a bare
``torch.load(weights_only=True)``.

``--sizes`` instead compares, checkpoint size by size, the durable ways a store can
write (issue 16: choose by size): the training thread's wall and CPU time
(``time.thread_time``) until it may go on, and the time until the file is durable::

    inline          the whole save on the caller (CheckpointStore(background=False))
    bg memory       serialise to memory on the caller; write, fsync, rename, pointer on
                    the writer thread (background, up to IN_MEMORY_LIMIT)
    bg temp file    torch.save into the temp file on the caller; fsync, rename, pointer
                    on the writer thread (background, beyond IN_MEMORY_LIMIT)

Usage::

    python benchmarks/checkpoint_cost.py [--dir DIR] [--rounds 7] [--width 1600]
    python benchmarks/checkpoint_cost.py --sizes 0.1,1,8,32,64 [--rounds 7]
    python benchmarks/checkpoint_cost.py --quick     # smoke run
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from ignite.engine import Engine
from torch import nn

from ignitrain.handlers.checkpoint import (
    CheckpointStore,
    RNGState,
    attach_checkpoints,
    build_payload,
    payload_from_states,
    safe_load,
    save_atomic,
)
from ignitrain.handlers.checkpoint import store as store_module


def make_state(width: int) -> tuple[nn.Module, torch.optim.Optimizer, Engine]:
    """A 4-layer MLP (width 1600: 10.2M parameters) and Adam with its state filled."""
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(width, width) for _ in range(4)])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(8, width)).square().mean().backward()
    opt.step()
    engine = Engine(lambda e, b: None)
    engine.run(range(10), max_epochs=1)
    return model, opt, engine


def timed(fn: Callable[[], object]) -> float:
    os.sync()  # start from a clean page cache: no writeback from the previous runner
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def rolling_write(store: CheckpointStore):
    """``write(payload, tag)``: a periodic file evicting the previous one once it is
    durable (``n_saved=1``, the ``remove`` list ``DurableSaver`` passes)."""
    written: list[str] = []

    def write(payload: dict, tag: str) -> None:
        name = f"{store.prefix}_periodic_{tag}.pt"
        store.write(payload, name, "periodic", remove=written[-1:])
        written.append(name)

    return write


def by_size(sizes_mib: list[float], rounds: int, where: str | None) -> None:
    """The ``--sizes`` table: each write mode of a store, size by size (interleaved)."""
    default = store_module.IN_MEMORY_LIMIT
    modes = {"inline": (False, default), "bg memory": (True, 2**62), "bg temp file": (True, 0)}
    rng = random.Random(0)
    print(f"median of {rounds} interleaved rounds; caller = the training thread")
    print(
        f"{'MiB':>6} {'mode':14s} {'caller wall ms':>15} {'caller CPU ms':>14} {'durable ms':>11}"
    )
    with tempfile.TemporaryDirectory(dir=where) as tmp:
        for size in sizes_mib:
            state = {"model": {"w": torch.randn(max(1, int(size * 2**20 / 4)))}}
            payload = payload_from_states(
                state, {"iteration": 1, "epoch": 1, "metrics": {"loss": 0.1}}
            )
            stores = {
                name: CheckpointStore(Path(tmp) / f"{size}-{i}", n_saved=1, background=bg)
                for i, (name, (bg, _)) in enumerate(modes.items())
            }
            writes = {name: rolling_write(store) for name, store in stores.items()}
            results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in modes}
            order = list(modes)
            for step in range(rounds):
                rng.shuffle(order)
                for name in order:
                    store_module.IN_MEMORY_LIMIT = modes[name][1]
                    os.sync()
                    wall, cpu = time.perf_counter(), time.thread_time()
                    writes[name](payload, f"iter{step:08d}")
                    caller = (time.perf_counter() - wall, time.thread_time() - cpu)
                    stores[name].wait()
                    results[name].append((*caller, time.perf_counter() - wall))
            for name, values in results.items():
                wall_ms, cpu_ms, durable_ms = (
                    statistics.median(v[k] for v in values) * 1000 for k in range(3)
                )
                print(f"{size:6g} {name:14s} {wall_ms:15.2f} {cpu_ms:14.2f} {durable_ms:11.2f}")
    store_module.IN_MEMORY_LIMIT = default


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--sizes", default=None, help="MiB, comma-separated: compare write modes")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 3 rounds, width 800 (2.6M parameters)"
    )
    args = parser.parse_args()
    if args.sizes:
        by_size([float(s) for s in args.sizes.split(",")], args.rounds, args.dir)
        return
    if args.quick:
        args.rounds, args.width = 3, 800

    model, opt, engine = make_state(args.width)
    n_params = sum(p.numel() for p in model.parameters())
    objects = {"model": model, "optimizer": opt, "trainer": engine, "rng": RNGState()}
    extra = {"iteration": 10, "epoch": 1, "config": {"lr": 1e-3}, "metrics": {"loss": 0.1}}

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        inline = CheckpointStore(root / "inline", n_saved=1)
        background = CheckpointStore(root / "background", n_saved=1, background=True)
        counter = iter(range(1, 10**6))
        write_inline, write_background = rolling_write(inline), rolling_write(background)
        ignite_store = CheckpointStore(root / "ignite", n_saved=1, background=True)
        handler = attach_checkpoints(
            engine, objects, ignite_store, save_every=1, extra_fn=lambda: dict(extra)
        )
        periodic = handler.checkpoints["periodic"]

        def bare() -> None:
            torch.save(
                {"model": model.state_dict(), "optimizer": opt.state_dict()}, root / "bare.pt"
            )

        def atomic() -> None:
            save_atomic(build_payload({"model": model, "optimizer": opt}), root / "atomic.pt")

        def store_inline() -> None:
            write_inline(build_payload(objects, extra), f"epoch{next(counter):04d}")

        def store_background() -> None:
            write_background(build_payload(objects, extra), f"epoch{next(counter):04d}")

        def ignite_checkpoint() -> None:
            engine.state.iteration = next(counter)
            periodic(engine)

        runners = {
            "bare torch.save": bare,
            "save_atomic": atomic,
            "store (inline)": store_inline,
            "store (background)": store_background,
            "Ignite Checkpoint": ignite_checkpoint,
        }
        times: dict[str, list[float]] = {name: [] for name in runners}
        order = list(runners)
        rng = random.Random(0)
        for _ in range(args.rounds):
            rng.shuffle(order)
            for name in order:
                times[name].append(timed(runners[name]))
                background.wait()  # untimed: the commit must not overlap the next runner
                ignite_store.wait()

        load_times: dict[str, list[float]] = {"torch.load": [], "safe_load": []}
        path = inline.latest_path()
        for _ in range(args.rounds):
            for name, fn in (
                ("torch.load", lambda: torch.load(path, weights_only=True)),
                ("safe_load", lambda: safe_load(path)),
            ):
                load_times[name].append(timed(fn))
        size_mb = path.stat().st_size / 2**20

    base = statistics.median(times["bare torch.save"])
    print(f"model: {n_params / 1e6:.1f}M parameters + Adam state, file {size_mb:.0f} MiB")
    print(f"median of {args.rounds} interleaved rounds (page cache flushed before each):")
    for name, values in times.items():
        med = statistics.median(values)
        ratio, fastest = med / base, min(values) * 1000
        print(f"  {name:20s} {med * 1000:8.1f} ms   {ratio:5.2f}x   (min {fastest:.1f} ms)")
    lbase = statistics.median(load_times["torch.load"])
    for name, values in load_times.items():
        med = statistics.median(values)
        print(f"  load: {name:14s} {med * 1000:8.1f} ms   {med / lbase:5.2f}x")


if __name__ == "__main__":
    main()
