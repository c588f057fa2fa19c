"""Worker functions for tests/test_fsdp.py and tests/handlers/test_sharded.py.

Spawned processes import these by module name (the tests directory is on ``sys.path``
under pytest and spawn children inherit it), so they live at the top level here. Every
worker caps torch at one thread: 2 processes on 2 cores would oversubscribe otherwise.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import ignite.distributed as idist
import torch
from ignite.engine import Engine
from torch import nn
from torch.utils.data import TensorDataset

__all__ = [
    "make_model",
    "global_batch",
    "trainer_curve_worker",
    "step_features_worker",
    "resume_worker",
    "plain_resume",
    "compile_worker",
    "ignite_checkpoint_worker",
    "flavors_worker",
    "offload_worker",
    "seq2seq_worker",
]

GLOBAL_BATCH = 8


def _one_thread() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def make_model(seed: int = 0, out: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, out)
    )


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(GLOBAL_BATCH, 6, generator=g), torch.randn(GLOBAL_BATCH, 3, generator=g)


def _local_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = global_batch(step)
    n, rank = idist.get_world_size(), idist.get_rank()
    per = GLOBAL_BATCH // n
    return x[rank * per : (rank + 1) * per], y[rank * per : (rank + 1) * per]


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _full_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: _full(v).detach().clone() for k, v in model.state_dict().items()}


def _write(path: Path, obj: object) -> None:
    if idist.get_rank() == 0:
        torch.save(obj, path)


# -- trainer level: FSDP vs DDP loss curves -----------------------------------------------


def trainer_curve_worker(local_rank: int, out_dir: str) -> None:
    """Train the same regression model on the same data under DDP and under FSDP."""
    _one_thread()
    import ignitrain

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, generator=g)
    data = TensorDataset(x, x[:, :1] * 2.0 + 0.1 * torch.randn(64, 1, generator=g))
    curves = {}
    for parallel in ("ddp", "fsdp"):
        cfg = ignitrain.TrainConfig(
            num_epochs=3,
            batch_size=16,
            lr=0.05,
            optimizer="adam",
            shuffle=True,
            seed=0,
            grad_accumulation_steps=2,
            max_grad_norm=1.0,
            log_every=1,
            progress_bar=False,
            tensorboard=False,
            parallel=parallel,
        )
        trainer = ignitrain.create_regression_trainer(make_model(out=1), cfg, data, data)
        trainer.train()
        curves[parallel] = {
            "loss": list(trainer.history["train/batch_loss"]),
            "val": list(trainer.history["val/loss"]),
            "fsdp": type(trainer.model).__name__,
        }
    if idist.get_rank() == 0:
        (Path(out_dir) / "curves.json").write_text(json.dumps(curves))


# -- step features on a sharded model -------------------------------------------------------


def _engine_at(iteration: int, epoch_length: int) -> Engine:
    engine = Engine(lambda e, b: None)
    engine.state.iteration = iteration
    engine.state.epoch_length = epoch_length
    return engine


def step_features_worker(local_rank: int, out_dir: str) -> None:
    """Clip norm, accumulation without reduce-scatter, NaN agreement, under FSDP."""
    _one_thread()
    from ignitrain.fsdp import FSDPOptions, shard_model
    from ignitrain.steps import OptimizerStep, StepOptions

    record: dict = {}
    x, y = _local_batch(0)
    gx, gy = global_batch(0)

    # 1. clip_grad_norm_ on DTensor gradients returns the norm of the whole gradient
    ref = make_model()
    nn.functional.mse_loss(ref(gx), gy).backward()
    ref_norm = nn.utils.get_total_norm([p.grad for p in ref.parameters()])
    model = shard_model(make_model(), FSDPOptions())
    nn.functional.mse_loss(model(x), y).backward()
    norm = nn.utils.clip_grad_norm_(list(model.parameters()), 1e-3)
    record["norm"] = float(_full(norm))
    record["ref_norm"] = float(ref_norm)
    record["clipped_norm"] = float(
        _full(nn.utils.get_total_norm([p.grad for p in model.parameters()]))
    )

    # 2. accumulation: no reduce-scatter after the first micro-batch, the mean after both
    model = shard_model(make_model(), FSDPOptions())
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    step = OptimizerStep(opt, model, StepOptions(accumulation_steps=2))
    half = x.shape[0] // 2
    for it, sl in ((1, slice(0, half)), (2, slice(half, None))):
        engine = _engine_at(it, 2)
        with step.forward_context(engine):
            loss = nn.functional.mse_loss(model(x[sl]), y[sl])
        step.backward(engine, loss)
        if it == 1:
            record["grads_after_first"] = [p.grad is not None for p in model.parameters()]
            import warnings

            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                step.state_dict()  # mid-group: FSDP holds the gradients, say so
            record["mid_group_warning"] = [str(w.message) for w in caught]
    accumulated = [_full(p.grad).clone() for p in model.parameters()]
    ref = make_model()
    nn.functional.mse_loss(ref(gx), gy).backward()
    record["accum_max_diff"] = max(
        float((a - p.grad).abs().max()) for a, p in zip(accumulated, ref.parameters(), strict=True)
    )

    # 3. a NaN loss on rank 1 only stops both ranks, neither applies an update
    engine = _engine_at(1, 1)
    step = OptimizerStep(opt, model, StepOptions())
    loss = nn.functional.mse_loss(model(x), y)
    if idist.get_rank() == 1:
        loss = loss * float("nan")
    record["stepped"] = step.backward(engine, loss)
    record["stop_reason"] = getattr(engine.state, "stop_reason", None)
    record["should_terminate"] = engine.should_terminate

    # 4. amp="bf16" -> MixedPrecisionPolicy: bf16 compute, fp32 shards and gradients
    model = shard_model(make_model(), FSDPOptions(param_dtype=torch.bfloat16))
    out = model(x)
    nn.functional.mse_loss(out.float(), y).backward()
    record["bf16_out_dtype"] = str(out.dtype)
    record["bf16_param_dtypes"] = sorted({str(p.dtype) for p in model.parameters()})
    record["bf16_grad_dtypes"] = sorted({str(p.grad.dtype) for p in model.parameters()})
    (Path(out_dir) / f"rank{idist.get_rank()}.json").write_text(json.dumps(record))


# -- save / kill / load / continue ----------------------------------------------------------


class Counter:
    """A stateful object of the kind the trainer checkpoints (engine, history)."""

    def __init__(self) -> None:
        self.steps = 0

    def state_dict(self) -> dict:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: range, counter: Counter) -> None:
    for s in steps:
        x, y = _local_batch(s)
        opt.zero_grad(set_to_none=True)
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        counter.steps += 1


def _build(sharded: bool, seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    from ignitrain.fsdp import FSDPOptions, shard_model

    model = make_model(seed)
    if sharded:
        model = shard_model(model, FSDPOptions())
    return model, torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)


def _optimizer_state(model: nn.Module, opt: torch.optim.Optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    sd = get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True))
    return {
        f"{k}.{n}": v.detach().clone()
        for k, st in sd["state"].items()
        for n, v in st.items()
        if isinstance(v, torch.Tensor)
    }


def resume_worker(local_rank: int, out_dir: str, phase: str, total: int, at: int) -> None:
    """``phase``: ``"straight"`` trains ``total`` steps and saves at ``at``; ``"resume"``
    loads that folder into a fresh model (another seed) and trains on to ``total``."""
    _one_thread()
    from ignitrain.handlers.sharded import load_sharded, save_sharded

    out = Path(out_dir)
    sharded = idist.get_world_size() > 1
    counter = Counter()
    if phase == "straight":
        model, opt = _build(sharded, seed=0)
        _train(model, opt, range(at), counter)
        save_sharded(
            {"model": model, "optimizer": opt, "counter": counter},
            out / f"ck_ws{idist.get_world_size()}",
            meta={"iteration": at},
        )
        _write(out / f"saved_ws{idist.get_world_size()}.pt", _full_params(model))
        _write(out / f"saved_opt_ws{idist.get_world_size()}.pt", _optimizer_state(model, opt))
        _train(model, opt, range(at, total), counter)
        _write(out / f"straight_ws{idist.get_world_size()}.pt", _full_params(model))
        return
    import warnings

    src = out / phase.split(":", 1)[1]  # "resume:ck_ws2"
    model, opt = _build(sharded, seed=123)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        doc = load_sharded(src, {"model": model, "optimizer": opt, "counter": counter})
    loaded = _full_params(model)
    loaded_opt = _optimizer_state(model, opt)
    _train(model, opt, range(at, total), counter)
    _write(
        out / f"resumed_from_{src.name}_ws{idist.get_world_size()}.pt",
        {
            "loaded": loaded,
            "loaded_opt": loaded_opt,
            "final": _full_params(model),
            "counter": counter.steps,
            "meta": doc["meta"],
            "warnings": [str(w.message) for w in caught if issubclass(w.category, UserWarning)],
        },
    )


def plain_resume(out_dir: str, phase: str, total: int, at: int) -> None:
    """``resume_worker`` on this process, with no process group."""
    resume_worker(0, out_dir, phase, total, at)


# -- torch.compile on a sharded model ---------------------------------------------------------


def compile_worker(local_rank: int, out_dir: str) -> None:
    """Three steps of a sharded tiny model, eager and ``torch.compile``-d: the losses."""
    _one_thread()
    from ignitrain.fsdp import FSDPOptions, shard_model

    losses: dict[str, list[float]] = {}
    for mode in ("eager", "compiled"):
        model = shard_model(make_model(), FSDPOptions())
        net = torch.compile(model) if mode == "compiled" else model
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        losses[mode] = []
        for s in range(3):
            x, y = _local_batch(s)
            opt.zero_grad()
            loss = nn.functional.mse_loss(net(x), y)
            loss.backward()
            opt.step()
            losses[mode].append(loss.item())
    (Path(out_dir) / f"compile{idist.get_rank()}.json").write_text(json.dumps(losses))


# -- Ignite's Checkpoint with the sharded saver -----------------------------------------------


def ignite_checkpoint_worker(local_rank: int, out_dir: str, resume_from: str | None) -> None:
    """An Ignite ``Engine`` trains a sharded model 3 epochs with Ignite's ``Checkpoint`` +
    ``ShardedSaver`` every epoch (``n_saved=2``); or, with ``resume_from``, fresh
    processes load that folder and run on to epoch 3. Rank 0 writes the final weights."""
    _one_thread()
    from ignite.engine import Events
    from ignite.handlers import Checkpoint

    from ignitrain.handlers.sharded import ShardedSaver, checkpointables, load_sharded_objects

    model, opt = _build(True, seed=0 if resume_from is None else 77)
    batches = [_local_batch(s) for s in range(4)]

    def step(engine: Engine, batch: tuple) -> float:
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(model(batch[0]), batch[1])
        loss.backward()
        opt.step()
        return loss.item()

    engine = Engine(step)
    to_save = checkpointables({"model": model, "optimizer": opt, "trainer": engine})
    saver = ShardedSaver(
        Path(out_dir) / "checkpoints",
        sharded=["model", "optimizer"],
        meta_fn=lambda: {"iteration": engine.state.iteration, "epoch": engine.state.epoch},
    )
    checkpoint = Checkpoint(to_save, saver, n_saved=2)
    engine.add_event_handler(Events.EPOCH_COMPLETED, checkpoint)
    if resume_from is not None:
        load_sharded_objects(Path(out_dir) / "checkpoints" / resume_from, to_save)
    engine.run(batches, max_epochs=3)
    name = "straight" if resume_from is None else "resumed"
    _write(Path(out_dir) / f"ignite_{name}.pt", _full_params(model))
    if idist.get_rank() == 0:
        (Path(out_dir) / f"ignite_{name}.json").write_text(
            json.dumps({"last": str(saver.folder_of(checkpoint.last_checkpoint))})
        )


# -- every flavor under parallel="fsdp" -------------------------------------------------------


class OwnLossModel(nn.Module):
    """Hugging Face style: ``model(x=..., labels=...)`` returns ``{"loss", "logits"}``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        logits = self.net(x)
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return {"loss": loss, "logits": logits}


