"""Checkpoints: atomic writes, safe loading, the store, payloads, and the Ignite handler.

Every file here is a real file on disk read back with ``torch.load(weights_only=True)``.
Disk-full failures are simulated by making ``torch.save`` or ``os.replace`` raise
``OSError(ENOSPC)``.
"""

from __future__ import annotations

import enum
import errno
import json
import math
import os
import pickle
import random
from pathlib import Path

import ignite.distributed as idist
import numpy as np
import pytest
import torch
from ignite.engine import DeterministicEngine, Engine, Events
from ignite.handlers import Checkpoint
from torch import nn

from ignitrain.handlers.checkpoint import (
    CheckpointError,
    CheckpointStore,
    RNGState,
    attach_checkpoints,
    build_payload,
    capture_rng_state,
    infer_mode,
    load_checkpoint,
    load_objects,
    nan_safe_score,
    restore_rng_state,
    safe_load,
    save_atomic,
)

pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")


# -- helpers ------------------------------------------------------------------------


def tiny(out: int = 3, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, out))


def stepped_adam(model: nn.Module) -> torch.optim.Adam:
    """An Adam optimizer with state (one real step on random data)."""
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    return opt


def payload_of(model: nn.Module, iteration: int = 1, **objects) -> dict:
    return build_payload({"model": model, **objects}, {"iteration": iteration, "epoch": 1})


def write(store: CheckpointStore, model: nn.Module, it: int, kind="periodic", **kw) -> Path:
    """One file through the store's primitive (what ``DurableSaver`` calls)."""
    return store.write(payload_of(model, it), f"checkpoint_{kind}_iter{it:08d}.pt", kind, **kw)


def saving(store: CheckpointStore, model: nn.Module, kind: str = "periodic"):
    """``save(iteration)`` -> the file: ``save_now`` of ``attach_checkpoints``' Ignite
    ``Checkpoint`` (Ignite decides what to keep; DurableSaver defers the removal)."""
    engine = Engine(lambda e, b: None)
    handler = attach_checkpoints(engine, {"model": model}, store, save_every=0)

    def save(iteration: int) -> Path:
        engine.state.iteration, engine.state.epoch = iteration, 1
        return handler.save_now(kind)

    return save


