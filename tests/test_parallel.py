"""lib.parallel: independent work on the cores, in order, with single-threaded kernels per worker."""
import threading

import pytest
import torch

from lib.parallel import balanced_chunks, default_workers, map_on_cores


def test_results_are_those_of_a_sequential_run_in_order():
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    fn = lambda i: (x[i] @ x.T).tanh().sum()
    assert torch.equal(torch.stack(map_on_cores(fn, range(6), workers=3)), torch.stack([fn(i) for i in range(6)]))


def test_items_run_side_by_side_single_threaded_and_the_thread_count_is_restored():
    outer = torch.get_num_threads()
    barrier = threading.Barrier(2, timeout=20)  # breaks unless two items run at the same time

    def fn(i):
        barrier.wait()
        return threading.get_ident(), torch.get_num_threads()

    seen = map_on_cores(fn, range(2), workers=2)
    assert len({ident for ident, _ in seen}) == 2
    assert all(n == 1 for _, n in seen)
    assert torch.get_num_threads() == outer


def test_one_worker_runs_in_the_callers_thread():
    me = threading.get_ident()
    assert map_on_cores(lambda i: threading.get_ident(), range(3), workers=1) == [me] * 3
    with pytest.raises(ValueError, match="workers must be >= 1"):
        map_on_cores(lambda i: i, range(3), workers=0)


def test_balanced_chunks_cover_every_index_once_with_equal_cost():
    costs = [2, 2, 2, 2, 2, 2, 1, 1]  # the CEM chapter: 6 rows with the auto-encoder, 2 without
    groups = balanced_chunks(costs, 2)
    assert sorted(i for g in groups for i in g) == list(range(8))
    assert [sum(costs[i] for i in g) for g in groups] == [7, 7]
    assert all(g == sorted(g) for g in groups)
    assert balanced_chunks([1.0], 4) == [[0]]


def test_default_workers_is_one_off_the_cpu():
    assert default_workers("cpu") >= 1
    assert default_workers("cuda") == 1
