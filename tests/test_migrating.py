"""Every ``python`` snippet of docs/migrating.md runs as it stands, in a fresh process."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

from tests._pool import job_pool, selected_params

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "migrating.md"
pytestmark = pytest.mark.slow


def snippets() -> list[tuple[str, str]]:
    """``(heading, code)`` of each python block, named by the section it is in."""
    found, heading = [], "top"
    for part in re.split(r"(```python\n.*?```)", PAGE.read_text(), flags=re.S):
        if part.startswith("```python"):
            found.append((heading, part[len("```python\n") : -3]))
        else:
            titles = re.findall(r"^#+ (.+)$", part, re.M)
            heading = titles[-1] if titles else heading
    return found


SNIPPETS = snippets()


def test_the_page_covers_each_reference_trainer_basic_and_advanced():
    text = PAGE.read_text()
    for trainer in ("## lernomatic", "## lis2", "## pytorch-accelerated", "## qurious"):
        section = text.split(trainer, 1)[1].split("\n## ", 1)[0]
        assert "### Basic" in section and "### Advanced" in section, trainer
        assert "```python" in section, trainer
    assert len(SNIPPETS) >= 8


def _run_snippet(code: str, folder: Path) -> subprocess.CompletedProcess:
    script = folder / "snippet.py"
    script.write_text(code)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def snippet_runs(request, tmp_path_factory):
    """Every selected snippet run in a fresh process of its own, two at a time (each is one
    single-threaded process): index -> future of the finished process."""
    calls = {}
    for index in selected_params(request, "index"):
        code = SNIPPETS[index][1]
        if "import transformers" in code and importlib.util.find_spec("transformers") is None:
            continue  # the test skips it
        calls[index] = partial(_run_snippet, code, tmp_path_factory.mktemp(f"snippet{index}"))
    with job_pool(calls) as futures:
        yield futures


@pytest.mark.parametrize(
    "index", range(len(SNIPPETS)), ids=[f"{i}-{h[:30]}" for i, (h, _) in enumerate(SNIPPETS)]
)
def test_each_snippet_runs(index, snippet_runs):
    heading, code = SNIPPETS[index]
    if "import transformers" in code and importlib.util.find_spec("transformers") is None:
        pytest.skip("transformers is not installed (it is in the dev extras)")
    result = snippet_runs[index].result()
    assert result.returncode == 0, f"{heading}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr
