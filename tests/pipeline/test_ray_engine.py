"""The Ray engine (a pool of Ray actors that load each model once and write their shards' cache
entries) gives the local engine's results: in one process, with workers killed mid-job, on a
two-node cluster, and from the CLI flags."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import write_bigbench_head
from thresher.cli.main import main
from thresher.pipeline import PipelineConfig, run_pipeline

PLUGIN = str(Path(__file__).resolve().parents[1] / "fixtures" / "pipeline_plugin.py")
pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def pool(bigbench_path, tmp_path_factory):
    return write_bigbench_head(bigbench_path, tmp_path_factory.mktemp("pool") / "pool.jsonl", 200)


def _cfg(pool, out, **kw) -> PipelineConfig:
    base = dict(
        data=str(pool),
        out=str(out),
        criteria=["fake_len", "length"],
        selector={"name": "topk", "options": {"criterion": "fake_len"}},
        k=25,
        plugins=[PLUGIN],
        quiet=True,
        report=False,
        shard_size=20,
    )
    return PipelineConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def local(pool, tmp_path_factory):
    res = run_pipeline(_cfg(pool, tmp_path_factory.mktemp("local") / "out"))
    return res, pd.read_parquet(res.scores_path)


def _same(res, local) -> None:
    res0, scores0 = local
    scores = pd.read_parquet(res.scores_path)
    assert scores["id"].is_unique and len(scores) == len(scores0) == res.n_rows
    pd.testing.assert_frame_equal(scores, scores0)
    assert res.selected.tolist() == res0.selected.tolist()


def test_ray_engine_matches_local_and_loads_each_model_once_per_worker(pool, local, tmp_path, ray_cluster):
    pids = tmp_path / "pids"
    crit = [{"name": "fake_len", "options": {"pids": str(pids)}}, "length"]
    res = run_pipeline(_cfg(pool, tmp_path / "ray", criteria=crit, engine="ray", engine_options={"workers": 2}))
    _same(res, local)
    built = pids.read_text().split()
    assert len(built) == len(set(built)) <= 2, (built, os.getpid())  # 10 shards: once per worker
    assert os.getpid() not in map(int, built)  # nothing scored on the driver
    assert res.manifest["engine_run"]["worker_processes"] == 2
    # a re-run with the same cache sends nothing to the workers and builds no scorer
    again = run_pipeline(_cfg(pool, tmp_path / "ray2", criteria=crit, engine="ray", engine_options={"workers": 2},
                              cache_dir=str(tmp_path / "ray" / "cache")))  # fmt: skip
    _same(again, local)
    assert pids.read_text().split() == built and again.cache_misses == 0


def test_a_killed_worker_loses_and_duplicates_no_ids(pool, local, tmp_path, ray_cluster):
    pids = tmp_path / "pids"
    crit = [{"name": "fake_len", "options": {"pids": str(pids), "sleep": 0.2}}, "length"]
    killed: list[int] = []

    def kill_one(shard_index: int) -> None:
        if shard_index == 0 and not killed:  # shards 1..4 are in flight on the two workers
            victim = int(pids.read_text().split()[0])
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)

    cfg = _cfg(pool, tmp_path / "ray", criteria=crit, engine="ray", engine_options={"workers": 2})
    res = run_pipeline(cfg, on_shard=kill_one)
    _same(res, local)
    built = pids.read_text().split()
    assert killed and len(set(built)) == 3  # the killed worker was restarted once, and its shards retried


def test_bad_row_names_file_and_line_under_ray(pool, tmp_path, ray_cluster, capsys):
    bad = tmp_path / "bad.jsonl"
    lines = Path(pool).read_text().splitlines()
    lines[57] = lines[57][:-5]  # a truncated JSON object on line 58
    bad.write_text("\n".join(lines) + "\n")
    code = main(["select", str(bad), "--criteria", "length", "--k", "5", "--out", str(tmp_path / "o"),
                 "--engine", "ray", "--workers", "1", "--quiet", "--shard-size", "20"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "bad.jsonl" in err[0] and "line 58" in err[0], err
    # the shards before the bad row were scored by the workers and are kept in the cache
    assert len(list((tmp_path / "o" / "cache" / "length").glob("*.parquet"))) >= 2


def test_cli_flags(pool, local, tmp_path, ray_cluster, capsys):
    out = tmp_path / "cli"
    code = main(["select", str(pool), "--criteria", "fake_len,length", "--selector", "topk", "--selector-option",
                 "criterion=fake_len", "--k", "25", "--out", str(out), "--plugin", PLUGIN, "--engine", "ray",
                 "--workers", "2", "--gpus-per-worker", "0",
                 "--shard-size", "20", "--quiet", "--no-report"])  # fmt: skip
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["engine"] == "ray" and manifest["engine_run"]["options"]["workers"] == 2
    scores = pd.read_parquet(out / "scores.parquet")
    pd.testing.assert_frame_equal(scores, local[1])
    # a Ray flag without --engine ray is refused, not ignored
    code = main(["select", str(pool), "--criteria", "length", "--k", "5", "--out", str(tmp_path / "x"),
                 "--workers", "2", "--quiet"])  # fmt: skip
    assert code == 2 and "--workers: only with --engine ray" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_cli() -> str:
    return str(Path(sys.executable).with_name("ray"))


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    t = time.time()
    while time.time() - t < timeout:
        assert proc.poll() is None, f"`ray start --head` exited with {proc.returncode}"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise AssertionError(f"the Ray head did not listen on port {port} in {timeout} s")


TWO_NODE_DRIVER = r"""
import json, sys, time
import ray
from thresher.pipeline import PipelineConfig, run_pipeline
cfg = json.loads(sys.argv[1])
ray.init(address=cfg["engine_options"]["address"], log_to_driver=False)
t = time.time()
while len([n for n in ray.nodes() if n["Alive"]]) < 2:
    if time.time() - t > 60:
        sys.exit("the cluster did not reach 2 nodes in 60 s")
    time.sleep(0.5)