def clone_params(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def same_params(module: nn.Module, params: dict[str, torch.Tensor]) -> bool:
    now = module.state_dict()
    return now.keys() == params.keys() and all(torch.equal(now[k], params[k]) for k in now)


def temps(dirname: Path) -> list[str]:
    return sorted(p.name for p in Path(dirname).iterdir() if p.name.endswith(".tmp"))


def names(dirname: Path, kind: str | None = None) -> list[str]:
    files = sorted(p.name for p in Path(dirname).glob("*.pt"))
    return [f for f in files if kind is None or f.startswith(f"checkpoint_{kind}_")]


def enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def digits_loader(batch_size: int = 32, n: int = 128):
    """A real (bundled) data set: the first ``n`` scikit-learn digits, 64 features."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x[:n] / 16.0, dtype=torch.float32)
    y = torch.tensor(y[:n])
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, n, batch_size)]


def training_engine(model: nn.Module, opt: torch.optim.Optimizer, cls=Engine) -> Engine:
    def step(engine, batch):
        x, y = batch
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    return cls(step)


class ValuesEvaluator:
    """A real evaluator Engine whose metric takes the next scripted value per run."""

    def __init__(self, name: str, values: list[float]):
        self.values = list(values)
        self.engine = Engine(lambda e, b: None)
        self.runs = 0

        @self.engine.on(Events.COMPLETED)
        def publish(engine):
            engine.state.metrics[name] = self.values[self.runs]
            engine.state.metrics["run"] = self.runs + 1
            self.runs += 1

    def attach_to(self, trainer: Engine) -> None:
        trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: self.engine.run([0]))


class Log:
    """A stateful object (like History) appended to by an EPOCH_COMPLETED handler."""

    def __init__(self):
        self.entries: list[int] = []

    def state_dict(self):
        return {"entries": list(self.entries)}

    def load_state_dict(self, state):
        self.entries = list(state["entries"])


# -- atomic writes -------------------------------------------------------------------


def test_save_atomic_writes_a_weights_only_loadable_file_and_no_temp(tmp_path):
    model = tiny()
    path = save_atomic(payload_of(model), tmp_path / "a.pt")
    loaded = torch.load(path, weights_only=True)
    assert torch.equal(loaded["model"]["0.weight"], model[0].weight)
    assert temps(tmp_path) == []


def test_save_atomic_failure_keeps_the_previous_file_and_removes_the_temp(tmp_path, monkeypatch):
    model = tiny()
    path = save_atomic(payload_of(model, 1), tmp_path / "a.pt")
    before = path.read_bytes()
    real_save = torch.save

    def partial_then_full(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")  # bytes reach the temp file, then the disk fills
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", partial_then_full)
    with pytest.raises(OSError) as info:
        save_atomic(payload_of(model, 2), path)
    assert info.value.errno == errno.ENOSPC
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == before
    assert temps(tmp_path) == []
    assert safe_load(path)["iteration"] == 1


# -- the store: disk full, eviction, pointer -----------------------------------------


@pytest.mark.parametrize("failing", ["torch.save", "os.replace"])
def test_disk_full_on_second_save_keeps_previous_checkpoint_and_latest(
    tmp_path, monkeypatch, failing
):
    model = tiny()
    store = CheckpointStore(tmp_path, n_saved=1)
    save = saving(store, model)
    first = save(1)

    if failing == "torch.save":
        monkeypatch.setattr(torch, "save", enospc)
    else:
        real_replace = os.replace

        def replace(src, dst):
            if str(dst).endswith(".pt"):
                enospc()
            real_replace(src, dst)

        monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError) as info:
        save(2)  # Ignite's Checkpoint calls remove(first) before this write
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()

    assert names(tmp_path) == [first.name]  # nothing evicted, nothing partial
    assert temps(tmp_path) == []
    assert store.latest_path() == first
    assert safe_load(first)["iteration"] == 1

    # A crash in the middle of a save leaves a temp file; the next good save removes it.
    (tmp_path / ".checkpoint_periodic_iter00000002.pt.dead.tmp").write_bytes(b"partial")
    third = write(store, model, 3, remove=[first.name])
    assert temps(tmp_path) == []
    assert names(tmp_path) == [third.name]
    assert store.latest_path() == third


def test_eviction_keeps_n_saved_newest_and_only_after_a_successful_write(tmp_path, monkeypatch):
    model = tiny()
    store = CheckpointStore(tmp_path, n_saved=2)
    save = saving(store, model)
    for it in (1, 2, 3):
        save(it)
    assert names(tmp_path) == [
        "checkpoint_periodic_iter00000002.pt",
        "checkpoint_periodic_iter00000003.pt",
    ]
    monkeypatch.setattr(torch, "save", enospc)
    with pytest.raises(OSError):
        save(4)
    monkeypatch.undo()
    assert len(names(tmp_path)) == 2
    # Kinds are evicted separately: a "last" file does not push out periodic ones.
    saving(store, model, "last")(5)
    assert len(names(tmp_path, "periodic")) == 2
    pointer = json.loads(store.pointer_path.read_text())
    assert pointer == {
        "file": "checkpoint_last_iter00000005.pt",
        "kind": "last",
        "iteration": 5,
        "epoch": 1,
    }


def test_store_keeps_the_n_best_scores(tmp_path):
    values = [0.5, 0.7, 0.6, 0.9, 0.65, math.nan]
    run_training(tmp_path, epochs=6, save_every=0, n_saved=2, values=values, metric="accuracy")
    # a new store over the same directory (a resumed run) knows the scores on disk
    assert CheckpointStore(tmp_path, n_saved=2).best_scores() == [0.9, 0.7]


def corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "bit-flipped":
        weight = torch.load(path, weights_only=True)["model"]["0.weight"]
        find_and_flip(path, weight)
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "missing":
        path.unlink()


@pytest.mark.parametrize("how", ["truncated", "bit-flipped", "empty", "missing"])
def test_latest_skips_a_corrupt_newest_checkpoint_with_a_warning(tmp_path, how):
    model = tiny()
    store = CheckpointStore(tmp_path, n_saved=3)
    saved = [write(store, model, it) for it in (1, 2, 3)]
    corrupt(saved[-1], how)
    with pytest.warns(UserWarning, match="unusable"):
        assert store.latest_path() == saved[1]
    with pytest.warns(UserWarning):
        path, payload = store.load_latest()
    assert payload["iteration"] == 2


def test_latest_falls_back_by_iteration_with_a_broken_pointer_and_none_when_nothing_valid(tmp_path):
    model = tiny()
    store = CheckpointStore(tmp_path, n_saved=3)
    assert store.latest_path() is None  # empty directory
    for it in (3, 1, 2):  # written out of order: iteration decides, not write time
        write(store, model, it)
    # garbled, or empty as a power loss leaves a pointer renamed before its data reached
    # the disk (issue 16: the pointer has no fsync of its own)
    for broken in ("{not json", ""):
        store.pointer_path.write_text(broken)
        with pytest.warns(UserWarning, match="pointer"):
            assert store.latest_path().name == "checkpoint_periodic_iter00000003.pt"
    for path in tmp_path.glob("*.pt"):
        corrupt(path, "truncated")
    with pytest.warns(UserWarning):
        assert store.latest_path() is None


def test_background_store_commits_later_and_reports_failures_at_wait(tmp_path, monkeypatch):
    model = tiny()
    store = CheckpointStore(tmp_path, n_saved=1, background=True)
    first = write(store, model, 1)
    store.wait()
    assert safe_load(first)["iteration"] == 1

    real_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith(".pt"):
            enospc()
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    write(store, model, 2, remove=[first.name])  # serialised; commit fails later
    with pytest.raises(OSError):
        store.wait()
    monkeypatch.undo()
    assert store.latest_path() == first
    assert names(tmp_path) == [first.name] and temps(tmp_path) == []


class _FullDisk:
    """A file whose every write fails with ENOSPC (what a full disk does)."""

    def __init__(self, f):
        self.f = f

    def write(self, _data):
        enospc()

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.mark.parametrize("in_memory", [True, False])
def test_background_store_disk_full_while_writing_keeps_the_previous_checkpoint(
    tmp_path, monkeypatch, in_memory
):
    # Small states are serialised to memory and written by the worker (error at the next
    # wait); beyond IN_MEMORY_LIMIT the caller writes the temp file (error at once).
    import builtins

    from ignitrain.handlers.checkpoint import store as ckpt  # the module that reads it

    model = tiny()
    store = CheckpointStore(tmp_path, n_saved=1, background=True)
    first = write(store, model, 1)
    store.wait()
    if not in_memory:
        monkeypatch.setattr(ckpt, "IN_MEMORY_LIMIT", 0)
    real_open = builtins.open

    def open_(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return _FullDisk(f) if str(file).endswith(".tmp") and "w" in mode else f

    monkeypatch.setattr(builtins, "open", open_)
    with pytest.raises(OSError) as info:
        write(store, model, 2, remove=[first.name])
        assert in_memory, "a state written by the caller fails in write() itself"
        store.wait()
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert store.latest_path() == first
    assert names(tmp_path) == [first.name] and temps(tmp_path) == []
    third = write(store, model, 3, remove=[first.name])
    store.wait()
    assert safe_load(third)["iteration"] == 3 and names(tmp_path) == [third.name]


# -- safe loading ------------------------------------------------------------------


def find_and_flip(path: Path, marker: torch.Tensor) -> None:
    """Flip one bit inside ``marker``'s bytes in the file (tensor data, not structure)."""
    data = bytearray(path.read_bytes())
    at = bytes(data).find(marker.numpy().tobytes())
    assert at > 0
    data[at + 5] ^= 0x04
    path.write_bytes(bytes(data))


def test_bit_flip_in_tensor_data_is_detected_although_torch_load_accepts_it(tmp_path):
    marker = torch.full((64,), 1.2345)
    path = save_atomic(
        build_payload({"m": nn.ParameterDict()}, {"marker": marker}), tmp_path / "c.pt"
    )
    find_and_flip(path, marker)
    silently = torch.load(path, weights_only=True)  # torch does not check the CRCs
    assert not torch.equal(silently["marker"], marker)
    with pytest.raises(CheckpointError, match=rf"{path}.*corrupted"):
        safe_load(path)


@pytest.mark.parametrize(
    "case, reason",
    [
        ("missing", "does not exist"),
        ("empty", "empty"),
        ("truncated", "truncated"),
        ("bit-flipped", "corrupted"),
        ("json", "JSON"),
        ("bare state_dict", "not an ignitrain checkpoint"),
        ("list", "not an ignitrain checkpoint"),
        ("future version", "format version 3"),
        ("directory", "directory"),
    ],
)
def test_bad_files_raise_checkpoint_error_naming_the_path(tmp_path, case, reason):
    model = tiny()
    path = tmp_path / "bad.pt"
    if case in ("truncated", "bit-flipped", "empty", "missing"):
        save_atomic(payload_of(model), path)
        if case == "bit-flipped":
            find_and_flip(path, model[0].weight.detach())
        else:
            corrupt(path, case)
    elif case == "json":
        path.write_text(json.dumps({"ignitrain_format": 1, "state": {}}))
    elif case == "bare state_dict":
        torch.save(model.state_dict(), path)
    elif case == "list":
        torch.save([1, 2], path)
    elif case == "future version":
        torch.save({"ignitrain_format": 3, "state": {}}, path)
    elif case == "directory":
        path.mkdir()
    with pytest.raises(CheckpointError, match=reason) as info:
        safe_load(path)
    assert str(path) in str(info.value)


class Evil:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    # Control: the payload is really malicious -- plain unpickling runs it.
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(Evil(control), protocol=2))
    assert control.exists()

    marker = tmp_path / "pwned"
    evil = {"ignitrain_format": 1, "state": {}, "x": Evil(marker)}
    torch_file = tmp_path / "evil_torch.pt"
    torch.save(evil, torch_file)  # a zip checkpoint with a malicious data.pkl
    raw_file = tmp_path / "evil_raw.pt"
    raw_file.write_bytes(pickle.dumps(evil, protocol=2))  # a legacy bare pickle
    for path in (torch_file, raw_file):
        with pytest.raises(CheckpointError, match="refused as unsafe") as info:
            load_checkpoint(path, model=tiny())
        assert str(path) in str(info.value) and "system" in str(info.value)
    modern = tmp_path / "evil_p5.pt"
    modern.write_bytes(pickle.dumps(evil, protocol=5))
    with pytest.raises(CheckpointError, match=str(modern)):
        safe_load(modern)
    assert not marker.exists()