class DictSamples(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor, labels: torch.Tensor) -> None:
        self.x, self.labels = x, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "labels": self.labels[i]}


def flavors_worker(local_rank: int, out_dir: str) -> None:
    """One short run of the classification, autoencoder, GAN and generic flavors with
    ``parallel="fsdp"``: each records whether its losses are finite.

    Not here: WGAN-GP. Its gradient penalty differentiates twice through the
    discriminator (``autograd.grad(create_graph=True)``), and FSDP2 frees the gathered
    parameters after the first backward ("storage of size 0"): the factory refuses it
    (tests/test_fsdp.py::test_wgan_gp_is_refused_under_fsdp_at_factory_time). Seq2seq
    has its own worker (:func:`seq2seq_worker`).
    """
    _one_thread()
    import math

    import ignitrain

    def cfg(**kw: object) -> ignitrain.TrainConfig:
        base = dict(
            num_epochs=2, batch_size=32, lr=0.01, progress_bar=False, tensorboard=False,
            parallel="fsdp", seed=0, log_every=1,
        )  # fmt: skip
        return ignitrain.TrainConfig(**{**base, **kw})

    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 6, generator=g)
    labels = (x[:, 0] > 0).long()
    results: dict[str, object] = {}

    def mlp(i: int, o: int) -> nn.Module:
        return nn.Sequential(nn.Linear(i, 16), nn.ReLU(), nn.Linear(16, o))

    runs = {
        "classification": lambda: ignitrain.create_classification_trainer(
            mlp(6, 2), cfg(grad_accumulation_steps=2, max_grad_norm=1.0),
            TensorDataset(x, labels), TensorDataset(x, labels),
        ),
        "autoencoder": lambda: ignitrain.create_autoencoder_trainer(
            nn.Sequential(mlp(6, 3), mlp(3, 6)), cfg(), TensorDataset(x), TensorDataset(x)
        ),
        "gan_bce": lambda: ignitrain.create_gan_trainer(
            mlp(4, 6), mlp(6, 1), cfg(), TensorDataset(x), latent_dim=4, fixed_noise_size=0
        ),
        "generic": lambda: ignitrain.create_trainer(
            OwnLossModel(), cfg(), DictSamples(x, labels), DictSamples(x, labels)
        ),
    }  # fmt: skip
    for name, build in runs.items():
        torch.manual_seed(0)
        try:
            trainer = build()
            history = trainer.train()
            losses = {k: list(history[k]) for k in history.names() if "loss" in k}
            finite = all(math.isfinite(float(v)) for vals in losses.values() for v in vals)
            results[name] = {
                "ok": bool(losses) and finite,
                "sharded": all(
                    type(m).__name__.startswith("FSDP") for m in trainer.models.values()
                ),
            }
        except Exception as exc:  # recorded: the test names the flavor that failed
            results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:400]}
    (Path(out_dir) / f"flavors{idist.get_rank()}.json").write_text(json.dumps(results))