res = run_pipeline(PipelineConfig(**cfg))
print(json.dumps({"selected": res.selected.tolist(), "n": res.n_rows, "scores": str(res.scores_path),
                  "nodes": res.manifest["engine_run"]["nodes"]}))
"""


def test_two_node_cluster_gives_the_local_selection(pool, local, tmp_path, _ray_session):
    """A head and a second node started on this machine (`ray start --head`, `ray start --address`);
    two one-CPU workers, so one runs on each node. The driver is a process of its own, as a user's is:
    Ray fixes a process's authentication mode when it first starts or joins a cluster, and this
    cluster's three processes must share one (token auth, the token file created by the head when
    missing), whatever this test process did before."""
    ray = _ray_session
    if ray.is_initialized():
        ray.shutdown()  # leave the tests' local cluster
    port = _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}
    common = ["--num-cpus", "1", "--block", "--disable-usage-stats"]
    # this cluster's session files, not /tmp/ray (where other drivers look); short: it holds unix sockets
    temp = tempfile.mkdtemp(prefix="thr-ray-", dir="/tmp")
    head = subprocess.Popen([_ray_cli(), "start", "--head", f"--port={port}", "--include-dashboard=false",
                             f"--temp-dir={temp}", *common],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    nodes = [head]
    try:
        addr = f"127.0.0.1:{port}"
        _wait_for_port(port, head)
        nodes.append(subprocess.Popen([_ray_cli(), "start", f"--address={addr}", *common], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
        opts = {"address": addr, "workers": 2, "cpus_per_worker": 1}
        cfg = {k: v for k, v in vars(_cfg(pool, tmp_path / "two", engine="ray", engine_options=opts)).items()}
        out = subprocess.run([sys.executable, "-c", TWO_NODE_DRIVER, json.dumps(cfg)], env=env, capture_output=True,
                             text=True, timeout=300)  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        got = json.loads(out.stdout.strip().splitlines()[-1])
        res0, scores0 = local
        pd.testing.assert_frame_equal(pd.read_parquet(got["scores"]), scores0)
        assert got["n"] == res0.n_rows and got["selected"] == res0.selected.tolist()
        assert got["nodes"] == 2
    finally:
        for p in reversed(nodes):
            p.send_signal(signal.SIGTERM)
        for p in nodes:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(temp, ignore_errors=True)


def test_an_unreachable_ray_address_fails_at_once_in_one_line():
    """Ray retries a dead address for minutes; the engine checks that something listens first."""
    pytest.importorskip("ray")
    from thresher.engines.ray_engine import _check_reachable
    from thresher.errors import OptionError, ResourceError

    with socket.socket() as s:  # a port nobody listens on: bound, then closed
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(ResourceError, match=rf"--ray-address 127.0.0.1:{dead}: no Ray cluster answers there"):
        _check_reachable(f"127.0.0.1:{dead}")
    with pytest.raises(ResourceError, match="no Ray cluster answers there"):
        _check_reachable(f"ray://127.0.0.1:{dead}")
    assert time.monotonic() - t0 < 5
    with pytest.raises(OptionError, match="expected HOST:PORT"):
        _check_reachable("headnode")
    with socket.socket() as s:  # something listens: the check lets Ray take over
        s.bind(("127.0.0.1", 0))
        s.listen()
        _check_reachable(f"127.0.0.1:{s.getsockname()[1]}")
    for own in (None, "auto", "local"):
        _check_reachable(own)


def test_a_quiet_run_starts_ray_without_its_start_up_lines(monkeypatch):
    """``--quiet`` prints nothing: a local Ray is started with only its errors logged (its token warning and
    "Started a local Ray instance" are INFO/WARNING lines); a run that is not quiet keeps Ray's default."""
    ray = pytest.importorskip("ray")
    import logging

    from thresher import progress
    from thresher.engines.ray_engine import RayEngine

    calls: list = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    with progress.quiet():
        RayEngine()
    RayEngine()
    assert calls[0]["logging_level"] == logging.ERROR and "logging_level" not in calls[1]
    assert calls[0]["address"] == calls[1]["address"] == "local"