# -- loading into objects: validation first ----------------------------------------------


def test_model_mismatch_lists_keys_and_loads_nothing(tmp_path):
    source = tiny(out=3, seed=0)
    path = save_atomic(
        build_payload({"model": source, "optimizer": stepped_adam(source), "rng": RNGState()}),
        tmp_path / "c.pt",
    )
    target = tiny(out=5, seed=1)
    target.add_module("head", nn.Linear(5, 2))
    optimizer = stepped_adam(target)
    params, opt_state = clone_params(target), optimizer.state_dict()["state"][0]["exp_avg"].clone()
    torch.manual_seed(123)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, model=target, optimizer=optimizer, rng=RNGState())
    message = str(info.value)
    assert str(path) in message and "nothing was loaded" in message
    assert "missing keys" in message and "head.weight" in message and "head.bias" in message
    assert "2.weight (model expects (5, 8), checkpoint has (3, 8))" in message
    assert "2.bias (model expects (5,), checkpoint has (3,))" in message
    assert "parameter group 0 has 4 parameters in the checkpoint, 6 in the optimizer" in message
    assert same_params(target, params)
    assert torch.equal(optimizer.state_dict()["state"][0]["exp_avg"], opt_state)
    after_failed_load = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(after_failed_load, torch.rand(3))  # the RNG state was not loaded either

    smaller = nn.Sequential(nn.Linear(4, 8))
    with pytest.raises(CheckpointError, match=r"unexpected keys .*2\.weight, 2\.bias"):
        load_checkpoint(path, model=smaller)
    # strict=False tolerates missing/unexpected keys, never wrong shapes.
    load_checkpoint(path, model=smaller, strict=False)
    assert torch.equal(smaller[0].weight, source[0].weight)
    with pytest.raises(CheckpointError, match="mis-shaped"):
        load_checkpoint(path, model=tiny(out=5), strict=False)


def test_optimizer_state_shapes_and_group_counts_are_checked(tmp_path):
    model = tiny()
    path = save_atomic(build_payload({"optimizer": stepped_adam(model)}), tmp_path / "c.pt")
    other = tiny(out=5)
    with pytest.raises(CheckpointError, match=r"'exp_avg' of parameter 2 has shape \(3, 8\)"):
        load_checkpoint(path, optimizer=stepped_adam(other))
    two_groups = torch.optim.SGD(
        [{"params": list(other[0].parameters())}, {"params": list(other[2].parameters())}], lr=0.1
    )
    with pytest.raises(CheckpointError, match="1 parameter group"):
        load_checkpoint(path, optimizer=two_groups)


def test_named_states_like_a_gan_and_missing_names(tmp_path):
    g, d = tiny(seed=1), tiny(seed=2)
    path = save_atomic(build_payload({"generator": g, "discriminator": d}), tmp_path / "gan.pt")
    with pytest.raises(
        CheckpointError,
        match=r"no state named 'model' \(the checkpoint holds: discriminator, generator\)",
    ):
        load_checkpoint(path, model=tiny())
    g2, d2 = tiny(seed=3), tiny(seed=4)
    payload = load_checkpoint(path, generator=g2, discriminator=d2)
    assert same_params(g2, clone_params(g)) and same_params(d2, clone_params(d))
    assert payload["ignitrain_format"] == 2
    with pytest.warns(UserWarning, match="'model' left as it is"):
        load_checkpoint(path, model=tiny(), generator=g2, strict=False)


def test_wrapped_models_load_both_ways(tmp_path):
    plain = tiny(seed=0)
    compiled = torch.compile(tiny(seed=5))  # OptimizedModule; nothing is compiled until called
    parallel = nn.DataParallel(tiny(seed=6))
    assert next(iter(compiled.state_dict())).startswith("_orig_mod.")
    assert next(iter(parallel.state_dict())).startswith("module.")

    path = save_atomic(build_payload({"model": parallel}), tmp_path / "dp.pt")
    assert "0.weight" in safe_load(path)["model"]  # saved without the wrapper prefix
    load_checkpoint(path, model=compiled)
    assert same_params(compiled._orig_mod, clone_params(parallel.module))

    # A checkpoint written by someone else straight from a DDP model's state_dict.
    prefixed = {"module." + k: v for k, v in plain.state_dict().items()}
    foreign = tmp_path / "foreign.pt"
    torch.save({"ignitrain_format": 1, "state": {"model": prefixed}}, foreign)
    for target in (tiny(seed=7), nn.DataParallel(tiny(seed=8))):
        load_checkpoint(foreign, model=target)
        assert same_params(getattr(target, "module", target), clone_params(plain))


# -- RNG and payload contents -------------------------------------------------------------


def draws():
    return torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)], np.random.randn()


def test_rng_capture_and_restore_reproduce_draws_after_a_weights_only_round_trip(tmp_path):
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    np.random.randn()  # numpy caches a Gaussian: that is state too
    state = capture_rng_state()
    expected = draws()
    path = save_atomic(build_payload({"rng": RNGState()}, {"direct": state}), tmp_path / "r.pt")
    loaded = torch.load(path, weights_only=True)
    draws()  # move every generator on
    restore_rng_state(loaded["direct"])
    got = draws()
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert got[2] == expected[2] and got[3] == expected[3]
    with pytest.raises(CheckpointError, match="lacks numpy"):
        restore_rng_state({"python": [], "torch": torch.get_rng_state()})


def test_python_rng_words_are_one_tensor_and_the_older_list_form_still_restores():
    # issue 16: 625 ints pickled one by one were 44% of torch.save's calls for a small
    # checkpoint; files written before hold the list, which must restore the same draws
    random.seed(7)
    state = capture_rng_state()
    assert isinstance(state["python"][1], torch.Tensor) and state["python"][1].numel() == 625
    expected = [random.random() for _ in range(4)]
    older = {**state, "python": [state["python"][0], state["python"][1].tolist(), None]}
    for form in (state, older):
        random.random()
        restore_rng_state(form)
        assert [random.random() for _ in range(4)] == expected


