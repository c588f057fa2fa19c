"""The command line as users run it: ``python -m ignitrain ...`` in a real subprocess.

One tiny training run (digits, 2 epochs) is shared by the tests of the commands that
need a run. The other commands, and every bad input, run two at a time in a thread
pool: each process spends most of its time importing torch, so on 2 cores the file
takes half as long as running them one by one.
"""

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from ignitrain.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]

# the CLI's documented exit statuses
OK, USER_ERROR = 0, 2

JOB = {
    "flavor": "classification",
    # hidden is overridden to 16 by --set in the shared run (tests that --set works)
    "model": {"class": "examples.models.DigitsMLP", "args": {"hidden": 8}},
    "data": {"factory": "ignitrain.datasets.digits", "args": {"seed": 0, "image": False}},
    "train": {
        "num_epochs": 5,
        "lr": 0.01,
        "batch_size": 64,
        "save_every": -1,
        "n_saved": 2,
        "seed": 0,
        "deterministic": True,
        "progress_bar": False,
    },
}


def run_cli(*args, cwd=REPO):
    """Run ``python -m ignitrain ARGS`` from the repository root (so examples.models imports)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", IGNITRAIN_DEBUG="0")
    return subprocess.run(
        [sys.executable, "-m", "ignitrain", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def run_many(commands):
    """``{name: CompletedProcess}`` for ``{name: args}``, two processes at a time."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(run_cli, *args) for name, args in commands.items()}
        return {name: future.result() for name, future in futures.items()}


def write_job(path, job=JOB, **train):
    job = json.loads(json.dumps(job))
    job["train"].update(train)
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def history_series(output_dir):
    return json.loads((Path(output_dir) / "history.json").read_text())["series"]


def assert_ok(result):
    assert result.returncode == OK, result.stderr
    assert "Traceback" not in result.stderr


def assert_user_error(result, *fragments):
    """Exit status 2, one ``ignitrain <cmd>: error:`` line naming the problem, no traceback."""
    assert result.returncode == USER_ERROR, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


# -- one shared training run -------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``ignitrain train job.yaml --set ...``: 2 of the job's 5 epochs, hidden 8 -> 16."""
    root = tmp_path_factory.mktemp("cli")
    job = write_job(root / "tiny.yaml", output_dir=str(root / "run"))
    result = run_cli("train", job, "--set", "train.num_epochs=2", "--set", "model.args.hidden=16")
    assert_ok(result)
    return {"root": root, "job": job, "output_dir": root / "run", "result": result}


@pytest.fixture(scope="module")
def followups(trained):
    """The commands that start from the shared run, run two at a time.

    resume and report work on copies, so every test sees the run as train left it.
    """
    root, output_dir = trained["root"], trained["output_dir"]
    resumed, reported = root / "resumed", root / "reported"
    shutil.copytree(output_dir, resumed)
    shutil.copytree(output_dir, reported)
    (reported / "report.html").unlink()
    last = sorted((output_dir / "checkpoints").glob("checkpoint_last_*.pt"))[-1]
    commands = {
        # the recorded config is the run: training from it again gives the same numbers
        "again": [
            "train",
            output_dir / "config.yaml",
            "--set",
            f"train.output_dir={root / 'again'}",
        ],
        "resume": ["resume", resumed, "--set", "train.num_epochs=3"],
        "evaluate": ["evaluate", last, "--data", "digits:test", "--json"],
        "report": ["report", reported],
        "evaluate_best": ["evaluate", output_dir, "--data", "digits:test"],
        "evaluate_last": ["evaluate", output_dir, "--checkpoint", "last", "--json"],
        # rates far too small to move the loss: a flat curve, no suggestion to trust
        "lr_flat": [
            "lr-find",
            trained["job"],
            "--start-lr",
            "1e-12",
            "--end-lr",
            "1e-11",
            "--num-iter",
            "20",
            "--set",
            f"train.output_dir={root / 'lr_flat'}",
        ],
        "lr_find": [
            "lr-find",
            trained["job"],
            "--num-iter",
            "25",
            "--set",
            f"train.output_dir={root / 'lr'}",
        ],
    }
    return {"dirs": {"resumed": resumed, "reported": reported}, **run_many(commands)}


@pytest.mark.slow
def test_train_runs_the_job_with_overrides_and_records_it(trained):
    output_dir, result = trained["output_dir"], trained["result"]
    record = yaml.safe_load((output_dir / "config.yaml").read_text())
    assert record["train"]["num_epochs"] == 2 and record["model"]["args"] == {"hidden": 16}
    # the resolved config holds every TrainConfig option, not only the ones the job set
    assert record["train"]["max_grad_norm"] is None and record["train"]["resume"] is None
    assert history_series(output_dir)["val/accuracy"]["steps"] == [1, 2]
    assert "Epoch 2/2" in result.stderr  # the per-epoch summary lines
    assert sorted((output_dir / "checkpoints").glob("checkpoint_last_*.pt"))
    # the report is written at the end of training and the summary table printed
    assert (output_dir / "report.html").is_file()
    assert "stopped   completed at epoch 2" in result.stdout
    assert "val/accuracy" in result.stdout and "report.html" in result.stdout


