"""engine.workers: side-by-side trainings share the cores and log as their parent does."""

from __future__ import annotations

import logging

import pytest
import torch

from resnexus.engine.workers import log_like_parent, run_side_by_side, threads_per_job


def threads_and_square(x: int) -> tuple[int, int]:
    """A task for the spawned workers (module level, so it pickles): what a worker sees."""
    if x < 0:
        raise ValueError(f"negative task {x}")
    return torch.get_num_threads(), x * x


@pytest.fixture
def eight_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(8)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(("jobs", "threads"), [(1, 8), (2, 4), (3, 2), (8, 1), (16, 1)])
def test_threads_per_job_shares_the_threads_and_gives_each_job_at_least_one(eight_threads, jobs, threads):
    assert threads_per_job(jobs) == threads


def test_one_job_runs_the_tasks_here_in_order():
    results = list(run_side_by_side(threads_and_square, [(3,), (1,), (2,)], jobs=1))
    assert results == [
        (0, (torch.get_num_threads(), 9)),
        (1, (torch.get_num_threads(), 1)),
        (2, (torch.get_num_threads(), 4)),
    ]


def test_two_jobs_return_every_result_under_its_index_with_half_the_threads_each(eight_threads):
    results = dict(run_side_by_side(threads_and_square, [(3,), (1,), (2,)], jobs=2))
    assert results == {0: (4, 9), 1: (4, 1), 2: (4, 4)}


def test_a_failing_task_raises_its_own_error_in_the_parent(eight_threads):
    with pytest.raises(ValueError, match="negative task -1"):
        dict(run_side_by_side(threads_and_square, [(2,), (-1,)], jobs=2))


def test_log_like_parent_shows_messages_only_when_the_parent_did():
    package = logging.getLogger("resnexus")
    saved = (package.level, list(package.handlers))
    try:
        package.handlers.clear()
        log_like_parent(logging.WARNING, shown=False)
        assert package.level == logging.WARNING and not package.handlers
        log_like_parent(logging.INFO, shown=True)
        assert package.level == logging.INFO
        assert len(package.handlers) == 1 and isinstance(package.handlers[0], logging.StreamHandler)
        log_like_parent(logging.INFO, shown=True)  # a second call adds no second handler
        assert len(package.handlers) == 1
    finally:
        package.setLevel(saved[0])
        package.handlers[:] = saved[1]
