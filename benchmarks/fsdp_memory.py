"""Per-rank training memory and step time under DDP against FSDP2, 2 gloo processes.

The same MLP (``--width`` x ``--depth`` Linear layers), AdamW, the same global batch, in
2 spawned processes: once wrapped in DDP (``idist.auto_model``, what
``parallel="ddp"`` does), once sharded with :func:`ignitrain.fsdp.shard_model` (what
``parallel="fsdp"`` does). After the warm-up steps, rank 0 counts the bytes of the
tensors this rank holds itself:

* parameters (under FSDP the local shard of each ``DTensor``),
* gradients (DDP: one full copy; FSDP: the reduce-scattered shard),
* optimizer state (AdamW's ``exp_avg``/``exp_avg_sq``, ``step``).

Under FSDP each should be about half of DDP's with 2 processes (plus padding of
uneven shards). Transient buffers (FSDP's all-gathered block, DDP's buckets) are not
counted: they are what FSDP trades for the saving, one block at a time. Step time is
the median of ``--steps`` timed steps; the ratio FSDP/DDP shows the price of the extra
all-gathers on this machine (gloo over loopback on CPU: a pessimistic figure for FSDP).

Usage::

    python benchmarks/fsdp_memory.py            # width 1024, depth 6, 20 timed steps
    python benchmarks/fsdp_memory.py --quick    # width 256, depth 4, 5 steps
    python benchmarks/fsdp_memory.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["main", "measure_worker", "tensor_bytes"]


def tensor_bytes(t: torch.Tensor | None) -> int:
    """Bytes this rank holds for ``t`` (the local shard of a ``DTensor``)."""
    if t is None:
        return 0
    local = t.to_local() if hasattr(t, "to_local") else t
    return local.numel() * local.element_size()


def _model(width: int, depth: int) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.GELU()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def _counts(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, int]:
    params = list(model.parameters())
    state = sum(
        tensor_bytes(v)
        for st in opt.state.values()
        for v in st.values()
        if isinstance(v, torch.Tensor)
    )
    return {
        "params": sum(tensor_bytes(p) for p in params),
        "grads": sum(tensor_bytes(p.grad) for p in params),
        "optimizer": state,
    }


def measure_worker(local_rank: int, mode: str, args: dict, out: str) -> None:
    """One mode (``"ddp"`` or ``"fsdp"``) in one of the spawned processes."""
    torch.set_num_threads(1)
    import ignite.distributed as idist

    from ignitrain.fsdp import shard_model

    model = _model(args["width"], args["depth"])
    net = shard_model(model) if mode == "fsdp" else idist.auto_model(model)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    per_rank = args["batch"] // idist.get_world_size()
    g = torch.Generator().manual_seed(idist.get_rank())
    x = torch.randn(per_rank, args["width"], generator=g)
    y = torch.randint(0, 10, (per_rank,), generator=g)
    times = []
    for i in range(args["warmup"] + args["steps"]):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=False)  # keep the gradients allocated, as a run does
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        if i >= args["warmup"]:
            times.append(time.perf_counter() - start)
    record = {"bytes": _counts(net, opt), "step_s": statistics.median(times)}
    if idist.get_rank() == 0:
        Path(out, f"{mode}.json").write_text(json.dumps(record))


def _mib(n: int) -> str:
    return f"{n / 2**20:8.2f}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small model, few steps")
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--depth", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--json", default=None, help="also write the results here")
    ns = parser.parse_args(argv)
    args = {
        "width": ns.width or (256 if ns.quick else 1024),
        "depth": ns.depth or (4 if ns.quick else 6),
        "steps": ns.steps or (5 if ns.quick else 20),
        "warmup": 2,
        "batch": 64,
    }
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from ignitrain.distributed import launch

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as out:
        for mode in ("ddp", "fsdp"):
            launch(measure_worker, mode, args, out, backend="gloo", nproc_per_node=2)
            results[mode] = json.loads(Path(out, f"{mode}.json").read_text())
    ddp, fsdp = results["ddp"], results["fsdp"]
    total = {m: sum(r["bytes"].values()) for m, r in results.items()}
    results["fsdp_over_ddp_bytes"] = total["fsdp"] / total["ddp"]
    results["fsdp_over_ddp_step_time"] = fsdp["step_s"] / ddp["step_s"]
    results["config"] = args
    print(f"MLP width {args['width']} depth {args['depth']}, AdamW, 2 gloo processes (CPU)")
    print(f"{'per rank, MiB':<16}{'DDP':>10}{'FSDP':>10}{'FSDP/DDP':>10}")
    for key in ("params", "grads", "optimizer"):
        d, f = ddp["bytes"][key], fsdp["bytes"][key]
        print(f"{key:<16}{_mib(d):>10}{_mib(f):>10}{f / d:>10.3f}")
    print(
        f"{'total':<16}{_mib(total['ddp']):>10}{_mib(total['fsdp']):>10}"
        f"{results['fsdp_over_ddp_bytes']:>10.3f}"
    )
    print(
        f"{'step time, ms':<16}{ddp['step_s'] * 1e3:>10.2f}{fsdp['step_s'] * 1e3:>10.2f}"
        f"{results['fsdp_over_ddp_step_time']:>10.3f}"
    )
    if ns.json:
        Path(ns.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