def offload_worker(local_rank: int, out_dir: str) -> None:
    """``cpu_offload=True`` on a CPU-only machine: a warning, and training still works."""
    _one_thread()
    import math
    import warnings

    from ignitrain.fsdp import FSDPOptions, shard_model

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = shard_model(make_model(), FSDPOptions(cpu_offload=True))
    x, y = _local_batch(0)
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward()
    torch.optim.Adam(model.parameters()).step()
    if idist.get_rank() == 0:
        (Path(out_dir) / "offload.json").write_text(
            json.dumps(
                {"finite": math.isfinite(loss.item()), "warnings": [str(w.message) for w in caught]}
            )
        )


class _Seq2Seq(nn.Module):
    """Encoder GRU's last state starts the decoder GRU: ``(src, tgt_in) -> (N, T, V)``."""

    def __init__(self, vocab: int, hidden: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden, padding_idx=0)
        self.enc = nn.GRU(hidden, hidden, batch_first=True)
        self.dec = nn.GRU(hidden, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        _, state = self.enc(self.embed(src))
        hidden, _ = self.dec(self.embed(tgt_in), state)
        return self.out(hidden)


def _reversal(num: int, seed: int, digits: int = 5, max_len: int = 4) -> TensorDataset:
    """Padded digit strings (PAD 0) and their ``BOS(1) reversed EOS(2)`` targets."""
    gen = torch.Generator().manual_seed(seed)
    src = torch.zeros((num, max_len), dtype=torch.long)
    tgt = torch.zeros((num, max_len + 2), dtype=torch.long)
    for i in range(num):
        length = int(torch.randint(2, max_len + 1, (1,), generator=gen))
        tokens = torch.randint(0, digits, (length,), generator=gen) + 3
        src[i, :length] = tokens
        tgt[i, 0], tgt[i, 1 : length + 1], tgt[i, length + 1] = 1, tokens.flip(0), 2
    return TensorDataset(src, tgt)


def seq2seq_worker(local_rank: int, out_dir: str) -> None:
    """A seq2seq run with ``parallel="fsdp"`` (accumulation and clipping on): its
    per-epoch train losses, validation token accuracy and whether the model is sharded."""
    _one_thread()
    import ignitrain

    torch.manual_seed(0)
    config = ignitrain.TrainConfig(
        num_epochs=4, batch_size=32, optimizer="adam", lr=1e-2, progress_bar=False,
        tensorboard=False, parallel="fsdp", seed=0, grad_accumulation_steps=2,
        max_grad_norm=1.0,
    )  # fmt: skip
    trainer = ignitrain.create_seq2seq_trainer(
        _Seq2Seq(vocab=8), config, _reversal(512, 0), _reversal(128, 1),
        pad_idx=0, bos_idx=1, eos_idx=2,
    )  # fmt: skip
    history = trainer.train()
    result = {
        "sharded": type(trainer.model).__name__.startswith("FSDP"),
        "loss": [float(v) for v in history["train/loss"]],
        "names": sorted(history.names()),
    }
    (Path(out_dir) / f"seq2seq{idist.get_rank()}.json").write_text(json.dumps(result))
