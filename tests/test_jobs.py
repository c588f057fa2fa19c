"""Job files: resolving, overrides, import paths, building real models, data and trainers."""

from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.data import TensorDataset

from ignitrain import TrainConfig, datasets, jobs
from ignitrain.jobs import JobError

REPO = Path(__file__).resolve().parents[1]


def small_job(**train):
    return {
        "flavor": "classification",
        "model": {"class": "examples.models.DigitsMLP", "args": {"hidden": 16}},
        "data": {"factory": "ignitrain.datasets.digits", "args": {"image": False}},
        "train": {"num_epochs": 1, "tensorboard": False, "progress_bar": False, **train},
    }


@pytest.fixture
def in_repo(monkeypatch):
    """Run from the repository root, as the CLI is documented to be run."""
    monkeypatch.chdir(REPO)
    monkeypatch.syspath_prepend(str(REPO))


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module of the user's, importable from the working directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "userjob.py").write_text(
        "import torch\n"
        "from torch.utils.data import TensorDataset\n\n"
        "def make(model, config, train_data, val_data=None, scale=1):\n"
        "    return {'model': model, 'config': config, 'train': train_data, 'val': val_data,"
        " 'scale': scale}\n\n"
        "def make_pair(*, generator, discriminator, config, train_data):\n"
        "    return {'generator': generator, 'discriminator': discriminator}\n\n"
        "def pair(n=8):\n"
        "    x = torch.zeros(n, 2)\n"
        "    return TensorDataset(x, x), TensorDataset(x[:2], x[:2])\n\n"
        "def nothing():\n"
        "    return None\n\n"
        "def not_a_model():\n"
        "    return 3\n"
    )
    (tmp_path / "broken_dep.py").write_text("import surely_not_installed_pkg\n")
    return tmp_path


# -- overrides ----------------------------------------------------------------------------------


def test_parse_override_reads_yaml_values_and_bare_train_options():
    assert jobs.parse_override("train.lr=0.1") == (["train", "lr"], 0.1)
    assert jobs.parse_override("lr=1e-2") == (["train", "lr"], 0.01)
    assert jobs.parse_override("train.metrics=[f1, top5]") == (["train", "metrics"], ["f1", "top5"])
    assert jobs.parse_override("model.args.hidden=32") == (["model", "args", "hidden"], 32)
    assert jobs.parse_override("train.best_metric=") == (["train", "best_metric"], None)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("train.lr", "expected KEY=VALUE"),
        ("=3", "dotted path"),
        ("train..lr=3", "dotted path"),
        ("trian.lr=1", "unknown section 'trian'. Did you mean 'train'"),
        ("lr=[1", "not valid YAML"),
    ],
)
def test_parse_override_rejects_bad_input(text, match):
    with pytest.raises(JobError, match=match):
        jobs.parse_override(text)


def test_apply_overrides_nests_expands_shorthands_and_leaves_the_input_alone():
    raw = {"flavor": "classification", "model": "examples.models.DigitsMLP", "data": "digits"}
    out = jobs.apply_overrides(raw, ["model.args.hidden=8", "train.lr=0.5", "data.args.seed=3"])
    assert out["model"] == {"class": "examples.models.DigitsMLP", "args": {"hidden": 8}}
    assert out["data"] == {"factory": "ignitrain.datasets.digits", "args": {"seed": 3}}
    assert out["train"] == {"lr": 0.5}
    assert raw["model"] == "examples.models.DigitsMLP"  # not mutated
    with pytest.raises(JobError, match=r"train.lr is 0.5, not a mapping"):
        jobs.apply_overrides(out, ["train.lr.x=1"])


# -- resolving ----------------------------------------------------------------------------------


def test_resolve_job_expands_everything_and_records_every_option():
    job = jobs.resolve_job(
        {"flavor": "regression", "model": "examples.models.DiabetesMLP", "data": "diabetes"},
        source="x.yaml",
        default_output_dir="runs/x",
    )
    assert job["model"] == {"class": "examples.models.DiabetesMLP", "args": {}}
    assert job["data"] == {"factory": "ignitrain.datasets.diabetes", "args": {}}
    assert job["flavor_args"] == {}
    assert job["train"] == TrainConfig(output_dir="runs/x").to_dict()


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"flavr": "x"}, "unknown key 'flavr'. Did you mean 'flavor'"),
        ({"model": "a.B", "data": "digits"}, "'flavor' must name"),
        (
            {"flavor": "clasification", "model": "a.B", "data": "digits"},
            "Did you mean 'classification'",
        ),
        ({"flavor": "regression", "data": "digits"}, "exactly one of 'model'"),
        ({"flavor": "gan", "model": "a.B", "models": {}, "data": "d"}, "exactly one of 'model'"),
        ({"flavor": "gan", "models": [], "data": "digits"}, "'models' must be a non-empty mapping"),
        ({"flavor": "regression", "model": "a.B"}, "missing key 'data'"),
        (
            {"flavor": "regression", "model": {"clas": "a.B"}, "data": "d"},
            "model.clas. Did you mean",
        ),
        ({"flavor": "regression", "model": {"args": {}}, "data": "d"}, "model.class must be"),
        (
            {"flavor": "regression", "model": {"class": "a.B", "args": 3}, "data": "d"},
            "args must be",
        ),
        ({"flavor": "regression", "model": 3, "data": "d"}, "'model' must be a mapping"),
        ({"flavor": "regression", "model": "a.B", "data": "d", "train": 3}, "'train' must be"),
        ({"flavor": "regression", "model": "a.B", "data": "d", "flavor_args": 3}, "flavor_args"),
        (
            {"flavor": "regression", "model": "a.B", "data": "d", "train": {"num_epoch": 3}},
            "unknown option 'num_epoch'. Did you mean 'num_epochs'",
        ),
        (
            {"flavor": "regression", "model": "a.B", "data": "d", "train": {"lr": -1}},
            "TrainConfig.lr=-1 is not allowed",
        ),
    ],
)
def test_resolve_job_rejects_mistakes_with_a_pointer(raw, match):
    with pytest.raises(JobError, match=match):
        jobs.resolve_job(raw, source="job.yaml")


