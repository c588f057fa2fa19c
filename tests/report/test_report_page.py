"""ignitrain/report/page.py: the Resumes section of a run record with starts."""

import json

from ignitrain.report import collect, render_html

ENV = {"ignitrain": "0.1.0", "torch": "2.13.0", "git_commit": "abc123", "cwd": "/somewhere"}


def _run(tmp_path, starts):
    (tmp_path / "config.yaml").write_text("flavor: classification\ntrain: {lr: 0.1}\n")
    (tmp_path / "run.json").write_text(json.dumps({**ENV, "starts": starts}))
    return render_html(collect(tmp_path))


def test_a_run_started_once_is_not_resumed(tmp_path):
    page = _run(tmp_path, [{"kind": "start", "epoch": 0, "iteration": 0, **ENV}])
    assert "<b>resumed</b>" not in page
    assert "<h2>Resumes</h2>" not in page  # no checkpoints either: nothing to say


def test_a_resume_is_listed_without_the_environment_columns(tmp_path):
    starts = [
        {"kind": "start", "epoch": 0, "iteration": 0, **ENV},
        {"kind": "resume", "epoch": 2, "iteration": 40, "host": "gpu-7", **ENV},
    ]
    page = _run(tmp_path, starts)
    assert "resumed</b><span>1 time(s)" in page
    resumes = page.split("<h2>Resumes</h2>")[1].split("</section>")[0]
    assert "<th>iteration</th>" in resumes and "<td>gpu-7</td>" in resumes
    assert "git_commit" not in resumes and "/somewhere" not in resumes