def test_payload_with_deterministic_engine_scheduler_and_metadata_loads_weights_only(tmp_path):
    model = tiny(out=10)
    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    engine = training_engine(model, opt, DeterministicEngine)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda _: sched.step())
    engine.run(digits_loader(), max_epochs=2)

    # The trap this design avoids: Ignite's own engine state does not load weights_only.
    torch.save(engine.state_dict(), tmp_path / "ignite_state.pt")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "ignite_state.pt", weights_only=True)

    objects = {"model": model, "optimizer": opt, "scheduler": sched, "trainer": engine}
    extra = {
        "config": {"lr": 0.1, "betas": (0.9, 0.99), "metrics": ["accuracy"]},
        "model_description": {"class": "torch.nn.Sequential", "args": {}},
        "metrics": {"accuracy": np.float64(0.75), "confusion": np.eye(2)},
    }
    path = save_atomic(build_payload(objects, extra), tmp_path / "c.pt")
    loaded = torch.load(path, weights_only=True)  # plain torch, no extra safe globals
    assert loaded["metrics"]["accuracy"] == 0.75 and torch.equal(
        loaded["metrics"]["confusion"], torch.eye(2, dtype=torch.float64)
    )

    model2 = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 10))
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=1, gamma=0.5)
    engine2 = training_engine(model2, opt2, DeterministicEngine)
    payload = load_checkpoint(path, model2, opt2, scheduler=sched2, trainer=engine2)
    assert payload["config"]["betas"] == (0.9, 0.99)
    assert same_params(model2, clone_params(model))
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == 0.025
    assert sched2.state_dict() == sched.state_dict()
    assert engine2.state.iteration == engine.state.iteration == 8 and engine2.state.epoch == 2
    py_state, torch_state, np_state = engine2.state.rng_states
    assert isinstance(np_state[1], np.ndarray) and np_state[1].dtype == np.uint32
    assert isinstance(py_state, tuple) and torch_state.dtype == torch.uint8


def test_state_that_weights_only_would_refuse_is_rejected_at_save_time():
    class NumpyState:
        def state_dict(self):
            return {"arr": np.zeros(3)}

    with pytest.raises(CheckpointError, match=r"state\['thing'\]\['arr'\].*numpy array"):
        build_payload({"thing": NumpyState()})

    class Opaque:
        def state_dict(self):
            return {"fn": len}

    with pytest.raises(CheckpointError, match="builtin_function_or_method"):
        build_payload({"thing": Opaque()})

    class Color(enum.IntEnum):
        RED = 1

    class EnumState:
        def state_dict(self):
            return {"color": Color.RED}  # an int, but pickled by class: refused

    with pytest.raises(CheckpointError, match=r"state\['thing'\]\['color'\].*Color"):
        build_payload({"thing": EnumState()})


# -- the Ignite handler -------------------------------------------------------------


def run_training(
    tmp_path,
    *,
    epochs=2,
    save_every=2,
    n_saved=None,
    values=(0.5, 0.4, 0.3),
    metric="val_loss",
    background=False,
    after_iteration=None,
    **kwargs,
):
    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = training_engine(model, opt)
    evaluator = ValuesEvaluator(metric, list(values))
    log = Log()
    evaluator.attach_to(trainer)  # validation first, like the trainer factories do
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: log.entries.append(e.state.epoch))
    store = CheckpointStore(tmp_path, n_saved=n_saved, background=background)
    handler = attach_checkpoints(
        trainer,
        {"model": model, "optimizer": opt, "trainer": trainer, "log": log, "rng": RNGState()},
        store,
        save_every=save_every,
        evaluator=evaluator.engine,
        best_metric=metric,
        extra_fn=lambda: {"config": {"save_every": save_every}},
        **kwargs,
    )
    if after_iteration is not None:  # runs after the checkpoint handler's ITERATION_COMPLETED
        trainer.add_event_handler(Events.ITERATION_COMPLETED, after_iteration)
    trainer.run(digits_loader(), max_epochs=epochs)  # 4 iterations per epoch
    return trainer, evaluator, store, handler


def test_periodic_checkpoint_at_an_epochs_last_iteration_is_written_after_validation(tmp_path):
    on_disk = {}  # what a crash right after each iteration's handlers would leave

    def look(engine):
        on_disk[engine.state.iteration] = names(tmp_path, "periodic")

    _, _, store, _ = run_training(tmp_path, epochs=2, save_every=2, after_iteration=look)
    # Iteration 4 ends epoch 1: its checkpoint waits for EPOCH_COMPLETED (after validation).
    # The save points run after every handler of their event (here `look`, attached
    # after them), so iteration 2's file appears once its handlers are done.
    assert on_disk[2] == []
    assert on_disk[3] == on_disk[4] == ["checkpoint_periodic_iter00000002.pt"]
    assert names(tmp_path, "periodic") == [
        f"checkpoint_periodic_iter{i:08d}.pt" for i in (2, 4, 6, 8)
    ]
    at_2 = safe_load(tmp_path / "checkpoint_periodic_iter00000002.pt")
    at_4 = safe_load(tmp_path / "checkpoint_periodic_iter00000004.pt")
    # Mid-epoch: nothing validated yet. Epoch end: the epoch's validation and the
    # EPOCH_COMPLETED handler registered before attach_checkpoints already ran.
    assert at_2["metrics"] == {} and at_2["log"] == {"entries": []}
    assert at_4["metrics"] == {"val_loss": 0.5, "run": 1}
    assert at_4["log"] == {"entries": [1]}
    assert at_4["trainer"]["iteration"] == 4 and at_4["epoch"] == 1
    assert at_4["config"] == {"save_every": 2}


def test_save_every_epoch_off_and_last_after_early_termination(tmp_path):
    run_training(tmp_path / "epoch", epochs=2, save_every=-1)
    assert names(tmp_path / "epoch", "periodic") == [
        "checkpoint_periodic_epoch0001.pt",
        "checkpoint_periodic_epoch0002.pt",
    ]
    assert names(tmp_path / "epoch", "last") == ["checkpoint_last_iter00000008.pt"]

    model = tiny()
    trainer = Engine(lambda e, b: None)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=5), lambda e: e.terminate())
    store = CheckpointStore(tmp_path / "off")
    attach_checkpoints(trainer, {"model": model, "trainer": trainer}, store, save_every=0)
    trainer.run(range(4), max_epochs=3)
    assert names(tmp_path / "off") == ["checkpoint_last_iter00000005.pt"]
    assert store.latest_path() == tmp_path / "off" / "checkpoint_last_iter00000005.pt"