def test_every_node_is_asked_whether_it_sees_the_input_and_the_cache(pool, tmp_path, ray_cluster):
    from thresher.engines.ray_engine import RayPool, _node_view, node_verdict
    from thresher.errors import ResourceError

    class Idle:
        def __init__(self, *a):
            pass

    p = RayPool(Idle, (), 1, 0, 1, None)
    try:
        gone = tmp_path / "gone.jsonl"
        gone.write_text("{}\n")
        assert p.node_problems([str(pool)], str(tmp_path / "cache")) == []
        assert not [f for f in (tmp_path / "cache").iterdir()]  # the probe file is removed
        size = os.path.getsize(gone)
        gone.unlink()  # as if the file were local to another machine
        view = _node_view([(str(pool), os.path.getsize(pool)), (str(gone), size), (str(pool), 1)], str(pool))
        assert view["cache"] and len(view["input"]) == 2
        assert view["input"][0].startswith(f"{gone}: No such file") and "1 where the run started" in view["input"][1]
    finally:
        p.close()
    views = [{"node": "a (1)", "input": [], "cache": True}, {"node": "b (2)", "input": ["/x: missing"], "cache": True}]
    assert node_verdict(views, "/c") == ["b (2): /x: missing"]
    with pytest.raises(
        ResourceError, match=r"--cache-dir /c: not visible from node\(s\) b \(2\); .*shared file system"
    ):
        node_verdict([{**views[1], "cache": False}, views[0]], "/c")


