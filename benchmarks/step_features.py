"""The training-step features of ignitrain against the same features written by hand.

Two models (``--model``):

``mlp`` (default; CPU)
    The digits MLP of ``overhead.py`` (``--width``, batch ``--batch-size``, Adam 1e-3,
    ``--threads`` intra-op threads), trained without validation and without an output
    directory so that only the step differs. For each feature, a hand-written loop and
    ignitrain's ``create_classification_trainer`` configured for it:

    ============  =================================  ======================================
    feature       ignitrain config                   hand-written loop
    ============  =================================  ======================================
    ``none``      defaults                           plain step
    ``accum``     ``grad_accumulation_steps=4``      ``(loss / 4).backward()``, step every 4
                                                     batches and at the end of the epoch
    ``clip``      ``max_grad_norm=1.0``              ``clip_grad_norm_(params, 1.0)``
    ``bf16``      ``amp="bf16"``                     ``torch.autocast("cpu", torch.bfloat16)``
    ============  =================================  ======================================

    All runners are interleaved round by round (order shuffled with a fixed seed, one
    discarded warm-up round); ms/step is the median over epochs of epoch wall time /
    training steps. Both sides call ``loss.item()`` every step.

``resnet`` (for a GPU: ``--device cuda``)
    A ResNet-18-shaped network written here in plain torch (torchvision is not needed),
    on synthetic images made on the device (a small pool of random batches, cycled; no
    download), SGD with momentum, bf16 autocast (``--amp``) and ``torch.compile``
    (``--compile``, on by default on CUDA). ignitrain (``create_classification_trainer``
    with ``amp``, ``compile``, ``device``) against a hand-written loop with the same
    features. ``--warmup`` iterations (compilation included) are excluded; the timed
    ``--steps`` are bracketed by ``torch.cuda.synchronize()``; images/s is reported. Each
    runner starts from ``torch._dynamo.reset()`` so neither reuses the other's graphs.

Usage::

    python benchmarks/step_features.py                                   # CPU, digits MLP
    python benchmarks/step_features.py --quick                           # smoke run
    python benchmarks/step_features.py --device cuda --model resnet      # GPU throughput
    python benchmarks/step_features.py --device cpu --model resnet --steps 5   # smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402
import _report as report  # noqa: E402

__all__ = ["main", "ResNet18", "SyntheticImages", "FEATURES"]

#: feature name -> (TrainConfig options, hand-loop options)
FEATURES: dict[str, dict[str, Any]] = {
    "none": {},
    "accum": {"grad_accumulation_steps": 4},
    "clip": {"max_grad_norm": 1.0},
    "bf16": {"amp": "bf16"},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("mlp", "resnet"), default="mlp")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (resnet mode)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads (mlp default 1; resnet: torch's)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 2 rounds x 1 epoch / 2 resnet steps"
    )
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (mlp 5, resnet 2)")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="mlp 64; resnet cuda 256, cpu 8"
    )
    # mlp mode
    parser.add_argument("--width", type=int, default=128, help="mlp: hidden width")
    parser.add_argument("--epochs", type=int, default=3, help="mlp: epochs per runner per round")
    parser.add_argument(
        "--features", default=",".join(FEATURES), help=f"mlp: subset of {','.join(FEATURES)}"
    )
    # resnet mode
    parser.add_argument(
        "--steps", type=int, default=None, help="resnet: timed steps (cuda 100, cpu 5)"
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="resnet: untimed steps (cuda 20, cpu 2)"
    )
    parser.add_argument("--image-size", type=int, default=None, help="resnet: cuda 224, cpu 32")
    parser.add_argument("--num-classes", type=int, default=1000, help="resnet: classes")
    parser.add_argument("--amp", choices=("bf16", "fp16", "none"), default="bf16", help="resnet")
    parser.add_argument(
        "--compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="resnet: auto = on for cuda",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.epochs, args.steps, args.warmup = 2, 1, 2, 1
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here")
    if args.model == "mlp" and cuda:
        parser.error("--model mlp runs on the CPU; use --model resnet with --device cuda")
    defaults = {
        "rounds": 5 if args.model == "mlp" else 2,
        "batch_size": 64 if args.model == "mlp" else (256 if cuda else 8),
        "steps": 100 if cuda else 5,
        "warmup": 20 if cuda else 2,
        "image_size": 224 if cuda else 32,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.threads is None and args.model == "mlp":
        args.threads = 1
    for name in ("rounds", "batch_size", "steps", "image_size", "width", "epochs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    args.compile_on = args.compile == "on" or (args.compile == "auto" and cuda)
    return args


# -- mlp mode -------------------------------------------------------------------------


def hand_mlp(args: argparse.Namespace, train_ds: Any, options: dict[str, Any]) -> common.RunResult:
    """A hand-written training loop with the feature written out."""
    k = options.get("grad_accumulation_steps", 1)
    max_norm = options.get("max_grad_norm")
    amp = options.get("amp")
    model = common.make_mlp(args.width, seed=args.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = common.train_loader(train_ds, args.batch_size, seed=args.seed)
    n = len(loader)
    clock = common.LapClock()
    t0 = time.perf_counter()
    clock.start()
    for _ in range(args.epochs):
        model.train()
        optimizer.zero_grad(set_to_none=True)
        for i, (x, y) in enumerate(loader):
            with _autocast("cpu", amp):
                loss = F.cross_entropy(model(x), y)
            (loss / k if k > 1 else loss).backward()
            if (i + 1) % k == 0 or i + 1 == n:
                if max_norm is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), max_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            loss.item()
        clock.lap(n)
    return _finish(clock, t0, args.batch_size)


def ignitrain_mlp(
    args: argparse.Namespace, train_ds: Any, options: dict[str, Any]
) -> common.RunResult:
    """ignitrain with the feature switched on in the config; nothing else attached."""
    import ignitrain
    from ignitrain import TrainConfig

    config = TrainConfig(
        num_epochs=args.epochs,
        optimizer="adam",
        lr=1e-3,
        batch_size=args.batch_size,
        device="cpu",
        seed=args.seed,
        progress_bar=False,
        output_dir=None,
        **options,
    )
    model = common.make_mlp(args.width, seed=args.seed)
    trainer = ignitrain.create_classification_trainer(model, config, train_ds)
    clock = common.LapClock()
    common.attach_lap_clock(trainer.engine, clock)
    t0 = time.perf_counter()
    trainer.train()
    return _finish(clock, t0, args.batch_size)


def run_mlp(args: argparse.Namespace) -> dict[str, Any]:
    features = [f.strip() for f in args.features.split(",") if f.strip()]
    unknown = [f for f in features if f not in FEATURES]
    if unknown or not features:
        raise SystemExit(f"--features: unknown {unknown}; choose from {list(FEATURES)}")
    train_ds, _ = common.digits_datasets(seed=args.seed)
    runners: dict[str, Callable[[], common.RunResult]] = {}
    for feature in features:
        options = FEATURES[feature]
        runners[f"hand/{feature}"] = lambda o=options: hand_mlp(args, train_ds, o)
        runners[f"ignitrain/{feature}"] = lambda o=options: ignitrain_mlp(args, train_ds, o)
    print(
        f"step features (mlp): width {args.width}, batch {args.batch_size}, "
        f"{args.threads} thread(s), {args.rounds} rounds x {args.epochs} epochs"
    )
    results = common.run_interleaved(runners, rounds=args.rounds, seed=args.seed)
    summary = {name: common.summarize(res) for name, res in results.items()}
    rows = []
    base = summary.get("hand/none")
    for feature in features:
        hand, ours = summary[f"hand/{feature}"], summary[f"ignitrain/{feature}"]
        rows.append(
            {
                "feature": feature,
                "hand_ms": hand["ms_per_step"],
                "ignitrain_ms": ours["ms_per_step"],
                "ratio": ours["ms_per_step"] / hand["ms_per_step"],
                "hand_cpu_ms": hand["cpu_ms_per_step"],
                "ignitrain_cpu_ms": ours["cpu_ms_per_step"],
                "cpu_ratio": ours["cpu_ms_per_step"] / hand["cpu_ms_per_step"],
                "feature_cost": hand["ms_per_step"] / base["ms_per_step"] if base else float("nan"),
            }
        )
    report.print_table(
        rows,
        [
            ("feature", "feature", ""),
            ("hand_ms", "hand ms/step", ".3f"),
            ("ignitrain_ms", "ignitrain ms/step", ".3f"),
            ("ratio", "ignitrain/hand", ".3f"),
            ("hand_cpu_ms", "hand cpu", ".3f"),
            ("ignitrain_cpu_ms", "ignitrain cpu", ".3f"),
            ("cpu_ratio", "cpu ratio", ".3f"),
            ("feature_cost", "hand vs hand/none", ".3f"),
        ],
        note="ms/step: median over epochs of epoch wall time / train steps (cpu: process CPU time)",
    )
    return {"rows": rows, "summary": summary, "raw": _raw(results)}


# -- resnet mode ----------------------------------------------------------------------


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34's block)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18's layout (stem, 4 stages of 2 basic blocks, 64-512 channels): 11.7 M
    parameters at 1000 classes."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        stages, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout)]
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class SyntheticImages:
    """``length`` batches of random images and labels, made on ``device``.

    A pool of ``pool`` distinct batches is generated once and cycled, so no time goes
    into data generation or host-to-device copies inside the timed loop.
    """

    def __init__(
        self,
        length: int,
        batch_size: int,
        image_size: int,
        num_classes: int,
        device: torch.device,
        *,
        pool: int = 4,
        seed: int = 0,
    ) -> None:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        self.batches = [
            (
                torch.randn(batch_size, 3, image_size, image_size, generator=gen).to(device),
                torch.randint(0, num_classes, (batch_size,), generator=gen).to(device),
            )
            for _ in range(min(pool, length))
        ]
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(self.length):
            yield self.batches[i % len(self.batches)]


def _amp_dtype(amp: str | None) -> torch.dtype | None:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp or "")


def _autocast(device_type: str, amp: str | None) -> contextlib.AbstractContextManager:
    dtype = _amp_dtype(amp)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


def _sync_fn(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def _resnet(args: argparse.Namespace, device: torch.device) -> nn.Module:
    torch.manual_seed(args.seed)
    return ResNet18(args.num_classes).to(device)


def _sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


def hand_resnet(args: argparse.Namespace, device: torch.device) -> common.RunResult:
    """bf16 autocast + compile + SGD, written by hand (``loss.item()`` every step)."""
    torch._dynamo.reset()
    model = _resnet(args, device)
    optimizer = _sgd(model)
    net = torch.compile(model) if args.compile_on else model
    amp = None if args.amp == "none" else args.amp
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
    data = SyntheticImages(
        args.warmup + args.steps, args.batch_size, args.image_size, args.num_classes, device
    )
    sync = _sync_fn(device)
    clock = common.LapClock()
    t0 = time.perf_counter()
    if args.warmup == 0:
        clock.start(sync)
    net.train()
    for i, (x, y) in enumerate(data):
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device.type, amp):
            loss = F.cross_entropy(net(x), y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        loss.item()
        if i + 1 == args.warmup:
            clock.start(sync)
    clock.lap(args.steps)
    return _finish(clock, t0, args.batch_size)


def ignitrain_resnet(args: argparse.Namespace, device: torch.device) -> common.RunResult:
    """``create_classification_trainer(amp=..., compile=..., device=...)``."""
    from ignite.engine import Events

    import ignitrain
    from ignitrain import TrainConfig

    torch._dynamo.reset()
    model = _resnet(args, device)
    config = TrainConfig(
        num_epochs=1,
        optimizer=_sgd,
        amp=False if args.amp == "none" else args.amp,
        compile=args.compile_on,
        device=str(device),
        seed=args.seed,
        progress_bar=False,
        output_dir=None,
        batch_size=args.batch_size,
    )
    data = SyntheticImages(
        args.warmup + args.steps, args.batch_size, args.image_size, args.num_classes, device
    )
    trainer = ignitrain.create_classification_trainer(model, config, data)
    sync = _sync_fn(device)
    clock = common.LapClock()
    if args.warmup == 0:
        trainer.engine.add_event_handler(Events.STARTED, lambda _: clock.start(sync))
    else:
        trainer.engine.add_event_handler(
            Events.ITERATION_COMPLETED(once=args.warmup), lambda _: clock.start(sync)
        )
    trainer.engine.add_event_handler(
        Events.ITERATION_COMPLETED(once=args.warmup + args.steps), lambda _: clock.lap(args.steps)
    )
    t0 = time.perf_counter()
    trainer.train()
    return _finish(clock, t0, args.batch_size)


def run_resnet(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    print(
        f"step features (resnet-18 shape): {device}, batch {args.batch_size}, "
        f"{args.image_size}x{args.image_size}, amp {args.amp}, compile {args.compile_on}, "
        f"{args.rounds} rounds x ({args.warmup} warm-up + {args.steps} timed steps)"
    )
    runners = {
        "hand": lambda: hand_resnet(args, device),
        "ignitrain": lambda: ignitrain_resnet(args, device),
    }
    results = common.run_interleaved(runners, rounds=args.rounds, warmup_rounds=0, seed=args.seed)
    summary = {name: common.summarize(res) for name, res in results.items()}
    rows = []
    for name, stats in summary.items():
        rows.append(
            {
                "runner": name,
                "images_per_s": stats["samples_per_s"],
                "ms_per_step": stats["ms_per_step"],
                "ratio": stats["ms_per_step"] / summary["hand"]["ms_per_step"],
                "run_s": statistics_median([r.run_seconds for r in results[name]]),
            }
        )
    report.print_table(
        rows,
        [
            ("runner", "runner", ""),
            ("images_per_s", "images/s", ".1f"),
            ("ms_per_step", "ms/step", ".2f"),
            ("ratio", "time x hand", ".3f"),
            ("run_s", "run s (incl. warm-up)", ".1f"),
        ],
        note="images/s: timed steps only (warm-up and compilation excluded), median over rounds",
    )
    return {"rows": rows, "summary": summary, "raw": _raw(results)}


def statistics_median(values: list[float]) -> float:
    import statistics

    return statistics.median(values) if values else float("nan")


# -- shared ---------------------------------------------------------------------------


def _finish(clock: common.LapClock, t0: float, samples: int) -> common.RunResult:
    result = clock.result
    result.run_seconds = time.perf_counter() - t0
    result.run_steps = sum(result.steps)
    result.samples = samples
    return result


def _raw(results: dict[str, list[common.RunResult]]) -> dict[str, Any]:
    return {
        name: [
            {"laps": r.laps, "cpu_laps": r.cpu_laps, "steps": r.steps, "run_seconds": r.run_seconds}
            for r in res
        ]
        for name, res in results.items()
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    common.configure(args.threads)
    args.threads = torch.get_num_threads()
    out = run_mlp(args) if args.model == "mlp" else run_resnet(args)
    payload = {
        "benchmark": f"step_features/{args.model}",
        "settings": vars(args),
        "machine": common.machine_info(args.threads),
        **out,
    }
    report.save_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
