"""``ignitrain.jobs.spec.resolve_spec`` (public since the CLI uses it) and the package face."""

import pytest

from ignitrain import jobs
from ignitrain.errors import JobError
from ignitrain.jobs import build, run, spec


def test_resolve_spec_expands_shorthands_and_keeps_args():
    assert spec.resolve_spec("pkg.Net", "model", "class", "job.yaml") == {
        "class": "pkg.Net",
        "args": {},
    }
    assert spec.resolve_spec("digits", "data", "factory", "job.yaml") == {
        "factory": "ignitrain.datasets.digits",
        "args": {},
    }
    assert spec.resolve_spec(
        {"factory": "iris", "args": {"seed": 1}}, "data", "factory", "job.yaml"
    ) == {"factory": "ignitrain.datasets.iris", "args": {"seed": 1}}


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        (3, r"job\.yaml: 'model' must be a mapping like \{class: pkg\.module\.Name"),
        ({"clas": "pkg.Net"}, r"unknown key model\.clas\. Did you mean 'class'\?"),
        ({"class": ""}, r"model\.class must be an import path"),
        ({"class": "pkg.Net", "args": [1]}, r"model\.args must be a mapping of keyword arguments"),
    ],
)
def test_resolve_spec_rejects_with_file_and_key(entry, match):
    with pytest.raises(JobError, match=match):
        spec.resolve_spec(entry, "model", "class", "job.yaml")


def test_every_old_name_is_still_importable_from_ignitrain_jobs():
    for module in (spec, build, run):
        for name in module.__all__:
            assert getattr(jobs, name) is getattr(module, name), name


def test_write_job_leaves_no_temp_file_and_reads_back(tmp_path):
    job = jobs.resolve_job(
        {"flavor": "regression", "model": "torch.nn.Linear", "data": "diabetes"},
        default_output_dir=str(tmp_path / "run"),
    )
    path = run.write_job(job, tmp_path / "out" / "config.yaml", command="ignitrain train x")
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]
    assert jobs.load_job(path)["train"] == job["train"]