def test_input_a_node_cannot_read_is_read_by_the_driver(pool, local, tmp_path, ray_cluster, monkeypatch):
    """A path local to the driver's machine: the run still completes, with the same scores and
    selection, the driver reading the rows and sending them to the workers."""
    from thresher.engines import ray_engine

    monkeypatch.setattr(ray_engine.RayPool, "node_problems", lambda self, files, root: [f"b (2): {files[0]}: missing"])
    res = run_pipeline(_cfg(pool, tmp_path / "ray", engine="ray", engine_options={"workers": 2}))
    _same(res, local)
    assert res.manifest["engine_run"]["read_on_workers"] is False
    assert "the workers cannot all read the input (b (2): " in (tmp_path / "ray" / "run.log").read_text()


def test_workers_the_cluster_cannot_hold_are_refused_before_any_work(ray_cluster, monkeypatch):
    """Ray would wait forever for an actor no node can hold (and the shards sent to it would never
    come back): the pool counts the room node by node first."""
    from thresher.engines import ray_engine
    from thresher.errors import OptionError

    class Idle:
        def __init__(self, *a):
            pass

    cpus = int(ray_cluster.cluster_resources().get("CPU", 0))
    with pytest.raises(OptionError, match=rf"--workers {cpus + 1} with 1 CPU and 0 GPU each: .* room for {cpus} "):
        ray_engine.RayPool(Idle, (), cpus + 1, 0, 1, None)
    with pytest.raises(OptionError, match="with 1 CPU and 1 GPU each: the Ray cluster has room for 0"):
        ray_engine.RayPool(Idle, (), 1, 1, 1, None)
    ray_engine.RayPool(Idle, (), cpus, 0, 1, None).close()  # exactly full: accepted

    class TwoNodes:  # one node with a GPU and 2 CPUs, one with 4 CPUs and none
        @staticmethod
        def nodes():
            return [{"Alive": True, "Resources": {"CPU": 2.0, "GPU": 1.0}}, {"Alive": True, "Resources": {"CPU": 4.0}},
                    {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}]  # fmt: skip

    monkeypatch.setattr(ray_engine, "_ray", lambda: TwoNodes)
    ray_engine.check_fits(2, 1, 0.5)  # both on the GPU node
    ray_engine.check_fits(6, 1, 0)
    with pytest.raises(OptionError, match=r"room for 2 \(2 node\(s\), 6 CPUs, 1 GPUs in all\)"):
        ray_engine.check_fits(3, 1, 0.5)
    ray_engine.check_fits(3, 2, 0)  # 2 CPUs each: one on the first node, two on the second
    with pytest.raises(OptionError, match="room for 3 "):
        ray_engine.check_fits(4, 2, 0)  # 8 CPUs asked of 6 in all; and 3 at most by nodes


CRASHING_PLUGIN = """
import os
from thresher.registry import CRITERIA

@CRITERIA.register("crash_len", doc="ends its process on every call", options=[], direction="max", needs=())
class CrashLen:
    def __call__(self, batch):
        os._exit(3)

    def cache_key(self):
        return "crash-len-v1"
"""


def test_a_worker_that_keeps_dying_stops_the_run_in_one_line(pool, tmp_path, ray_cluster):
    """A scorer that ends its process on every shard: the worker is restarted a few times, then the
    run stops with one line (it restarted forever before)."""
    from thresher.engines.ray_engine import MAX_RESTARTS
    from thresher.errors import ResourceError

    plugin = tmp_path / "crash_plugin.py"
    plugin.write_text(CRASHING_PLUGIN, encoding="utf-8")
    cfg = _cfg(pool, tmp_path / "out", criteria=["crash_len"], selector=None, plugins=[str(plugin)], engine="ray")
    with pytest.raises(ResourceError, match=rf"died and was restarted {MAX_RESTARTS} times, then died again"):
        run_pipeline(cfg)