@pytest.mark.parametrize(
    "metric, values, mode, kept",
    [
        ("val_loss", [0.5, 0.3, math.nan, 0.4, 0.2], None, [0.2, 0.3]),  # "loss": minimise
        ("accuracy", [0.5, 0.7, math.nan, 0.6, 0.8], None, [0.8, 0.7]),  # else maximise
        ("accuracy", [0.5, 0.7, math.nan, 0.6, 0.4], "min", [0.4, 0.5]),  # explicit mode
        ("val_loss", [math.nan, math.nan, math.nan, math.nan, math.nan], None, []),
    ],
)
def test_best_checkpoints_by_metric_mode_and_nan(tmp_path, metric, values, mode, kept):
    _, _, store, _ = run_training(
        tmp_path, epochs=5, save_every=0, n_saved=2, values=values, metric=metric, best_mode=mode
    )
    best = [safe_load(p)["metrics"][metric] for p in sorted(tmp_path.glob("checkpoint_best_*.pt"))]
    assert sorted(best) == sorted(kept)
    assert not any(math.isnan(v) for v in best)


def test_best_and_periodic_at_the_same_moment_share_one_file(tmp_path):
    _, _, store, handler = run_training(tmp_path, epochs=1, save_every=-1, n_saved=1)
    periodic = tmp_path / "checkpoint_periodic_epoch0001.pt"
    best = tmp_path / "checkpoint_best_val_loss=0.5_iter00000004.pt"
    assert periodic.stat().st_ino == best.stat().st_ino  # a hard link: written once
    assert safe_load(best)["checkpoint"]["kind"] == "periodic"


def test_saving_per_epoch_a_mid_epoch_evaluation_after_the_save_point_is_saved_at_once(
    tmp_path,
):
    # With save_every=-1 the per-iteration handler returns at once (issue 16), yet it
    # still marks the iteration's save point as passed: an evaluation run after it in
    # the same iteration writes its best there, holding that iteration's weights.
    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = training_engine(model, opt)
    evaluator = ValuesEvaluator("val_loss", [0.5, 0.4])
    evaluator.attach_to(trainer)
    attach_checkpoints(
        trainer,
        {"model": model, "trainer": trainer},
        CheckpointStore(tmp_path, n_saved=None),
        save_every=-1,
        evaluator=evaluator.engine,
        best_metric="val_loss",
    )

    # attached once the epoch started (after the handler moved its save points last):
    # runs after iteration 3's save point
    @trainer.on(Events.EPOCH_STARTED)
    def evaluate_later(engine):
        engine.add_event_handler(
            Events.ITERATION_COMPLETED(once=3), lambda _: evaluator.engine.run([0])
        )

    trainer.run(digits_loader(), max_epochs=1)  # 4 iterations
    assert names(tmp_path, "best") == [
        "checkpoint_best_val_loss=0.4_iter00000004.pt",
        "checkpoint_best_val_loss=0.5_iter00000003.pt",
    ]
    at_3 = safe_load(tmp_path / "checkpoint_best_val_loss=0.5_iter00000003.pt")
    assert at_3["trainer"]["iteration"] == 3 and at_3["metrics"]["val_loss"] == 0.5


def test_evaluations_after_training_do_not_make_best_checkpoints(tmp_path):
    _, evaluator, store, _ = run_training(tmp_path, epochs=1, save_every=0, values=[0.5, 0.1])
    assert store.best_scores() == [-0.5]
    evaluator.engine.run([0])  # e.g. a test-set evaluation after training: 0.1
    assert store.best_scores() == [-0.5]


@pytest.mark.parametrize("background", [False, True])
def test_resuming_objects_from_a_handler_checkpoint(tmp_path, background):
    _, _, store, handler = run_training(tmp_path, epochs=2, save_every=3, background=background)
    # every 3 iterations: 3, 6 (mid-epoch) and the last checkpoint at 8
    assert names(tmp_path, "periodic") == [
        "checkpoint_periodic_iter00000003.pt",
        "checkpoint_periodic_iter00000006.pt",
    ]
    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    engine, log = training_engine(model, opt), Log()
    path, payload = store.load_latest()
    assert path == handler.last_path
    load_objects({"model": model, "optimizer": opt, "trainer": engine, "log": log}, payload)
    assert engine.state.iteration == 8 and engine.state.epoch == 2 and log.entries == [1, 2]
    engine.run(digits_loader(), max_epochs=3)  # continues with epoch 3
    assert engine.state.iteration == 12


def test_argument_validation(tmp_path):
    store = CheckpointStore(tmp_path)
    engine = Engine(lambda e, b: None)
    model = tiny()
    with pytest.raises(ValueError, match="n_saved=0 is not allowed"):
        CheckpointStore(tmp_path, n_saved=0)
    with pytest.raises(ValueError, match="prefix='my_run' is not allowed"):
        CheckpointStore(tmp_path, prefix="my_run")
    handler = attach_checkpoints(Engine(lambda e, b: None), {"model": model}, store)
    with pytest.raises(ValueError, match="kind='weekly' is not allowed"):
        handler.save_now("weekly")
    with pytest.raises(ValueError, match="kind='best' is not allowed"):
        handler.save_now("best")
    with pytest.raises(ValueError, match="tag='../x' is not allowed"):
        handler.save_now("periodic", "../x")
    with pytest.raises(TypeError, match="expected an Ignite Engine"):
        attach_checkpoints(model, {"model": model}, store)
    with pytest.raises(TypeError, match="expected a CheckpointStore or a directory"):
        attach_checkpoints(engine, {"model": model}, 3)
    with pytest.raises(TypeError, match=r"objects\['x'\]=int is not allowed"):
        attach_checkpoints(engine, {"x": 3}, store)
    with pytest.raises(ValueError, match="best_metric=None is not allowed"):
        attach_checkpoints(engine, {"model": model}, store, evaluator=Engine(lambda e, b: None))
    with pytest.raises(ValueError, match="reserved key"):
        build_payload({"model": model}, {"ignitrain_objects": 1})
    with pytest.raises(TypeError, match="expected a dict"):
        load_objects([model], payload_of(model))
    assert [
        infer_mode(n) for n in ("val_loss", "Error_rate", "rmse", "val/mae", "accuracy", "f1")
    ] == ["min", "min", "min", "min", "max", "max"]


def test_save_now_with_a_tag_of_its_own_writes_a_file_ignite_does_not_evict(tmp_path):
    engine = Engine(lambda e, b: None)
    objects = {"model": tiny(), "trainer": engine}
    handler = attach_checkpoints(engine, objects, tmp_path, save_every=0, save_last=False)
    engine.add_event_handler(
        Events.ITERATION_COMPLETED,
        lambda e: handler.save_now("preempt", f"manual{e.state.iteration}"),
    )
    engine.run(range(2), max_epochs=1)
    assert names(tmp_path) == ["checkpoint_preempt_manual1.pt", "checkpoint_preempt_manual2.pt"]
    assert CheckpointStore(tmp_path).latest_path() == handler.last_path
    assert safe_load(handler.last_path)["trainer"]["iteration"] == 2


