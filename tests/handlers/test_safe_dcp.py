"""Safe reading of DCP folders (ignitrain/handlers/safe_dcp.py): crafted metadata and
non-tensor items are refused before they run; corrupted files are CheckpointErrors."""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException

from ignitrain.cli import main as cli_main
from ignitrain.handlers.checkpoint import CheckpointError
from ignitrain.handlers.safe_dcp import read_metadata, safe_dcp_load
from ignitrain.handlers.sharded import (
    SHARDED_MARKER,
    consolidated_state_dict,
    export_model,
    load_sharded,
    read_sharded_meta,
    save_sharded,
)

sys.path.insert(0, str(Path(__file__).parents[1]))
import _fsdp_workers as workers  # noqa: E402


def _trained(seed=0):
    model = workers.make_model(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    x, y = workers.global_batch(0)
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    return model, opt


def test_real_metadata_reads_and_other_globals_are_named(tmp_path):
    model, opt = _trained()
    folder = save_sharded({"model": model, "optimizer": opt}, tmp_path / "ck")
    metadata = read_metadata(folder / ".metadata")
    assert "model.0.weight" in metadata.state_dict_metadata
    # an allowed class (the checkpoint_id path) does not open its methods: reaching
    # PosixPath.home goes through getattr, which is refused
    (tmp_path / "odd").write_bytes(pickle.dumps(Path("x").resolve().__class__.home))
    with pytest.raises(CheckpointError, match=r"refers to builtins\.getattr"):
        read_metadata(tmp_path / "odd")
    with pytest.raises(CheckpointError, match=r"has no nothing"):
        read_metadata(tmp_path / "nothing")


# -- safe loading -------------------------------------------------------------------------


class _Evil:
    """Unpickling this runs code: it creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def test_malicious_metadata_runs_nothing(tmp_path):
    model, _ = _trained()
    folder = save_sharded({"model": model}, tmp_path / "ck")
    marker = tmp_path / "pwned"
    (folder / ".metadata").write_bytes(pickle.dumps(_Evil(marker)))
    for load in (
        lambda: load_sharded(folder, {"model": workers.make_model()}),
        lambda: consolidated_state_dict(folder),
        lambda: export_model(folder, tmp_path / "out.pt"),
    ):
        with pytest.raises(CheckpointError, match=r"refers to builtins.exec.*refusing"):
            load()
        assert not marker.exists()
    assert cli_main(["export", str(folder), str(tmp_path / "out.pt")]) == 2
    assert not marker.exists() and not (tmp_path / "out.pt").exists()
    # the file is truly malicious: DCP's own reader runs it
    with pytest.raises(CheckpointException):  # it fails, but only after the code ran
        dcp.load({"x": torch.zeros(1)}, checkpoint_id=folder, no_dist=True)
    assert marker.exists()


def test_malicious_non_tensor_item_runs_nothing(tmp_path):
    # DCP's DefaultLoadPlanner reads non-tensor items with torch.load(weights_only=False)
    marker = tmp_path / "pwned"
    dcp.save({"lr": _Evil(marker)}, checkpoint_id=tmp_path / "ck", no_dist=True)
    assert not marker.exists()
    state = {"lr": 0.5}
    with pytest.raises(CheckpointError, match=r"item 'lr' is not plain data"):
        safe_dcp_load(state, tmp_path / "ck")
    assert not marker.exists() and state == {"lr": 0.5}
    dcp.load(state, checkpoint_id=tmp_path / "ck", no_dist=True)  # DCP's own planner
    assert marker.exists()


def test_corrupted_metadata_is_a_checkpoint_error(tmp_path):
    model, _ = _trained()
    folder = save_sharded({"model": model}, tmp_path / "ck")
    data = (folder / ".metadata").read_bytes()
    (folder / ".metadata").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"metadata .* is corrupted"):
        consolidated_state_dict(folder)
    (folder / ".metadata").write_bytes(pickle.dumps({"not": "metadata"}))
    with pytest.raises(CheckpointError, match=r"holds a dict, not DCP Metadata"):
        consolidated_state_dict(folder)
    (folder / SHARDED_MARKER).write_text(json.dumps({"format": "ignitrain.sharded", "version": 99}))
    with pytest.raises(CheckpointError, match=r"format version 99.*upgrade ignitrain"):
        read_sharded_meta(folder)
