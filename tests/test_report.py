"""Run reports: the self-contained HTML page, the terminal summary, rendering in Chromium."""

import base64
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from ignitrain import TrainConfig, create_classification_trainer, jobs
from ignitrain.report import collect, render_html, summary_table, write_report
from tests.conftest import make_mlp

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_run(output_dir, data, **options):
    """Train a real tiny run with the Python API and record its job as the CLI does."""
    config = TrainConfig(
        num_epochs=2,
        lr=0.01,
        batch_size=64,
        save_every=-1,
        n_saved=2,
        progress_bar=False,
        tensorboard=False,
        output_dir=str(output_dir),
        **options,
    )
    job = {
        "flavor": "classification",
        "model": {"class": "examples.models.DigitsMLP", "args": {"hidden": 16}},
        "data": {"factory": "ignitrain.datasets.digits", "args": {"image": False}},
        "flavor_args": {},
        "train": config.to_dict(),
    }
    jobs.write_job(job, output_dir / "config.yaml", command="ignitrain train tiny.yaml")
    trainer = create_classification_trainer(make_mlp(hidden=16), config, data[0], data[1])
    trainer.train()
    return output_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, digits_flat):
    return make_run(tmp_path_factory.mktemp("report") / "run", digits_flat)


@pytest.fixture(scope="module")
def report_page(run_dir):
    """``report.html`` of the shared run, written once (plotting costs a second or two)."""
    return write_report(run_dir)


class _Resources(HTMLParser):
    """Collects every ``src``/``href`` and the ``<img>`` sources of a page."""

    def __init__(self):
        super().__init__()
        self.links, self.images = [], []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("src", "href"):
                self.links.append(value)
                if tag == "img":
                    self.images.append(value)


def test_report_is_one_self_contained_page(run_dir, report_page):
    assert report_page == run_dir / "report.html"
    page = report_page.read_text()
    parser = _Resources()
    parser.feed(page)
    # nothing fetched from elsewhere: every resource is a data URI
    assert parser.images and all(link.startswith("data:") for link in parser.links)
    assert "<link" not in page and "<script" not in page and "@import" not in page
    for image in parser.images:
        assert image.startswith("data:image/png;base64,")
        png = base64.b64decode(image.split(",", 1)[1])
        assert png.startswith(PNG_SIGNATURE) and len(png) > 1000


def test_report_shows_config_metrics_stop_reason_and_checkpoints(run_dir, report_page):
    page = report_page.read_text()
    summary = collect(run_dir)
    # the config, as recorded (escaped: the HTML has no raw '<' from it)
    assert "# started with: ignitrain train tiny.yaml" in page
    assert "examples.models.DigitsMLP" in page and "num_epochs: 2" in page
    # final and best of each epoch metric, as the history holds them
    accuracy = next(row for row in summary.metrics if row.name == "val/accuracy")
    assert accuracy.final == summary.history["val/accuracy"][-1]
    assert accuracy.best == max(summary.history["val/accuracy"])
    assert f"{accuracy.final:.4g}" in page and f"{accuracy.best:.4g}" in page
    assert {row.name for row in summary.metrics} >= {"val/accuracy", "val/loss", "train/loss"}
    assert "completed at epoch 2, iteration 40" in page
    names = sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt"))
    assert names and all(name in page for name in names)
    assert "checkpoint_latest.json" not in page  # the pointer is not a checkpoint


def test_summary_table_lists_stop_reason_metrics_and_checkpoints(run_dir):
    table = summary_table(run_dir).splitlines()
    assert table[0].split() == ["run", str(run_dir)]
    assert table[1] == "stopped   completed at epoch 2, iteration 40"
    assert table[2].split() == ["metric", "final", "best", "epoch"]
    rows = {line.split()[0]: line.split()[1:] for line in table[3:-1]}
    history = collect(run_dir).history
    assert float(rows["val/loss"][0]) == pytest.approx(history["val/loss"][-1], rel=1e-3)
    assert float(rows["val/loss"][1]) == pytest.approx(min(history["val/loss"]), rel=1e-3)
    assert table[-1].startswith("checkpoints (")


def test_report_names_an_early_stop(tmp_path, digits_flat):
    run = make_run(tmp_path / "run", digits_flat, stop_when={"accuracy": 0.05})
    page = write_report(run).read_text()
    assert re.search(r"stop-other.*target_reached at epoch 1", page)
    assert "stopped   target_reached at epoch 1" in summary_table(run)


def test_report_of_a_script_run_takes_the_config_from_its_checkpoint(tmp_path, digits_flat):
    run = make_run(tmp_path / "run", digits_flat, weight_decay=0.125)
    (run / "config.yaml").unlink()  # a Python script writes no job file
    page = write_report(run).read_text()
    assert "from the newest checkpoint" in page and "weight_decay: 0.125" in page
    # the model description saved with the weights names the class
    assert "torch.nn.modules.container.Sequential" in page


def test_report_of_a_run_that_never_started_and_values_are_escaped(tmp_path):
    (tmp_path / "config.yaml").write_text("flavor: <script>alert(1)</script>\n")
    page = write_report(tmp_path).read_text()
    assert "not started (no history.json)" in page
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "No checkpoints" in page and "No history to plot" in page
    # Summary, Metrics, Curves, Checkpoints, Config; no lr-find section without its plot
    assert render_html(collect(tmp_path)).count("<section>") == 5
    assert "Learning-rate range test" not in page


