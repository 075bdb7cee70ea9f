"""Several processes share one benchmark run: each unit is computed once, and the report holds every unit."""

import json
import multiprocessing
import os
import time
from dataclasses import dataclass

import pytest

from cllmfs_trainer.benchmark import Benchmark, BenchmarkConfig
from cllmfs_trainer.benchmark.methods import METHODS, Method

PAUSE = 0.5  # seconds per prediction: long enough that both processes start before the first unit is done


@dataclass(frozen=True)
class LoggedMethod(Method):
    """Predicts nothing, slowly, and appends `<pid> <unit>` to `$CLLMFS_TEST_LOG` (one line per computed unit)."""

    def predict(self, runner, unit, support, query, train_types, test_types):
        time.sleep(PAUSE)
        with open(os.environ["CLLMFS_TEST_LOG"], "a", encoding="utf-8") as log:
            log.write(f"{os.getpid()} {unit.task} {unit.seed} {unit.method}\n")
        return [[] for _ in query], {}


@dataclass(frozen=True)
class LoggedZeroShot(LoggedMethod):
    same_for_every_seed = True


@pytest.fixture
def logged_methods(monkeypatch, tmp_path):
    monkeypatch.setenv("CLLMFS_TEST_LOG", str(tmp_path / "computed.log"))
    for method in (LoggedMethod("logged", "logged"), LoggedZeroShot("logged_zero", "logged zero-shot")):
        monkeypatch.setitem(METHODS, method.name, method)
    return tmp_path / "computed.log"


def _run(config, start, finished):
    start.wait()
    records = Benchmark(config).run(progress=False)
    finished.put(len(records))


def test_two_processes_share_the_units_and_compute_each_once(logged_methods, tmp_path):
    config = BenchmarkConfig(
        output_dir=str(tmp_path / "bench"),
        tasks=["intra:wnut17"],
        methods=["logged", "logged_zero"],
        seeds=[0, 1, 2, 3],
        ks=[1],
        query_size=5,
    )
    fork = multiprocessing.get_context("fork")  # the registered test methods live in this process's memory
    start, finished = fork.Barrier(2), fork.Queue()
    workers = [fork.Process(target=_run, args=(config, start, finished)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0]
    computed = [line.split(" ", 1) for line in logged_methods.read_text().splitlines()]
    units = [unit for _, unit in computed]
    # Four seeds of the trained-like method, and the zero-shot prediction once: its other seeds reuse it.
    expected = [f"intra-wnut17 {seed} logged" for seed in range(4)] + ["intra-wnut17 0 logged_zero"]
    assert sorted(units) == sorted(expected)
    assert len({pid for pid, _ in computed}) == 2  # both processes did work
    bench = Benchmark(config)
    records = [json.loads(bench.unit_path(u).read_text()) for u in bench.units()]
    assert len(records) == 8 and sum("reused_from" in r for r in records) == 3
    # Each process returns the units done when it stopped; the last one to stop saw them all.
    assert max(finished.get(timeout=5) for _ in workers) == 8


def test_a_unit_another_process_holds_is_left_to_it(logged_methods, tmp_path):
    from cllmfs_trainer.locks import hold_lock

    config = BenchmarkConfig(
        output_dir=str(tmp_path / "bench"), tasks=["intra:wnut17"], methods=["logged"], seeds=[0, 1], ks=[1]
    )
    bench = Benchmark(config)
    held, free = bench.units()
    fork = multiprocessing.get_context("fork")
    locked, release = fork.Event(), fork.Event()

    def holder() -> None:
        with hold_lock(bench.layout.unit_lock(held)):
            locked.set()
            release.wait(60)

    other = fork.Process(target=holder)
    other.start()
    try:
        assert locked.wait(30)
        records = Benchmark(config).run(progress=False)  # runs the free unit, then stops: the other is held
        assert [r["seed"] for r in records] == [free.seed]
        assert not bench.unit_path(held).exists()
    finally:
        release.set()
        other.join(30)
    assert [r["seed"] for r in Benchmark(config).run(progress=False)] == [0, 1]  # released: now it runs
