"""``ignitrain.import_paths.resolve_import``: objects from ``"pkg.module.Name"`` strings."""

import collections.abc

import pytest

from ignitrain import jobs
from ignitrain.errors import JobError
from ignitrain.import_paths import resolve_import


def test_dotted_and_colon_paths_import_the_object():
    assert resolve_import("collections.abc.Mapping") is collections.abc.Mapping
    assert resolve_import("collections.abc:Mapping") is collections.abc.Mapping
    assert resolve_import("os.path.join") is __import__("os").path.join


def test_jobs_keeps_the_name():
    assert jobs.resolve_import is resolve_import


@pytest.mark.parametrize(
    ("path", "match"),
    [
        ("", r"thing: expected an import path like 'pkg.module.Name', got ''"),
        ("Mapping", r"thing: 'Mapping' is not an import path"),
        (
            "collections.abc.Mappin",
            r"'collections\.abc' has no attribute 'Mappin'\. Did you mean 'Mapping'\?",
        ),
        ("surely_absent_pkg.Name", r"cannot import 'surely_absent_pkg\.Name'"),
    ],
)
def test_errors_say_which_part_failed(path, match):
    with pytest.raises(JobError, match=match):
        resolve_import(path, what="thing")