@pytest.mark.slow
def test_train_from_the_recorded_config_reproduces_the_run(trained, followups):
    assert_ok(followups["again"])
    first, again = history_series(trained["output_dir"]), history_series(trained["root"] / "again")
    assert first.keys() == again.keys()
    for name in ("train/loss", "val/loss", "val/accuracy"):
        assert again[name] == first[name], name  # deterministic=True on CPU: equal, not close


@pytest.mark.slow
def test_resume_continues_the_run_to_more_epochs(trained, followups):
    result = followups["resume"]
    assert_ok(result)
    assert "Resumed from" in result.stderr and "Epoch 3/3" in result.stderr
    before, after = (
        history_series(trained["output_dir"]),
        history_series(followups["dirs"]["resumed"]),
    )
    assert after["val/accuracy"]["steps"] == [1, 2, 3]
    assert after["val/accuracy"]["values"][:2] == before["val/accuracy"]["values"]
    record = yaml.safe_load((followups["dirs"]["resumed"] / "config.yaml").read_text())
    assert record["train"]["num_epochs"] == 3  # --set on resume is recorded
    assert "completed at epoch 3" in result.stdout


@pytest.mark.slow
def test_evaluate_prints_the_metrics_of_a_checkpoint(followups):
    result = followups["evaluate"]
    assert_ok(result)
    report = json.loads(result.stdout)
    assert report["data"] == "ignitrain.datasets.digits:test" and report["num_samples"] == 270
    assert report["epoch"] == 2 and set(report["metrics"]) >= {"accuracy", "loss"}
    assert 0.3 < report["metrics"]["accuracy"] <= 1.0  # trained: well above chance (0.1)


@pytest.mark.slow
def test_report_writes_the_page_and_prints_the_summary(followups):
    result = followups["report"]
    assert_ok(result)
    assert (followups["dirs"]["reported"] / "report.html").is_file()
    lines = result.stdout.splitlines()
    assert lines[1].startswith("stopped   completed at epoch 2")
    assert any(line.split()[0] == "val/accuracy" for line in lines[2:])


@pytest.mark.slow
def test_lr_find_suggests_a_rate_and_writes_only_its_plot(trained, followups):
    result = followups["lr_find"]
    assert_ok(result)
    assert "range test    25 steps" in result.stdout and "suggested lr" in result.stdout
    # a ready-made command only with a suggestion the curve supports
    assert ("train with" in result.stdout) == ("none reliable" not in result.stderr)
    lr_dir = trained["root"] / "lr"
    # the range test must leave no run behind: no checkpoints, history or config
    assert sorted(p.name for p in lr_dir.iterdir()) == ["lr_find.png"]


# -- bad inputs ------------------------------------------------------------------------------


BAD_YAML = """flavor: classification
model:
  class: [examples.models.DigitsMLP
data: digits
"""


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory):
    """The bad inputs users meet first, each run as a subprocess, two at a time."""
    root = tmp_path_factory.mktemp("bad")
    (root / "bad.yaml").write_text(BAD_YAML)
    good = write_job(root / "good.yaml", output_dir=str(root / "never"))
    typo_key = json.loads(json.dumps(JOB))
    typo_key["flavour"] = typo_key.pop("flavor")
    (root / "typo_key.json").write_text(json.dumps(typo_key))
    write_job(root / "typo_class.yaml", dict(JOB, model={"class": "examples.models.DigitMLP"}))
    commands = {
        "missing_file": ["train", root / "nope.yaml"],
        "bad_yaml": ["train", root / "bad.yaml"],
        "unknown_key": ["train", root / "typo_key.json"],
        "typo_class": ["train", root / "typo_class.yaml"],
        "set_section": ["train", good, "--set", "trian.lr=0.1"],
    }
    results = run_many(commands)
    assert not (root / "never").exists()  # no bad input may have started a run
    return results


@pytest.mark.parametrize(
    ("case", "fragments"),
    [
        ("missing_file", ["ignitrain train: error:", "nope.yaml", "does not exist"]),
        # PyYAML gives up on line 4; the unclosed "[" that caused it is on line 3
        ("bad_yaml", ["bad.yaml: invalid YAML at line 4", "flow sequence started at line 3"]),
        ("unknown_key", ["unknown key 'flavour'", "Did you mean 'flavor'"]),
        ("typo_class", ["model.class", "no attribute 'DigitMLP'", "Did you mean 'DigitsMLP'"]),
        ("set_section", ["unknown section 'trian'", "Did you mean 'train'"]),
    ],
)
@pytest.mark.slow  # the batch of 5 interpreters costs > 10 s of the first test
def test_bad_input_is_one_clear_message_and_exit_status_2(bad_runs, case, fragments):
    assert_user_error(bad_runs[case], *fragments)