def test_report_arguments_are_checked(tmp_path):
    with pytest.raises(TypeError, match="output_dir must be a path, got int"):
        write_report(3)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_report(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="holds no ignitrain run"):
        summary_table(tmp_path)


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _png_size(data):
    # IHDR is the first chunk: width and height are its first two big-endian uint32
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.mark.skipif(_chromium() is None, reason="no chromium/chromium-browser/google-chrome")
def test_report_renders_in_headless_chromium(report_page, tmp_path):
    page = report_page
    shot = tmp_path / "report.png"
    result = subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",  # tests may run as root in a container
            "--disable-gpu",
            "--hide-scrollbars",
            # no network here: without these Chromium keeps trying to reach its services
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1280,1600",
            f"--screenshot={shot}",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    data = shot.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and _png_size(data) == (1280, 1600)
    assert len(data) > 50_000  # a rendered page with plots, not a blank canvas


# -- issue 13: test metrics, wall time, resumes, stop detail, the grid plot -------------------


def test_report_shows_test_metrics_wall_time_and_stop_detail(tmp_path, digits_flat):
    from ignitrain.evaluation_record import write_evaluation

    out = make_run(tmp_path / "run", digits_flat, stop_when={"accuracy": 0.05})
    write_evaluation(
        out,
        {
            "checkpoint": str(out / "checkpoints" / "checkpoint_best_accuracy=0.9_iter1.pt"),
            "which": "best",
            "chosen": "best (accuracy=0.9)",
            "data": "ignitrain.datasets.digits:test",
            "num_samples": 270,
            "epoch": 2,
            "metrics": {"accuracy": 0.912345, "loss": 0.3},
        },
    )
    summary = collect(out)
    assert summary.wall_time_s is not None and 0 < summary.wall_time_s < 300
    page = render_html(summary)
    assert "<h2>Test</h2>" in page and "0.9123" in page and "best (accuracy=0.9)" in page
    assert "wall time" in page
    table = summary_table(out)
    assert "test      accuracy 0.9123" in table and "wall time " in table
    # the stop reason comes with its detail, from the run's own config
    assert summary.stop_reason == "target_reached"
    assert "target_reached at epoch 1, iteration 20: reached stop_when: accuracy 0.05" in page
    from ignitrain.run_story import stop_detail

    history = summary.history
    early = stop_detail("early_stopping", {"early_stopping_patience": 3}, history)
    best = max(history["val/accuracy"])
    assert early == f"val/accuracy did not improve on {best:.4g} (epoch 1) for 3 validations"


def test_report_lists_resumes_from_the_run_record_and_world_size_changes(tmp_path, digits_flat):
    import json

    import torch

    out = make_run(tmp_path / "run", digits_flat)
    record = {
        "resumes": [
            {"at": "2026-12-01T21:00:00", "from": "checkpoint_preempt_iter00000030.pt",
             "world_size_before": 2, "world_size_after": 1},
        ]
    }  # fmt: skip
    (out / "run.json").write_text(json.dumps(record))
    # one checkpoint as if written by 2 processes: the report says the world size changed
    first = sorted((out / "checkpoints").glob("checkpoint_periodic_*.pt"))[0]
    payload = torch.load(first, weights_only=True)
    payload["world_size"] = 2
    torch.save(payload, first)
    page = render_html(collect(out))
    assert "<h2>Resumes</h2>" in page and "checkpoint_preempt_iter00000030.pt" in page
    assert "world_size_before" in page and "World size changed" in page
    assert "resumed</b><span>1 time(s)" in page
    (out / "run.json").unlink()
    assert "No run record (run.json)" in render_html(collect(out))


def test_history_plot_is_a_grid_readable_at_100_percent_with_the_best_epoch(tmp_path):
    from matplotlib.image import imread

    from ignitrain import History

    history = History()
    for epoch, (acc, loss) in enumerate([(0.5, 1.0), (0.9, 0.4), (0.8, 0.5)], start=1):
        history.log("val/accuracy", acc, epoch)
        history.log("val/loss", loss, epoch)
        history.log("train/loss", loss + 0.1, epoch)
    for name in ("val/f1", "val/precision", "val/recall"):
        for epoch in (1, 2, 3):
            history.log(name, 0.5 + 0.1 * epoch, epoch)
    for it in range(1, 31):
        history.log("lr", 0.1 / it, it)
    path = history.plot(tmp_path / "history.png")
    height, width = imread(path).shape[:2]
    # 6 panels in 3 columns: 2 rows, each panel ~500x360 px (the old strip: 2268x306)
    assert width <= 1600 and height >= 600 and width / height < 2.5
    assert history._best_point(None, None) == (2, "val/accuracy", 0.9)
    assert history._best_point("val/loss", None) == (2, "val/loss", 0.4)
    assert history._best_point("val/loss", 3) == (3, "val/loss", 0.5)
    with pytest.raises(ValueError, match="columns=0 is not allowed"):
        history.plot(tmp_path / "x.png", columns=0)
