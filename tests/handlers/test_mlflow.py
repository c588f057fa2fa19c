"""MLflow tracking, read back through ``mlflow.tracking.MlflowClient``."""

from __future__ import annotations

import pytest

import ignitrain
from ignitrain import TrainConfig
from ignitrain.handlers.mlflow import flat_params
from tests.conftest import config_maker, make_mlp

mlflow = pytest.importorskip("mlflow")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _end_active_run():
    yield
    if mlflow.active_run() is not None:
        mlflow.end_run()


cfg = config_maker(
    num_epochs=2, batch_size=64, progress_bar=False, seed=0, mlflow=True, log_every=5
)


def _train(data, out, **kw):
    trainer = ignitrain.create_classification_trainer(
        make_mlp(), cfg(output_dir=str(out), **kw), data.train, data.val
    )
    return trainer, trainer.train()


def _client(out):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{out.resolve() / 'mlflow.db'}")


def test_params_metrics_artifacts_and_tags(digits_flat, tmp_path):
    trainer, history = _train(digits_flat, tmp_path)
    run_id = history.meta["mlflow_run_id"]
    client = _client(tmp_path)
    run = client.get_run(run_id)
    assert run.data.params["lr"] == str(trainer.config.lr)
    assert run.data.params["num_epochs"] == "2"
    for name in ("val/accuracy", "train/loss", "train/batch_loss", "lr"):
        logged = client.get_metric_history(run_id, name)
        assert [m.value for m in logged] == pytest.approx(history[name]), name
    steps = [m.step for m in client.get_metric_history(run_id, "val/accuracy")]
    assert steps == [trainer.engine.state.epoch_length * e for e in (1, 2)]  # iterations
    assert run.data.tags["stop_reason"] == "completed"
    assert float(run.data.tags["final.val/accuracy"]) == pytest.approx(
        history.latest("val/accuracy"), rel=1e-5
    )
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"checkpoints", "report.html", "history.json", "run.json"} <= names
    assert any(a.path.endswith(".pt") for a in client.list_artifacts(run_id, "checkpoints"))
    assert run.info.status == "FINISHED"


@pytest.mark.slow
def test_resume_continues_the_same_run(digits_flat, tmp_path):
    _, first = _train(digits_flat, tmp_path)
    _, resumed = _train(digits_flat, tmp_path, num_epochs=3, resume="latest")
    run_id = first.meta["mlflow_run_id"]
    assert resumed.meta["mlflow_run_id"] == run_id
    client = _client(tmp_path)
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1
    values = [m.value for m in client.get_metric_history(run_id, "val/accuracy")]
    assert values == pytest.approx(resumed["val/accuracy"])  # 3 epochs, one run
    run = client.get_run(run_id)
    assert run.data.params["num_epochs"] == "2"
    assert run.data.tags["param_changed.num_epochs"] == "3"


@pytest.mark.slow
def test_any_tracking_uri(digits_flat, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a store without an artifact root puts them in ./mlruns
    uri = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    _, history = _train(digits_flat, tmp_path / "run", mlflow_tracking_uri=uri,
                        mlflow_experiment="exp-x", num_epochs=1)  # fmt: skip
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(history.meta["mlflow_run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "exp-x"
    assert not (tmp_path / "run" / "mlflow.db").exists()


def test_argument_validation(digits_flat):
    with pytest.raises(ValueError, match="needs output_dir"):
        ignitrain.create_classification_trainer(make_mlp(), cfg(), digits_flat.train)
    with pytest.raises(TypeError, match="mlflow_tracking_uri"):
        TrainConfig(mlflow_tracking_uri=3)
    assert flat_params({"a": {"b": 1}, "c": None}) == {"a.b": "1", "c": "None"}


@pytest.mark.slow
def test_a_run_the_user_started_is_adopted(digits_flat, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a store without an artifact root puts them in ./mlruns
    uri = f"sqlite:///{tmp_path / 'user.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("user")  # the fluent API remembers the last test's experiment id
    with mlflow.start_run() as run:
        _, history = _train(digits_flat, tmp_path / "run", mlflow_tracking_uri=uri, num_epochs=1)
    assert history.meta["mlflow_run_id"] == run.info.run_id
