"""Worker functions for tests/test_distributed.py.

Spawned processes start a fresh interpreter and import the function they run by its
module name, so the workers live at the top level of this importable module (the
tests directory is on ``sys.path`` under pytest, and spawn children inherit it).

Run as a script under torchrun it is also the torchrun test's training script::

    python -m torch.distributed.run --nproc_per_node=2 --master_port=PORT \\
        tests/_dist_workers.py OUT_DIR {join,join_then_fail}
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import ignite.distributed as idist
import torch
import torch.distributed as dist

from ignitrain import distributed

__all__ = [
    "bf16_training_worker",
    "collectives_worker",
    "exit_after",
    "nan_on_rank_one_worker",
    "raise_on_rank_one",
    "setup_worker",
]


def _write(out_dir: str, record: dict) -> None:
    # One file per rank, written atomically, so the test reads complete records only.
    path = Path(out_dir) / f"rank{idist.get_rank()}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)


def _group_timeout_s() -> float | None:
    # Torch keeps the timeout on the backend's options (private API, fine for a test).
    if not dist.is_initialized():
        return None
    backend = dist.distributed_c10d._get_default_group()._get_backend(torch.device("cpu"))
    return backend.options._timeout.total_seconds()


def collectives_worker(local_rank: int, out_dir: str, scale: float = 1.0) -> None:
    """Run real collectives and the rank helpers; record what this rank saw."""
    rank = idist.get_rank()
    total = idist.all_reduce(torch.tensor([(rank + 1) * scale]))
    payload = {"from": rank, "nested": [1, 2.5, "x"], "tensor": torch.arange(3)}
    # Rank 1 is the source so the test can tell a broadcast from a local copy.
    received = distributed.broadcast_object(payload if rank == 1 else None, src=1)
    # objects of different pickled sizes per rank: rank 1's is longer
    gathered = distributed.all_gather_object({"rank": rank, "items": list(range(3 + 40 * rank))})
    saved = distributed.with_rank_states({"value": rank * 10})

    @distributed.rank_zero_only
    def only_on_zero() -> str:
        return "ran"

    distributed.barrier()
    _write(
        out_dir,
        {
            "local_rank": local_rank,
            "rank": rank,
            "world_size": distributed.world_size(),
            "backend": idist.backend(),
            "group_timeout_s": _group_timeout_s(),
            "master_port": os.environ.get("MASTER_PORT"),
            "sum": float(total.item()),
            "is_rank_zero": distributed.is_rank_zero(),
            "rank_zero_only": only_on_zero(),
            "any_rank_one": distributed.agree_any(rank == 1),
            "any_false": distributed.agree_any(False),
            "all_rank_one": distributed.agree_all(rank == 1),
            "all_true": distributed.agree_all(torch.tensor(True)),
            "broadcast_from": received["from"],
            "broadcast_nested": received["nested"],
            "broadcast_tensor": received["tensor"].tolist(),
            "gathered": [(g["rank"], len(g["items"])) for g in gathered],
            "saved_ranks": saved["ranks"],
            "own_state": distributed.own_rank_state(saved),
            "other_world_state": distributed.own_rank_state({"value": 0, "ranks": [1, 2, 3]}),
        },
    )


def raise_on_rank_one(local_rank: int, out_dir: str | None = None) -> None:
    """Rank 1 raises; rank 0 waits in a collective that rank 1 never joins.

    With ``out_dir``, rank 1 first writes the time of the fault to ``fault_time``, so
    a test can measure how long the job took to end after it.
    """
    if idist.get_rank() == 1:
        if out_dir is not None:
            (Path(out_dir) / "fault_time").write_text(repr(time.time()))
        raise ValueError("deliberate failure on rank 1")
    idist.barrier()


def nan_on_rank_one_worker(local_rank: int, out_dir: str) -> None:
    """Train with OptimizerStep under DDP; rank 1's loss is NaN at iteration 3 only.

    Records where each rank stopped and whether its weights moved at that step.
    """
    from ignite.engine import Engine

    from ignitrain.steps import OptimizerStep, StepOptions

    torch.manual_seed(0)
    model = idist.auto_model(torch.nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt_step = OptimizerStep(opt, model, StepOptions())
    weights: dict[int, list[float]] = {}

    def update(engine: Engine, batch: torch.Tensor) -> float:
        opt_step.zero_grad(engine)
        loss = model(batch).pow(2).mean()
        if idist.get_rank() == 1 and engine.state.iteration == 3:
            loss = loss * float("nan")
        value = loss.item()
        opt_step.backward(engine, loss, value=value)
        weights[engine.state.iteration] = model.module.weight.detach().flatten().tolist()
        return value

    engine = Engine(update)
    engine.run([torch.ones(2, 4)] * 6, max_epochs=1)
    _write(out_dir, {"iteration": engine.state.iteration,
                     "stop_reason": getattr(engine.state, "stop_reason", None),
                     "moved_at_3": weights[3] != weights[2]})  # fmt: skip


def setup_worker(local_rank: int, out_dir: str, config: object = None) -> None:
    """Record what launch set up in this process: threads, timeout, logging."""
    import logging

    log = logging.getLogger("ignitrain")
    log.info("hello from rank %d", idist.get_rank())
    _write(
        out_dir,
        {
            "threads": torch.get_num_threads(),
            "group_timeout_s": _group_timeout_s(),
            "ignitrain_level": log.getEffectiveLevel(),
            "console_handlers": len(logging.getLogger().handlers) + len(log.handlers),
        },
    )


def _record_at_exit(out_dir: str, rank: int) -> None:
    # After fn returned and launch's teardown ran: what is still alive in this process.
    import gc

    from torch.nn.parallel import DistributedDataParallel

    gc.collect()
    alive = sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects())
    path = Path(out_dir) / f"exit{rank}.json"
    path.write_text(json.dumps({"ddp_alive": alive, "group": dist.is_initialized()}))


def bf16_training_worker(local_rank: int, out_dir: str, epochs: int = 2) -> None:
    """A small bf16 classification run on digits, 2 processes (the issue 13 abort)."""
    import atexit

    from torch import nn

    import ignitrain
    from ignitrain import TrainConfig, datasets

    atexit.register(_record_at_exit, out_dir, idist.get_rank())
    splits = datasets.digits(seed=0, image=False)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    config = TrainConfig(
        num_epochs=epochs,
        batch_size=64,
        amp="bf16",
        lr=0.01,
        output_dir=str(Path(out_dir) / "run"),
        progress_bar=False,
        seed=0,
    )
    ignitrain.create_classification_trainer(model, config, splits.train, splits.val).train()


def _bf16_main(out_dir: str) -> None:
    # The report: bf16 + 2 spawned processes, logging set up by the script.
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    distributed.launch(bf16_training_worker, out_dir, backend="gloo", nproc_per_node=2)
    print("launch returned", flush=True)


def _torchrun_main(out_dir: str, mode: str) -> None:
    distributed.launch(collectives_worker, out_dir, backend="gloo", timeout=45, scale=10.0)
    if mode == "join_then_fail":
        # A second launch in the same worker runs in the group the first one formed,
        # and a rank that raises there must end the whole run with its traceback.
        distributed.launch(raise_on_rank_one, out_dir, backend="gloo")
    elif mode != "join":
        raise SystemExit(f"unknown mode {mode!r}; use 'join' or 'join_then_fail'")


def exit_after(local_rank: int, codes: list, delays: list) -> None:
    """Sleep ``delays[rank]`` s, then exit with ``codes[rank]`` (a raw process exit)."""
    time.sleep(delays[local_rank])
    sys.stdout.flush()
    os._exit(codes[local_rank])


if __name__ == "__main__":
    if sys.argv[2] == "spawn_bf16":
        _bf16_main(sys.argv[1])
    else:
        _torchrun_main(sys.argv[1], sys.argv[2])