def test_a_best_metric_the_evaluator_does_not_compute_is_an_error(tmp_path):
    model = tiny()
    trainer = Engine(lambda e, b: None)
    evaluator = ValuesEvaluator("val_loss", [0.5])
    evaluator.attach_to(trainer)
    attach_checkpoints(
        trainer,
        {"model": model},
        CheckpointStore(tmp_path),
        evaluator=evaluator.engine,
        best_metric="val_los",
    )
    with pytest.raises(KeyError, match="'val_los' is not computed by the evaluator .*val_loss"):
        trainer.run(range(2), max_epochs=1)


# -- several processes: only rank 0 writes ---------------------------------------------


def _rank0_worker(local_rank: int, dirname: str) -> None:
    store = CheckpointStore(dirname)
    model = tiny()
    path = write(store, model, 1)
    Path(dirname, f"rank{idist.get_rank()}.txt").write_text(f"{store.writes} {path.name}")


@pytest.mark.slow
def test_only_rank_zero_writes(tmp_path):
    from ignitrain.distributed import free_port

    with idist.Parallel(backend="gloo", nproc_per_node=2, master_port=free_port()) as parallel:
        parallel.run(_rank0_worker, str(tmp_path))
    assert (tmp_path / "rank0.txt").read_text() == "True checkpoint_periodic_iter00000001.pt"
    assert (tmp_path / "rank1.txt").read_text() == "False checkpoint_periodic_iter00000001.pt"
    assert names(tmp_path) == ["checkpoint_periodic_iter00000001.pt"]


def test_load_checkpoint_from_a_run_directory_takes_the_newest_valid(tmp_path):
    model = nn.Linear(2, 2)
    engine = Engine(lambda e, b: None)
    store = CheckpointStore(tmp_path / "run" / "checkpoints")
    attach_checkpoints(engine, {"model": model, "trainer": engine}, store, save_every=2)
    engine.run(range(5), max_epochs=1)
    fresh = nn.Linear(2, 2)
    payload = load_checkpoint(tmp_path / "run", model=fresh)
    assert payload["iteration"] == 5  # the "last" checkpoint
    assert torch.equal(fresh.weight, model.weight)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="No valid checkpoint in .*empty"):
        load_checkpoint(tmp_path / "empty", model=fresh)


# -- built on Ignite's Checkpoint: its defects and what ours does instead --------------


def _ignite_periodic(dirname: Path, model: nn.Module):
    from ignite.handlers import DiskSaver

    saver = DiskSaver(dirname, create_dir=True, require_empty=False)
    return Checkpoint({"model": model}, saver, n_saved=1)


def test_ignite_disk_saver_evicts_before_writing_and_ours_keeps_the_old_file(tmp_path, monkeypatch):
    # Ignite's defect: Checkpoint calls save_handler.remove(old) before writing the new
    # file, so with n_saved=1 a failed write (disk full) leaves no checkpoint at all.
    model, engine = tiny(), Engine(lambda e, b: None)
    plain = _ignite_periodic(tmp_path / "ignite", model)
    engine.state.iteration = 1
    plain(engine)
    assert names(tmp_path / "ignite") == ["model_1.pt"]
    engine.state.iteration = 2
    monkeypatch.setattr(torch, "save", enospc)
    with pytest.raises(OSError):
        plain(engine)
    monkeypatch.undo()
    assert names(tmp_path / "ignite") == []  # the defect, reproduced

    # ours: the same Ignite Checkpoint class with DurableSaver, which defers remove()
    ours_dir = tmp_path / "ours"
    trainer = Engine(lambda e, b: None)
    handler = attach_checkpoints(
        trainer, {"model": model}, CheckpointStore(ours_dir, n_saved=1), save_every=1
    )
    from ignite.handlers.checkpoint import BaseSaveHandler

    assert all(isinstance(c, Checkpoint) for c in handler.checkpoints.values())
    assert isinstance(handler.checkpoints["periodic"].save_handler, BaseSaveHandler)
    trainer.add_event_handler(
        Events.ITERATION_STARTED(once=2), lambda _: monkeypatch.setattr(torch, "save", enospc)
    )
    with pytest.raises(OSError):
        trainer.run(range(3), max_epochs=1)
    monkeypatch.undo()
    assert names(ours_dir) == ["checkpoint_periodic_iter00000001.pt"]
    assert safe_load(ours_dir / "checkpoint_periodic_iter00000001.pt")["iteration"] == 1
    assert temps(ours_dir) == []


def test_ignite_checkpoint_takes_nan_as_best_and_ours_does_not(tmp_path):
    # Ignite's defect: a NaN first score is kept, and `new > nan` is always False, so
    # with n_saved=1 no later (better) score replaces it.
    from ignite.handlers import DiskSaver

    scores = iter([math.nan, 0.9, 0.95])
    saver = DiskSaver(tmp_path / "ignite", require_empty=False)
    best = Checkpoint({"model": tiny()}, saver, score_function=lambda e: next(scores), n_saved=1)
    engine = Engine(lambda e, b: None)
    for it in (1, 2, 3):
        engine.state.iteration = it
        best(engine)
    assert names(tmp_path / "ignite") == ["model_nan.pt"]  # NaN is "best" for good

    assert nan_safe_score(lambda e: math.nan, 1.0)(engine) == -math.inf
    assert nan_safe_score(lambda e: 0.3, -1.0)(engine) == -0.3
    run_training(tmp_path / "ours", epochs=3, save_every=0, n_saved=1, values=[math.nan, 0.5, 0.4])
    assert names(tmp_path / "ours", "best") == ["checkpoint_best_val_loss=0.4_iter00000012.pt"]


def test_ignite_load_objects_reads_an_ignitrain_checkpoint(tmp_path):

    trainer, _, store, handler = run_training(tmp_path, epochs=2, save_every=-1)
    path = tmp_path / "checkpoint_periodic_epoch0002.pt"
    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    engine = training_engine(model, opt)
    to_load = {"model": model, "optimizer": opt, "trainer": engine}
    Checkpoint.load_objects(to_load, torch.load(path, weights_only=True))
    saved = handler.objects["model"].state_dict()
    assert all(torch.equal(model.state_dict()[k], saved[k]) for k in saved)
    assert engine.state.iteration == 8
    assert opt.state_dict()["param_groups"][0]["lr"] == 0.1


def test_a_checkpoint_of_ignitrain_0_1_0_still_loads(tmp_path):
    # built the way ignitrain 0.1.0 wrote it: objects nested under "state", format 1
    model = tiny(seed=5)
    opt = stepped_adam(model)
    old = {
        "ignitrain_format": 1,
        "state": {"model": model.state_dict(), "optimizer": opt.state_dict()},
        "checkpoint": {"kind": "periodic", "tag": "iter00000003", "score": None},
        "iteration": 3,
        "epoch": 1,
        "metrics": {"accuracy": 0.5},
        "config": {"lr": 0.01},
    }
    path = tmp_path / "checkpoint_periodic_iter00000003.pt"
    torch.save(old, path)
    fresh = tiny(seed=6)
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=0.01)
    payload = load_checkpoint(path, model=fresh, optimizer=fresh_opt)
    assert same_params(fresh, clone_params(model))
    assert payload["ignitrain_format"] == 2 and payload["model"].keys() == model.state_dict().keys()
    assert payload["metrics"] == {"accuracy": 0.5} and payload["config"] == {"lr": 0.01}
    assert CheckpointStore(tmp_path).latest_path() == path


