"""Reading a run's directory into a :class:`RunSummary`, the one input of every report."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ignitrain._files import dump_yaml, read_mapping
from ignitrain.errors import CheckpointError
from ignitrain.evaluation_record import read_evaluation
from ignitrain.handlers.checkpoint import latest_in, safe_load
from ignitrain.handlers.history import History
from ignitrain.handlers.modes import infer_mode
from ignitrain.run_record import read_run_record
from ignitrain.run_story import best_of, checkpoint_world_sizes, resume_rows, stop_detail

__all__ = ["MetricRow", "RunSummary", "collect"]


@dataclass
class MetricRow:
    """One epoch-level series: its last value and its best value and epoch."""

    name: str
    final: float
    best: float
    best_step: int
    last_step: int
    mode: str


@dataclass
class RunSummary:
    """What the report shows, read from an ``output_dir``."""

    output_dir: Path
    config_text: str | None
    job: dict[str, Any]
    history: History | None
    metrics: list[MetricRow] = field(default_factory=list)
    stop_reason: str | None = None
    stopped_at: dict[str, Any] = field(default_factory=dict)
    checkpoints: list[tuple[str, int, float]] = field(default_factory=list)
    evaluation: dict[str, Any] | None = None
    wall_time_s: float | None = None
    stop_detail: str = ""
    resumes: list[dict[str, Any]] = field(default_factory=list)
    world_sizes: list[tuple[str, int, int | None]] = field(default_factory=list)


def collect(output_dir: str | os.PathLike) -> RunSummary:
    """Read config, history, stop reason and checkpoint list from ``output_dir``.

    Raises:
        TypeError: ``output_dir`` is not a path.
        FileNotFoundError: ``output_dir`` is missing or holds no run.
        ValueError: ``history.json`` is not a history file.
    """
    path = _check_dir(output_dir)
    config_text, job = _read_config(path / "config.yaml")
    if config_text is None:  # a script's run: its checkpoints record the config
        config_text, job = _config_from_checkpoint(path)
    history = History.load(path) if _has_history(path) else None
    summary = RunSummary(output_dir=path, config_text=config_text, job=job, history=history)
    if history is not None:
        summary.metrics = _metric_rows(history)
        summary.stop_reason = history.meta.get("stop_reason")
        summary.stopped_at = dict(history.meta.get("stopped_at") or {})
    summary.checkpoints = _list_checkpoints(path / "checkpoints")
    _collect_story(summary)
    return summary


def _has_history(path: Path) -> bool:
    # history.jsonl is appended each epoch, history.json written at the end: a killed
    # run has only the journal (History.load reads the newer of the two)
    return (path / "history.json").is_file() or (path / "history.jsonl").is_file()


def _check_dir(output_dir: str | os.PathLike) -> Path:
    if not isinstance(output_dir, (str, os.PathLike)):
        raise TypeError(f"output_dir must be a path, got {type(output_dir).__name__}")
    path = Path(output_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"output_dir {str(path)!r} does not exist or is not a directory")
    if not _has_history(path) and not (path / "config.yaml").is_file():
        raise FileNotFoundError(
            f"{str(path)!r} holds no ignitrain run (neither history.json(l) nor config.yaml)"
        )
    return path


def _collect_story(summary: RunSummary) -> None:
    """Test metrics, wall time, stop detail and resumes (see :mod:`ignitrain.run_story`)."""
    summary.evaluation = read_evaluation(summary.output_dir)
    train = summary.job.get("train") or {}
    if summary.history is not None:
        summary.wall_time_s = _seconds(summary.history.meta.get("wall_time_s"))
        summary.stop_detail = stop_detail(summary.stop_reason, train, summary.history)
    record = read_run_record(summary.output_dir)
    summary.resumes = resume_rows(record)
    if summary.wall_time_s is None and record:
        summary.wall_time_s = _seconds(record.get("wall_time_s"))
    summary.world_sizes = checkpoint_world_sizes(summary.output_dir / "checkpoints")


def _seconds(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def _read_config(path: Path) -> tuple[str | None, dict[str, Any]]:
    if not path.is_file():
        return None, {}
    text = path.read_text()
    try:
        data = read_mapping(path)
    except (ValueError, ImportError):  # a damaged config (or no pyyaml): still render
        data = {}
    return text, data


def _config_from_checkpoint(path: Path) -> tuple[str | None, dict[str, Any]]:
    """The config and model description saved in the run's newest valid checkpoint."""
    try:
        payload = safe_load(latest_in(path))
    except (CheckpointError, OSError):
        return None, {}
    config = payload.get("config")
    if not isinstance(config, dict):
        return None, {}
    job: dict[str, Any] = {"train": config}
    described = payload.get("model_description")
    if isinstance(described, dict) and len(described) == 1:
        (model,) = described.values()
        if isinstance(model, dict) and "class" in model:
            job["model"] = {"class": model["class"], "args": model.get("args") or {}}
    text = "# from the newest checkpoint (this run has no config.yaml)\n"
    try:
        return text + dump_yaml(job), job
    except ImportError:  # no pyyaml (an optional extra): JSON is YAML too
        return text + json.dumps(job, indent=2, default=str), job


def _metric_rows(history: History) -> list[MetricRow]:
    """Epoch-level series (``split/metric``), validation first."""
    names = [n for n in history.names() if "/" in n and not n.split("/")[-1].startswith("batch_")]
    names.sort(key=lambda n: (n.split("/")[0] != "val", n.split("/")[0], n.split("/", 1)[1]))
    rows = []
    for name in names:
        values, steps = history[name], history.steps(name)
        if not values:
            continue
        best = best_of(history, name)
        best_value, best_step = best if best is not None else (math.nan, steps[-1])
        rows.append(MetricRow(name, values[-1], best_value, best_step, steps[-1], infer_mode(name)))
    return rows


def _list_checkpoints(directory: Path) -> list[tuple[str, int, float]]:
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        # temporary files of an atomic write in progress start with a dot; the
        # latest pointer (.json) is not a checkpoint
        if path.is_file() and path.suffix == ".pt" and not path.name.startswith("."):
            stat = path.stat()
            found.append((path.name, stat.st_size, stat.st_mtime))
    return sorted(found, key=lambda item: (item[2], item[0]))