def test_load_job_reports_missing_file_and_yaml_line(tmp_path):
    with pytest.raises(JobError, match="does not exist"):
        jobs.load_job(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("flavor: classification\nmodel:\n  class: [oops\ndata: digits\n")
    with pytest.raises(JobError, match=r"bad.yaml: invalid YAML at line \d+"):
        jobs.load_job(bad)


def test_load_job_reads_json_applies_overrides_and_defaults_output_dir(tmp_path):
    path = tmp_path / "iris.json"
    path.write_text('{"flavor": "classification", "model": "examples.models.MLP", "data": "iris"}')
    job = jobs.load_job(path, ["model.args.in_features=4", "lr=0.02"])
    assert job["model"]["args"] == {"in_features": 4}
    assert job["train"]["lr"] == 0.02
    assert job["train"]["output_dir"] == "runs/iris"


# -- imports ------------------------------------------------------------------------------------


def test_resolve_import_finds_examples_from_the_repo_root(in_repo):
    from examples.models import DigitsCNN

    assert jobs.resolve_import("examples.models.DigitsCNN") is DigitsCNN
    assert jobs.resolve_import("examples.models:DigitsCNN") is DigitsCNN
    assert jobs.resolve_import("ignitrain.datasets.digits") is datasets.digits
    assert jobs.resolve_import("ignitrain.config.TrainConfig.from_dict") == TrainConfig.from_dict


@pytest.mark.parametrize(
    ("path", "match"),
    [
        ("examples.models.DigitCNN", "no attribute 'DigitCNN'. Did you mean 'DigitsCNN'"),
        ("nosuchpkg.models.Net", "cannot import 'nosuchpkg.models.Net'"),
        ("Net", "not an import path"),
        ("", "expected an import path"),
    ],
)
def test_resolve_import_errors_say_which_part_is_wrong(in_repo, path, match):
    with pytest.raises(JobError, match=match):
        jobs.resolve_import(path, what="model.class")


def test_resolve_import_reports_a_missing_dependency_of_an_existing_module(user_module):
    with pytest.raises(JobError, match="importing 'broken_dep' failed.*surely_not_installed_pkg"):
        jobs.resolve_import("broken_dep.Thing")


def test_flavor_factory_built_in_custom_and_missing(user_module, monkeypatch):
    from ignitrain.flavors.regression import create_regression_trainer

    assert jobs.flavor_factory("regression") is create_regression_trainer
    assert jobs.flavor_factory("userjob.make").__name__ == "make"
    monkeypatch.setitem(jobs.FLAVORS, "future", ("ignitrain.flavors.not_written_yet", "create"))
    with pytest.raises(
        JobError, match="flavor 'future' is not available.*Available: classification"
    ):
        jobs.flavor_factory("future")


# -- building -----------------------------------------------------------------------------------


def test_build_model_passes_args_and_checks_the_result(in_repo, user_module):
    model = jobs.build_model({"class": "examples.models.DigitsMLP", "args": {"hidden": 8}})
    assert model.hidden == 8 and model(torch.zeros(2, 64)).shape == (2, 10)
    with pytest.raises(
        JobError, match=r"DigitsMLP\(hidden=64, depth=1, dropout=0.0\) does not accept"
    ):
        jobs.build_model({"class": "examples.models.DigitsMLP", "args": {"hiden": 8}})
    with pytest.raises(JobError, match="Argument hidden must be a positive integer"):
        jobs.build_model({"class": "examples.models.DigitsMLP", "args": {"hidden": 0}})
    with pytest.raises(JobError, match="returned int, not a torch.nn.Module"):
        jobs.build_model({"class": "userjob.not_a_model", "args": {}})


def test_build_data_accepts_splits_tuples_and_rejects_none(in_repo, user_module):
    data = jobs.build_data({"data": {"factory": "ignitrain.datasets.iris", "args": {"seed": 1}}})
    assert (len(data.train), len(data.val), len(data.test)) == (106, 22, 22)
    assert data.splits.num_classes == 3
    no_val = jobs.build_data(
        {"data": {"factory": "ignitrain.datasets.iris", "args": {"val_fraction": 0.0}}}
    )
    assert no_val.val is None  # an empty split means "none", so validation is skipped
    pair = jobs.build_data({"data": {"factory": "userjob.pair", "args": {"n": 4}}})
    assert len(pair.train) == 4 and len(pair.val) == 2 and pair.test is None
    with pytest.raises(JobError, match="returned None"):
        jobs.build_data({"data": {"factory": "userjob.nothing", "args": {}}})
    with pytest.raises(JobError, match=r"does not accept args \{'sed': 1\}"):
        jobs.build_data({"data": {"factory": "ignitrain.datasets.iris", "args": {"sed": 1}}})


def test_build_trainer_trains_a_real_job(in_repo):
    job = jobs.resolve_job(small_job(output_dir=None), source="t")
    job["train"]["output_dir"] = None  # in memory: nothing written
    trainer = jobs.build_trainer(job, train_changes={"num_epochs": 2, "lr": 0.01})
    history = trainer.train()
    assert trainer.config.num_epochs == 2
    assert history.steps("val/accuracy") == [1, 2]
    assert history.latest("val/accuracy") > 0.5  # 10 classes: chance is 0.1


def test_build_trainer_seeds_before_building_models_so_a_job_repeats(in_repo):
    # the models are built before the factory seeds: without seeding first their
    # initial weights (and so the whole run) differ from one process to the next
    job = jobs.resolve_job(small_job(seed=3), source="t")
    job["train"]["output_dir"] = None
    weights = []
    for _ in range(2):
        torch.manual_seed(len(weights) + 100)  # disturb the global RNG between builds
        trainer = jobs.build_trainer(job)
        weights.append(torch.cat([p.detach().flatten() for p in trainer.model.parameters()]))
    assert torch.equal(weights[0], weights[1])


def test_build_trainer_passes_flavor_args_and_named_models(in_repo, user_module):
    job = jobs.resolve_job(small_job(), source="t")
    job["flavor"] = "userjob.make"
    job["flavor_args"] = {"scale": 3}
    built = jobs.build_trainer(job)
    assert built["scale"] == 3 and isinstance(built["config"], TrainConfig)
    assert isinstance(built["train"], TensorDataset) and len(built["val"]) == 270
    pair = dict(job, flavor="userjob.make_pair", flavor_args={})
    del pair["model"]
    spec = {"class": "examples.models.DigitsMLP", "args": {"hidden": 4}}
    pair["models"] = {"generator": spec, "discriminator": spec}
    built = jobs.build_trainer(pair)
    assert built["generator"] is not built["discriminator"]
    pair["models"] = {"gen": spec, "discriminator": spec}
    with pytest.raises(JobError, match="make_pair.*cannot take this job's models"):
        jobs.build_trainer(pair)


def test_build_trainer_turns_factory_validation_into_job_errors(in_repo):
    job = jobs.resolve_job(small_job(metrics=["top5", "recal"]), source="t")
    with pytest.raises(JobError, match="cannot build the trainer.*'recal'.*Did you mean 'recall'"):
        jobs.build_trainer(job)


def test_check_job_imports_without_calling_the_data_factory(in_repo):
    job = jobs.resolve_job(small_job(), source="t")
    jobs.check_job(job)
    job["model"]["class"] = "examples.models.Nope"
    with pytest.raises(JobError, match="model.class: cannot import"):
        jobs.check_job(job)


def test_write_job_round_trips_atomically_with_resume_cleared(tmp_path):
    job = jobs.resolve_job(small_job(resume="latest", output_dir=str(tmp_path)), source="t")
    path = jobs.write_job(job, tmp_path / "config.yaml", command="ignitrain train x.yaml")
    text = path.read_text()
    assert text.startswith("# ignitrain job") and "# started with: ignitrain train x.yaml" in text
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]  # no temp file left
    again = jobs.load_job(path)
    assert again == {**job, "train": {**job["train"], "resume": None}}
    assert yaml.safe_load(text)["train"]["resume"] is None