class WeightsEvaluator:
    """Validation that records the weights it evaluated and a scripted score."""

    def __init__(self, model: nn.Module, values: list[float]):
        self.model, self.values, self.seen = model, list(values), []
        self.engine = Engine(lambda e, b: None)

        @self.engine.on(Events.COMPLETED)
        def publish(engine):
            self.seen.append(clone_params(self.model))
            engine.state.metrics["accuracy"] = self.values[len(self.seen) - 1]


@pytest.mark.parametrize("order", ["checkpoints first", "validation first"])
def test_best_holds_the_evaluated_weights_and_epoch_files_see_every_handler(tmp_path, order):
    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = training_engine(model, opt)
    evaluator = WeightsEvaluator(model, [0.2, 0.6, 0.4])
    log = Log()

    def validate(engine):  # the user's handlers, as in Ignite's MNIST example
        evaluator.engine.run([0])
        log.entries.append(engine.state.epoch)

    def attach():
        attach_checkpoints(
            trainer,
            {"model": model, "optimizer": opt, "trainer": trainer, "log": log},
            CheckpointStore(tmp_path, n_saved=3),
            save_every=-1,
            evaluator=evaluator.engine,
            best_metric="accuracy",
        )

    if order == "checkpoints first":
        attach()
        trainer.add_event_handler(Events.EPOCH_COMPLETED, validate)
    else:
        trainer.add_event_handler(Events.EPOCH_COMPLETED, validate)
        attach()
    trainer.run(digits_loader(), max_epochs=3)
    for epoch, value in ((1, 0.2), (2, 0.6), (3, 0.4)):
        best = safe_load(tmp_path / f"checkpoint_best_accuracy={value}_iter{4 * epoch:08d}.pt")
        assert all(torch.equal(best["model"][k], v) for k, v in evaluator.seen[epoch - 1].items())
        assert best["metrics"]["accuracy"] == value
        periodic = safe_load(tmp_path / f"checkpoint_periodic_epoch{epoch:04d}.pt")
        assert periodic["log"] == {"entries": list(range(1, epoch + 1))}  # validation ran
    # best and periodic of one moment: one file (serialised once)
    a, b = (
        tmp_path / "checkpoint_best_accuracy=0.6_iter00000008.pt",
        tmp_path / ("checkpoint_periodic_epoch0002.pt"),
    )
    assert a.stat().st_ino == b.stat().st_ino


@pytest.mark.parametrize(
    "case",
    ["etc passwd", "paren dot", "pickle garbage", "truncated zip", "fuzzed bytes", "flipped bits"],
)
def test_every_malformed_input_is_a_checkpoint_error_naming_the_file(tmp_path, case):
    good = tmp_path / "good.pt"
    save_atomic(payload_of(tiny()), good)
    data = good.read_bytes()
    rng = random.Random(case)
    if case == "etc passwd":
        inputs = [b"root:x:0:0:root:/root:/bin/bash\n" * 3]
    elif case == "paren dot":
        inputs = [b"(.", b"(", b".", b"\x80\x02(."]
    elif case == "pickle garbage":
        inputs = [b"\x80\x04\x95" + bytes(rng.randrange(256) for _ in range(40)) for _ in range(20)]
    elif case == "truncated zip":
        inputs = [data[:n] for n in (10, 100, len(data) // 2, len(data) - 30, len(data) - 1)]
    elif case == "fuzzed bytes":
        inputs = [
            bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))) for _ in range(40)
        ]
    else:
        inputs = []
        for _ in range(20):
            flipped = bytearray(data)
            for _ in range(3):
                flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
            inputs.append(bytes(flipped))
    for i, raw in enumerate(inputs):
        path = tmp_path / f"bad{i}.pt"
        path.write_bytes(raw)
        try:
            safe_load(path)
        except CheckpointError as e:
            assert str(path) in str(e) and "<payload>" not in str(e)
        else:  # a flipped bit in an unchecked spot may leave a valid file: still loads safely
            assert case == "flipped bits"
    with pytest.raises(CheckpointError, match="/etc/passwd"):
        load_checkpoint("/etc/passwd", model=tiny())


