"""How the Ray engine runs a pool-scoped criterion's neighbour search: ``--workers`` search tasks
at a time with a worker's CPUs each; with ``--gpus-per-worker`` the whole-pool task holds the GPUs
and searches there (Ray hides every GPU from a task that asks for none, so a split search would
run on the CPU)."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from thresher.engines import ray_engine
from thresher.engines.ray_engine import RayEngine, _score_whole, ray_mapper

pytestmark = pytest.mark.ray


def _overlaps(spans: list) -> int:
    spans = sorted(spans, key=lambda s: s[1])
    return sum(b[1] < a[2] for a, b in zip(spans, spans[1:]))


def test_the_search_tasks_run_at_most_max_in_flight_at_once_results_in_order(ray_cluster):
    def _interval(seconds: float, tag: int) -> tuple:  # local: shipped by value to the workers
        t0 = time.time()
        time.sleep(seconds)
        return tag, t0, time.time()

    one = list(ray_mapper(num_cpus=1, max_in_flight=1)(_interval, [0.4] * 4, range(4)))
    assert [r[0] for r in one] == [0, 1, 2, 3]
    assert _overlaps(one) == 0  # a 2-CPU cluster, yet one at a time: --workers 1
    two = list(ray_mapper(num_cpus=1, max_in_flight=2)(_interval, [1.5] * 4, range(4)))
    assert [r[0] for r in two] == [0, 1, 2, 3]
    assert _overlaps(two) >= 1


def test_the_mapper_is_lazy_a_result_comes_back_before_later_tasks_are_submitted(ray_cluster):
    pulled = []

    def args():
        for i in range(5):
            pulled.append(i)
            yield i

    results = ray_mapper(num_cpus=1, max_in_flight=2)(abs, args())
    assert pulled == []  # nothing submitted before the first result is asked for
    assert next(results) == 0
    assert pulled == [0, 1, 2]  # two in flight, the third pulled when the first was collected
    assert list(results) == [1, 2, 3, 4]


class _Splitting:
    """A pool-scoped scorer whose neighbour search can be split (it has a ``mapper``)."""

    def __init__(self, **options):
        self.mapper = map

    def __call__(self, table):
        used = getattr(self.mapper, "__name__", type(self.mapper).__name__)
        return pd.DataFrame({"id": table["id"], "mapper": [used] * len(table)})


def test_the_whole_pool_task_splits_the_search_only_when_told():
    t = pd.DataFrame({"id": ["a", "b"]})
    assert set(_score_whole(_Splitting, {}, None, None, t)["mapper"]) == {"map"}  # searched in the task
    split = {"num_cpus": 1.0, "max_in_flight": 3}
    assert set(_score_whole(_Splitting, {}, split, None, t)["mapper"]) == {
        "ray_mapper(max_in_flight=3, num_cpus=1, num_gpus=0)"
    }


class _FakeRay:
    """Records the resources of the task ``score_pool`` submits and the split it passes."""

    def __init__(self):
        self.calls: list = []
        self.warmed: list = []  # (resources, module) of each warm-up task

    def remote(self, fn=None, **resources):
        if fn is not None:  # ray.remote(fn): no resources
            return self.remote(**{})(fn)

        def wrap(f):
            outer = self

            class Task:
                def remote(self, *args):
                    if f is ray_engine._warm_process:
                        outer.warmed.append((resources, *args))
                        return None
                    outer.calls.append((resources, args[2]))
                    return f(*args)

            return Task()

        return wrap

    def get(self, x):
        return x


@pytest.mark.parametrize(
    "gpus,workers,cpus,want_task,want_split",
    [
        (0.0, 2, 1.0, {}, {"num_cpus": 1.0, "max_in_flight": 2}),
        (0.0, 1, 3.0, {}, {"num_cpus": 3.0, "max_in_flight": 1}),
        (1.0, 2, 1.0, {"num_gpus": 1.0}, None),
    ],
)
def test_score_pool_gives_the_search_the_workers_resources(monkeypatch, gpus, workers, cpus, want_task, want_split):
    fake = _FakeRay()
    monkeypatch.setattr(ray_engine, "_ray", lambda: fake)
    eng = RayEngine.__new__(RayEngine)
    eng.workers, eng.gpus, eng.cpus = workers, gpus, cpus
    scorer = ray_engine._RayScorer(_Splitting, {})
    out = eng.score_pool(scorer, pd.DataFrame({"id": ["x", "y", "z"]}), "knn_distance")
    assert fake.calls == [(want_task, want_split)]
    # the search tasks' processes import the scorer's module meanwhile (none on a GPU: no search tasks)
    assert fake.warmed == ([] if gpus else [({"num_cpus": cpus}, _Splitting.__module__)] * workers)
    assert out["id"].tolist() == ["x", "y", "z"] and np.all(
        out["mapper"] == ("map" if gpus else f"ray_mapper(max_in_flight={workers}, num_cpus={cpus:g}, num_gpus=0)")
    )