# -- in-process: the same entry point, without paying for a new interpreter -----------------------


@pytest.fixture
def in_process(monkeypatch):
    """Call ``main()`` here; restore what it sets up (the ignitrain log handler)."""
    import logging

    monkeypatch.chdir(REPO)
    log = logging.getLogger("ignitrain")
    saved = (list(log.handlers), log.level, log.propagate)
    yield main
    log.handlers[:] = saved[0]
    log.setLevel(saved[1])
    log.propagate = saved[2]


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["train", "{good}", "--set", "train.num_epoch=3"], ["Did you mean 'num_epochs'"]),
        (["train", "{good}", "--set", "lr"], ["--set 'lr'", "expected KEY=VALUE"]),
        (["train", "{good}", "--set", "lr=-1"], ["TrainConfig.lr=-1 is not allowed"]),
        (["lr-find", "{no_module}"], ["lr-find: error:", "cannot import 'nosuchpkg.models.Net'"]),
        (["resume", "{tmp}/gone"], ["resume: error:", "does not exist"]),
        (["resume", "{tmp}"], ["has no config.yaml"]),
        (["evaluate", "{tmp}/gone.pt"], ["checkpoint", "gone.pt", "does not exist"]),
        (["report", "{tmp}"], ["holds no ignitrain run"]),
    ],
)
def test_more_bad_inputs_in_process(in_process, tmp_path, capsys, args, fragments):
    good = write_job(tmp_path / "good.yaml", output_dir=str(tmp_path / "never"))
    no_module = write_job(
        tmp_path / "no_module.yaml", dict(JOB, model={"class": "nosuchpkg.models.Net"})
    )
    names = {"good": good, "no_module": no_module, "tmp": tmp_path}
    assert in_process([arg.format(**names) for arg in args]) == USER_ERROR
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count(": error: ") == 1, err
    for fragment in fragments:
        assert fragment in err
    assert not (tmp_path / "never").exists()


def test_train_refuses_to_mix_into_an_existing_run(in_process, tmp_path, capsys):
    job = write_job(tmp_path / "job.yaml", output_dir=str(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "history.json").write_text("{}")
    assert in_process(["train", str(job)]) == USER_ERROR
    err = capsys.readouterr().err
    assert "already holds a run" in err and "ignitrain resume" in err and "--overwrite" in err


# -- in-process: argument parsing ----------------------------------------------------------------


def test_parser_rejects_bad_arguments_with_usage(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["train", "job.yaml", "--nproc", "0"])
    assert exc.value.code == USER_ERROR
    assert "expected a positive integer, got '0'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([])
    assert exc.value.code == USER_ERROR


def test_main_returns_2_for_a_user_error_without_traceback(in_process, tmp_path, capsys):
    assert in_process(["report", str(tmp_path / "nothing")]) == USER_ERROR
    err = capsys.readouterr().err
    assert "ignitrain report: error:" in err and "does not exist" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_evaluate_uses_the_best_checkpoint_by_default_and_says_so(trained, followups):
    result = followups["evaluate_best"]
    assert_ok(result)
    assert "checkpoint best (accuracy=" in result.stdout and "checkpoint_best_" in result.stdout
    assert "Resumed from" not in result.stderr + result.stdout  # evaluating is not resuming
    accuracies = history_series(trained["output_dir"])["val/accuracy"]["values"]
    best = result.stdout.split("checkpoint best (accuracy=")[1].split(")")[0]
    assert float(best) == pytest.approx(max(accuracies), abs=1e-5)
    last = json.loads(followups["evaluate_last"].stdout)
    assert last["which"] == "last" and "checkpoint_last_" in last["checkpoint"]
    # the test evaluation is recorded for the report
    record = json.loads((trained["output_dir"] / "evaluation.json").read_text())
    assert record["data"].endswith(":test") and "accuracy" in record["metrics"]


@pytest.mark.slow
def test_train_evaluates_the_best_checkpoint_on_the_test_split(trained):
    lines = trained["result"].stdout.splitlines()
    test_line = next(line for line in lines if line.startswith("test "))
    assert "accuracy" in test_line and "best (accuracy=" in test_line


@pytest.mark.slow
def test_lr_find_warns_over_a_flat_curve_and_prints_no_command(followups):
    result = followups["lr_flat"]
    assert_ok(result)
    assert "suggested lr  none reliable: the loss is flat" in result.stderr
    assert "train with" not in result.stdout and "suggested lr  none" in result.stdout