def test_optimizer_states_are_checked_before_anything_is_loaded(tmp_path):
    model = tiny(seed=1)
    adam = stepped_adam(model)
    engine_state = Engine(lambda e, b: None)
    path = save_atomic(
        build_payload({"model": model, "optimizer": adam, "trainer": engine_state}),
        tmp_path / "adam.pt",
    )
    target = tiny(seed=2)
    before = clone_params(target)
    sgd = torch.optim.SGD(target.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(CheckpointError, match=r"another optimizer class .*SGD.*momentum") as info:
        load_checkpoint(path, model=target, optimizer=sgd)
    assert str(path) in str(info.value) and "nothing was loaded" in str(info.value)
    assert same_params(target, before)
    assert "betas" not in sgd.param_groups[0]

    # an Adam state lacking "step": Adam's load_state_dict fails half-way; refused first
    payload = safe_load(path)
    for entry in payload["optimizer"]["state"].values():
        entry.pop("step")
    adam2 = torch.optim.Adam(target.parameters(), lr=0.01)
    with pytest.raises(CheckpointError, match="refuses the state .*step"):
        load_objects({"model": target, "optimizer": adam2}, payload, source=str(path))
    assert same_params(target, before) and adam2.state_dict()["state"] == {}


def test_latest_skips_symlinks_out_of_the_run_dir_and_unreadable_files(tmp_path):
    store = CheckpointStore(tmp_path, n_saved=None)
    good = write(store, tiny(), 1)
    evil = tmp_path / "checkpoint_periodic_iter00000009.pt"
    evil.symlink_to("/etc/passwd")
    (tmp_path / "checkpoint_periodic_iter00000008.pt").write_bytes(b"(.")
    store.pointer_path.write_text(json.dumps({"file": evil.name}))
    with pytest.warns(UserWarning) as caught:
        assert store.latest_path() == good
    text = " ".join(str(w.message) for w in caught)
    assert str(evil) in text and "checkpoint_periodic_iter00000008.pt" in text


def test_stale_temp_files_of_a_killed_run_are_removed_when_the_next_one_starts(tmp_path):
    stale = tmp_path / ".checkpoint_last_iter00000005.pt.dead.tmp"
    tmp_path.mkdir(exist_ok=True)
    stale.write_bytes(b"x" * 1000)
    seen = []
    engine = Engine(lambda e, b: None)
    attach_checkpoints(engine, {"model": tiny()}, CheckpointStore(tmp_path), save_every=0)
    engine.add_event_handler(
        Events.ITERATION_COMPLETED(once=1), lambda _: seen.append(temps(tmp_path))
    )
    engine.run(range(2), max_epochs=1)
    assert seen == [[]]  # gone before any checkpoint was written


def test_save_every_counts_optimizer_steps_with_accumulation(tmp_path):
    # epoch length 5, accumulation 2: groups of 2, 2, 1 -> steps end at iterations
    # 2, 4, 5, 7, 9, 10; every 2nd step is saved: 4, 7, 10
    engine = Engine(lambda e, b: None)
    attach_checkpoints(
        engine,
        {"model": tiny()},
        CheckpointStore(tmp_path, n_saved=None),
        save_every=2,
        accumulation_steps=2,
    )
    engine.run(range(5), max_epochs=2)
    assert names(tmp_path, "periodic") == [
        f"checkpoint_periodic_iter{i:08d}.pt" for i in (4, 7, 10)
    ]
    with pytest.raises(ValueError, match="accumulation_steps=0 is not allowed"):
        attach_checkpoints(engine, {"model": tiny()}, tmp_path, accumulation_steps=0)


def test_attached_handlers_are_listed_and_a_removed_one_stays_removed(tmp_path):
    engine = Engine(lambda e, b: None)
    handler = attach_checkpoints(
        engine, {"model": tiny()}, CheckpointStore(tmp_path, n_saved=None), save_every=-1
    )
    assert handler.handlers and all(e.has_event_handler(f, ev) for e, ev, f in handler.handlers)
    (epoch_end,) = [f for e, ev, f in handler.handlers if ev == Events.EPOCH_COMPLETED]
    engine.remove_event_handler(epoch_end, Events.EPOCH_COMPLETED)
    engine.run(range(2), max_epochs=2)
    assert not engine.has_event_handler(epoch_end, Events.EPOCH_COMPLETED)
    assert names(tmp_path) == ["checkpoint_last_iter00000004.pt"]  # no periodic files


def test_files_beyond_n_saved_from_an_earlier_run_go_after_the_next_durable_save(tmp_path):
    store = CheckpointStore(tmp_path, n_saved=None)
    for it in (1, 2, 3):
        write(store, tiny(), it)
    engine = Engine(lambda e, b: None)
    engine.add_event_handler(Events.STARTED, lambda e: setattr(e.state, "iteration", 3))
    attach_checkpoints(
        engine, {"model": tiny()}, CheckpointStore(tmp_path, n_saved=2), save_every=1
    )
    seen = []
    engine.add_event_handler(
        Events.ITERATION_STARTED(once=4), lambda _: seen.append(names(tmp_path))
    )
    engine.run(range(5), max_epochs=1)
    assert len(seen[0]) == 3  # nothing removed before a new file was durable
    assert names(tmp_path, "periodic") == [
        "checkpoint_periodic_iter00000004.pt",
        "checkpoint_periodic_iter00000005.pt",
    ]


# -- issue 12 item 5: write failures at the next iteration, no non-finite best -------------


def test_background_write_failure_raises_at_the_next_iteration_naming_the_file(
    tmp_path, monkeypatch
):
    import builtins
    import time

    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    trainer = training_engine(model, torch.optim.SGD(model.parameters(), lr=0.1))
    store = CheckpointStore(tmp_path, n_saved=2, background=True)
    attach_checkpoints(trainer, {"model": model, "trainer": trainer}, store, save_every=3)
    real_open = builtins.open

    def open_(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        full = "iter00000003" in str(file) and str(file).endswith(".tmp") and "w" in mode
        return _FullDisk(f) if full else f

    monkeypatch.setattr(builtins, "open", open_)

    @trainer.on(Events.GET_BATCH_STARTED)
    def let_the_worker_fail(engine):  # after iteration 3's save point, before iteration 4
        deadline = time.monotonic() + 10
        while engine.state.iteration == 3 and store.failed is None:
            assert time.monotonic() < deadline, "the background commit did not fail"
            time.sleep(0.01)

    # before: a bare OSError without the path, at the next save (iteration 6) or the end
    with pytest.raises(OSError, match=r"No space left on device \(writing the checkpoint\): "
                       r"'.*checkpoint_periodic_iter00000003\.pt'") as info:  # fmt: skip
        trainer.run(digits_loader(), max_epochs=3)  # 4 iterations per epoch
    assert info.value.errno == errno.ENOSPC
    assert trainer.state.iteration == 4  # raised at ITERATION_STARTED of the next one
    assert names(tmp_path) == [] and temps(tmp_path) == []


def test_inline_write_failure_names_the_file(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path, n_saved=1)
    monkeypatch.setattr(torch, "save", enospc)
    with pytest.raises(OSError, match=r"No space left on device \(writing the checkpoint\): "
                       r"'.*checkpoint_last_x\.pt'") as info:  # fmt: skip
        store.write(payload_of(tiny(), 1), "checkpoint_last_x.pt", "last")
    assert info.value.errno == errno.ENOSPC and info.value.filename.endswith("last_x.pt")


def test_non_finite_weights_never_become_best(tmp_path):
    # stop_on_nan=False trains on through NaN: the metric (scripted here, as accuracy of
    # NaN logits can be) may still improve; the weights must not be kept as best
    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    trainer = training_engine(model, torch.optim.SGD(model.parameters(), lr=0.1))
    evaluator = ValuesEvaluator("val_loss", [0.5, 0.4, 0.3])

    @trainer.on(Events.EPOCH_COMPLETED(once=2))
    def poison(engine):  # before the validation of epoch 2
        with torch.no_grad():
            model[0].weight[0, 0] = math.nan

    evaluator.attach_to(trainer)
    store = CheckpointStore(tmp_path, n_saved=1)
    attach_checkpoints(
        trainer, {"model": model}, store, evaluator=evaluator.engine, best_metric="val_loss"
    )
    with pytest.warns(UserWarning, match=r"weights hold NaN/Inf \(Sequential.0.weight\) at "
                      r"iteration 8: no best checkpoint for val_loss=0.4"):  # fmt: skip
        trainer.run(digits_loader(), max_epochs=3)
    assert names(tmp_path, "best") == ["checkpoint_best_val_loss=0.5_iter00000004.pt"]
    best = safe_load(tmp_path / names(tmp_path, "best")[0])
    assert all(torch.isfinite(t).all() for t in best["model"].values())


def test_finiteness_check_is_exact_when_a_half_precision_sum_overflows():
    from ignitrain.handlers.checkpoint.adapter import non_finite as _non_finite

    layer = nn.Linear(512, 512).half()
    with torch.no_grad():
        layer.weight.fill_(1.0)  # the sum (262144) is beyond float16's range: not NaN weights
    assert _non_finite([layer]) == []
    with torch.no_grad():
        layer.bias[7] = math.inf
    assert _non_finite([layer]) == ["Linear.bias"]
