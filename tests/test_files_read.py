"""``ignitrain._files.read_mapping``: the one YAML/JSON reader of config and job files."""

import json

import pytest

from ignitrain import TrainConfig, jobs
from ignitrain._files import dump_yaml, load_yaml, read_mapping
from ignitrain.errors import ConfigError, JobError

JOB = """\
flavor: regression
model: {class: torch.nn.Linear, args: {in_features: 2, out_features: 1}}
data: digits
train:
  lr: 1e-3
  weight_decay: 5E-4
  num_epochs: 2
"""


def test_exponent_without_dot_is_a_float_in_a_job_file_and_in_from_file(tmp_path):
    # PyYAML (YAML 1.1) reads "1e-3" as the string "1e-3"; TrainConfig.from_file used to
    # reject it while job files accepted it: one reader now, one meaning
    job_file = tmp_path / "job.yaml"
    job_file.write_text(JOB)
    config_file = tmp_path / "config.yaml"
    config_file.write_text("lr: 1e-3\nweight_decay: 5E-4\nnum_epochs: 2\n")

    job = jobs.load_job(job_file)
    config = TrainConfig.from_file(config_file)

    assert job["train"]["lr"] == config.lr == 0.001
    assert isinstance(config.lr, float)
    assert job["train"]["weight_decay"] == config.weight_decay == 0.0005
    assert jobs.parse_override("lr=1e-3") == (["train", "lr"], 0.001)


def test_load_yaml_keeps_yaml_meanings_apart_from_exponents():
    data = load_yaml("a: 1e3\nb: -2.5e-1\nc: 1_000\nd: '1e-3'\ne: e5\nf: 1.0\ng: yes\n")
    assert data == {"a": 1000.0, "b": -0.25, "c": 1000, "d": "1e-3", "e": "e5", "f": 1.0, "g": True}
    assert isinstance(data["a"], float)


def test_dump_and_read_round_trip(tmp_path):
    data = {"lr": 0.001, "metrics": ["f1"], "stop_when": {"accuracy": 0.9}, "seed": None}
    path = tmp_path / "c.yml"
    path.write_text(dump_yaml(data))
    assert read_mapping(path) == data
    path = tmp_path / "c.json"
    path.write_text(json.dumps(data))
    assert read_mapping(path) == data


def test_empty_file_is_an_empty_mapping(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert read_mapping(path) == {}


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        (
            "bad.yaml",
            "lr: 0.1\nnum_epochs: [3\n",
            r"bad\.yaml: invalid YAML at line 3.*started at line 2",
        ),
        ("bad.json", '{"lr": 0.1,,}', r"bad\.json: invalid JSON at line 1, column 12"),
        ("list.yaml", "- 1\n- 2\n", r"list\.yaml: expected a mapping of options, got list"),
        ("cfg.txt", "lr: 0.1\n", r"cfg\.txt: config files must end in \.yaml, \.yml or \.json"),
    ],
)
def test_malformed_file_errors_name_the_file(tmp_path, name, text, match):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        read_mapping(path)
    with pytest.raises(ValueError, match=match):
        TrainConfig.from_file(path)
    job_match = match.replace("config files", "job files").replace("of options", "of job keys")
    with pytest.raises(JobError, match=job_match):
        jobs.load_job(path)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"job file '.*nope\.yaml' does not exist"):
        read_mapping(tmp_path / "nope.yaml", what="job file")
    with pytest.raises(JobError, match=r"nope\.yaml' does not exist"):
        jobs.load_job(tmp_path / "nope.yaml")
