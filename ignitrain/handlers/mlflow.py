"""``TrainConfig(mlflow=True)``: the run tracked in MLflow, through Ignite's ``MLflowLogger``.

What goes to MLflow (rank 0 only):

* **params**: the config (``to_dict()``, nested values flattened as ``a.b``);
* **metrics**: every History scalar, at the training iteration it was logged at
  (the same x axis as TensorBoard), sent in batches at epoch ends at most every 10 s
  and when training ends;
* **artifacts** when training ends: ``checkpoints/``, ``history.json``, ``run.json``,
  ``profile.csv`` and a freshly written ``report.html``;
* **tags**: ``stop_reason`` and ``final.<series>`` (the last value of each series).

The store is a local SQLite file, ``output_dir/mlflow.db``, with artifacts in
``output_dir/mlartifacts`` (MLflow 3 refuses its file store unless
``MLFLOW_ALLOW_FILE_STORE=true``), unless ``mlflow_tracking_uri`` names another
(``sqlite:///runs.db``, ``http://host:5000``, ``file:///...``); a store you name keeps
artifacts where its experiment says (for a new experiment in a bare SQLite store MLflow
picks ``./mlruns`` of the working directory).
Ignite's :class:`~ignite.handlers.mlflow_logger.MLflowLogger` opens the run; its id is
kept in the History's metadata, which every checkpoint holds, so a resumed run
continues the *same* MLflow run (options changed on resume become
``param_changed.<name>`` tags: MLflow params cannot change).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
from ignite.engine import Engine, Events
from ignite.handlers.mlflow_logger import MLflowLogger  # imports mlflow only when built

from ignitrain.handlers.history import History

__all__ = ["MLflowTracker", "attach_mlflow", "flat_params", "require_mlflow"]

logger = logging.getLogger("ignitrain")
_META_KEY = "mlflow_run_id"


def require_mlflow() -> Any:
    """Import ``mlflow`` or say how to install it."""
    try:  # an optional dependency: imported only when a run is tracked
        import mlflow
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "TrainConfig.mlflow=True needs MLflow: pip install mlflow "
            "(or pip install 'ignitrain[mlflow]')"
        ) from exc
    return mlflow


def flat_params(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``; values as strings (MLflow's limit: 6000)."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flat_params(value, f"{name}."))
        else:
            out[name] = str(value)[:6000]
    return out


class MLflowTracker:
    """Mirrors a History to one MLflow run; see the module docstring.

    Args:
        history: The run's History (subscribed to; its ``meta`` keeps the run id).
        engine: The training engine (its iteration is the metrics' step).
        params: Params logged when the run is opened.
        tracking_uri: Where the store is.
        experiment: The MLflow experiment name.
        output_dir: Where artifacts are read from (``None``: none are logged).
        artifact_root: Artifact location of a new experiment (default: the store's).
        flush_secs: Least time between batches sent at epoch ends (one SQLite commit
            costs tens of ms: per epoch it doubled a short digits epoch).
    """

    def __init__(
        self,
        history: History,
        engine: Engine,
        *,
        params: Mapping[str, str],
        tracking_uri: str,
        experiment: str = "ignitrain",
        output_dir: str | os.PathLike | None = None,
        artifact_root: str | None = None,
        flush_secs: float = 10.0,
    ) -> None:
        self.artifact_root = artifact_root
        self.history = history
        self.engine = engine
        self.params = dict(params)
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.logger: Any = None
        self._pending: list[Any] = []
        self.flush_secs = flush_secs
        self._flushed_at = time.monotonic()
        history.subscribe(self._log)

    @property
    def run_id(self) -> str | None:
        """The MLflow run's id (``None`` before :meth:`open`)."""
        return self.logger.active_run.info.run_id if self.logger is not None else None

    def open(self, _: Engine | None = None) -> None:
        """Open (or, after a resume, reopen) the MLflow run; log params."""
        if idist.get_rank() != 0 or self.logger is not None:
            return
        mlflow = require_mlflow()
        mlflow.set_tracking_uri(self.tracking_uri)
        run_id = self.history.meta.get(_META_KEY)
        active = mlflow.active_run()
        if run_id is not None:
            if active is not None and active.info.run_id != run_id:
                mlflow.end_run()
            if active is None or active.info.run_id != run_id:
                mlflow.start_run(run_id=run_id)  # MLflowLogger then adopts the active run
        elif active is None:
            self._set_experiment(mlflow)
        # else: a run the user started around train() is adopted, as MLflowLogger does
        self.logger = MLflowLogger(self.tracking_uri)
        self.history.meta[_META_KEY] = self.run_id
        self._log_params(resumed=run_id is not None)

    def _set_experiment(self, mlflow: Any) -> None:
        # the default store keeps artifacts beside it, not in ./mlartifacts of the cwd
        if (
            self.artifact_root is not None
            and mlflow.get_experiment_by_name(self.experiment) is None
        ):
            mlflow.create_experiment(self.experiment, artifact_location=self.artifact_root)
        mlflow.set_experiment(self.experiment)

    def _log_params(self, *, resumed: bool) -> None:
        from mlflow.tracking import MlflowClient  # optional dependency (require_mlflow)

        logged = MlflowClient().get_run(self.run_id).data.params if resumed else {}
        new = {k: v for k, v in self.params.items() if k not in logged}
        changed = {f"param_changed.{k}": v for k, v in self.params.items()
                   if k in logged and logged[k] != v}  # fmt: skip
        if new:
            self.logger.log_params(new)
        if changed:
            self.logger.set_tags(changed)

    def _log(self, name: str, value: float, step: int) -> None:
        if self.logger is None or not math.isfinite(value):
            return  # MLflow stores NaN, but History.best ignores it: keep them alike
        from mlflow.entities import Metric  # optional dependency (require_mlflow)

        stamp = int(time.time() * 1000)
        self._pending.append(Metric(name, float(value), stamp, int(self.engine.state.iteration)))

    def flush_due(self, _: Engine | None = None) -> None:
        """:meth:`flush` when ``flush_secs`` have passed since the last one."""
        if time.monotonic() - self._flushed_at >= self.flush_secs:
            self.flush()

    def flush(self, _: Engine | None = None) -> None:
        """Send the buffered metrics in one batch (MLflow takes up to 1000 per call)."""
        self._flushed_at = time.monotonic()
        if self.logger is None or not self._pending:
            return
        from mlflow.tracking import MlflowClient  # optional dependency (require_mlflow)

        client = MlflowClient()
        pending, self._pending = self._pending, []
        for i in range(0, len(pending), 1000):
            client.log_batch(self.run_id, metrics=pending[i : i + 1000])

    def finish(self, _: Engine | None = None) -> None:
        """Flush, log artifacts and tags, and close the run."""
        if self.logger is None:
            return
        self.flush()
        meta = self.history.meta
        tags = {"stop_reason": str(meta.get("stop_reason", "completed"))}
        for name in self.history.names():
            value = self.history.latest(name)
            if value is not None:
                tags[f"final.{name}"] = f"{value:.6g}"
        self.logger.set_tags(tags)
        self._log_artifacts()
        self.close()

    def _log_artifacts(self) -> None:
        out = self.output_dir
        if out is None:
            return
        if (out / "history.json").is_file():
            try:
                # imported here: the report reads a run through the handlers package
                # (History, checkpoints), so the handlers cannot import it at their top
                from ignitrain.report import write_report

                write_report(out)
            except Exception as exc:  # a report failure must not lose the tracked run
                logger.warning("MLflow: report.html not written: %s", exc)
        if (out / "checkpoints").is_dir():
            self.logger.log_artifacts(str(out / "checkpoints"), artifact_path="checkpoints")
        for name in ("report.html", "history.json", "run.json", "profile.csv", "config.yaml"):
            if (out / name).is_file():
                self.logger.log_artifact(str(out / name))

    def close(self, _: Engine | None = None) -> None:
        """Send what is buffered and close Ignite's logger (the run stays in the store)."""
        if self.logger is not None:
            self.flush()
            self.logger.close()
            self.logger = None


def attach_mlflow(trainer: Any, output_dir: str | os.PathLike | None) -> MLflowTracker:
    """Track ``trainer``'s run in MLflow (see the module docstring).

    Events on ``trainer.engine``: ``STARTED`` opens the run (after a resume: the same
    run); ``EPOCH_COMPLETED`` sends the scalars so far (at most every 10 s);
    ``COMPLETED`` sends the rest,
    the artifacts and the tags; ``TERMINATE``/``EXCEPTION_RAISED`` are not used (an
    exception handler would swallow the error): a crashed run stays open in MLflow and
    is continued by the resume.

    Raises:
        ModuleNotFoundError: ``mlflow`` is not installed (with the pip command).
        ValueError: neither ``output_dir`` nor ``mlflow_tracking_uri`` is set.
    """
    require_mlflow()
    config = trainer.config
    uri, artifact_root = config.mlflow_tracking_uri, None
    if uri is None:
        if output_dir is None:
            raise ValueError(
                "TrainConfig.mlflow=True needs output_dir (the store goes to "
                "output_dir/mlflow.db) or mlflow_tracking_uri"
            )
        # MLflow 3 refuses its file store by default: SQLite, one file in the run
        root = Path(output_dir).resolve()
        uri, artifact_root = f"sqlite:///{root / 'mlflow.db'}", (root / "mlartifacts").as_uri()
    tracker = MLflowTracker(
        trainer.history,
        trainer.engine,
        params=flat_params(config.to_dict()),
        tracking_uri=uri,
        experiment=config.mlflow_experiment or "ignitrain",
        output_dir=output_dir,
        artifact_root=artifact_root,
    )
    engine = trainer.engine
    # STARTED comes after train() restored a checkpoint, so the run id is known
    engine.add_event_handler(Events.STARTED, tracker.open)
    engine.add_event_handler(Events.EPOCH_COMPLETED, tracker.flush_due)
    engine.add_event_handler(Events.COMPLETED, tracker.finish)
    return tracker
