"""Independent subprocess jobs of a test module, run two at a time.

The suite's slow tests mostly wait on one single-threaded subprocess (an example, a docs
snippet, a training job) while the machine's second core idles: CI has two cores. A
module-scoped fixture submits its jobs to :func:`job_pool` and each test waits for its own
job's result and asserts on it, exactly as if it had run the job itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

import pytest

__all__ = ["WORKERS", "job_pool", "selected_params"]

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")

#: Jobs at once: one per core, two at most (each job is one single-threaded process).
WORKERS = max(1, min(2, os.cpu_count() or 1))


@contextmanager
def job_pool(calls: Mapping[K, Callable[[], T]]) -> Iterator[dict[K, Future[T]]]:
    """Start ``calls`` :data:`WORKERS` at a time, in their order; yield their futures.

    On exit the jobs not started yet are cancelled and the running ones waited for (each
    bounds itself with its subprocess timeout).
    """
    pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="test-job")
    futures = {key: pool.submit(call) for key, call in calls.items()}
    try:
        yield futures
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def selected_params(request: pytest.FixtureRequest, argname: str) -> list[Any]:
    """The values of the parameter ``argname`` of the tests of the requesting module that
    this session runs (after ``-k``/``-m`` selection), in their order, each once: a
    fixture then starts only the jobs some test will read."""
    values: list[Any] = []
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if getattr(item, "module", None) is not request.module or callspec is None:
            continue
        value = callspec.params.get(argname, values)  # ``values``: a marker for "absent"
        if value is not values and value not in values:
            values.append(value)
    return values
