"""Experiments on a Ray cluster (``--ray``), with the stand-in genome, through the real engine.

One real Ray cluster for the module: ``ray start --head`` on 127.0.0.1 with two "slot"
resources (two workers' worth), reached by address as a user's engine would. Training and
scoring run on that node (the same machine here) under bubblewrap; the head follows them.

Marked ``ray``: ``pytest -m 'not ray'`` leaves them out. Without Ray installed they are
skipped, unless AUTORESEARCH_REQUIRE_RAY=1 (set by .ci/run), where that is a failure.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time

import pytest

from engine.control import send_command
from engine.errors import UsageError
from engine.config import ConfigError, load_config
from engine.trial import EVAL_MARKER

from tests.raycluster import Cluster, free_port, local_cluster

from .conftest import log_text, make_engine, processes_in, run_engine

pytestmark = pytest.mark.ray


def _ray():
    try:
        import ray
    except ImportError:
        if os.environ.get("AUTORESEARCH_REQUIRE_RAY") == "1":
            pytest.fail("Ray is not installed, and AUTORESEARCH_REQUIRE_RAY=1: pip install -e '.[ray]'")
        pytest.skip("Ray is not installed (pip install -e '.[ray]')")
    return ray


@pytest.fixture(scope="module")
def cluster():
    _ray()
    with local_cluster({"slot": 2}, num_cpus=2) as c:
        yield c


def ray_engine(repo, cluster: Cluster, steps, **overrides):
    overrides = {"loop__ray": cluster.address, "loop__ray_resources": {"slot": 1}, "loop__hang_seconds": 10,
                 "loop__timeout_seconds": 60, **overrides}
    return make_engine(repo, steps, **overrides)


def gone_soon(path, seconds: float = 10.0) -> None:
    """No process has its working directory under ``path`` within ``seconds``."""
    deadline = time.monotonic() + seconds
    while processes_in(path) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_in(path) == []


def test_four_experiments_on_two_ray_slots(repo, cluster):
    steps = [{"set": {"LR": 0.02}}, {"set": {"MODE": "env"}}]
    engine = ray_engine(repo, cluster, steps, loop__max_experiments=4)
    assert len(engine.s.lanes) == 2 and engine.s.config.loop.workers == 2  # one worker per slot the cluster has
    assert engine.run() == 0, engine.error
    results = engine.results
    rd = engine.rd
    assert sorted(r.n for r in results) == [1, 2, 3, 4]
    assert [r.status for r in results if r.baseline] == ["baseline", "baseline"]
    assert {r.worker for r in results} == {0, 1}
    assert all(r.metric is not None and r.timings.get("train") and r.timings.get("eval") for r in results)
    for r in results:
        exp = rd.experiment(r.n)
        log = log_text(exp / "run.log")
        # Streamed back from the node: its note, training's output, the scorer's after the marker.
        assert re.search(r"\[autoresearch\] ray: node .*worker pid \d+", log), log
        assert "step 1 loss 3.0" in log and log.index("step 1 loss 3.0") < log.index(EVAL_MARKER), log
        assert "evaluating" in log.split(EVAL_MARKER, 1)[1]
        assert json.loads((exp / "eval.json").read_text())["val_bpb"] == r.metric  # the number came from eval.json
    lr = next(r for r in results if r.description == "LR=0.02")
    assert lr.metric < results[0].metric  # the commit's own files trained there
    best = engine.s.standing.best
    assert (rd.experiment(best.n) / "scratch" / "checkpoint.pt").is_file()  # the best's checkpoint came back
    env_run = next(r for r in results if r.description == "MODE=env")
    env = json.loads(log_text(rd.experiment(env_run.n) / "run.log").split("ENV ", 1)[1].splitlines()[0])
    assert env["AUTORESEARCH_CACHE"] == "/data"  # in the node's sandbox, its own data cache mounted
    assert env["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))  # the node's cores / its 2 slots
    assert not any(k for k in env if "KEY" in k or "TOKEN" in k)
    state = rd.read_state()
    assert state.config["loop"]["ray"] == cluster.address and state.flights == []
    gone_soon(cluster.node_dir)  # the actors went with the engine (ray.kill is asynchronous), and all they started


def test_failures_on_a_node_are_recorded_like_local_ones(repo, cluster):
    steps = [{"set": {"MODE": "crash"}}, {"set": {"MODE": "hang"}}, {"set": {"MODE": "timeout"}}]
    engine = run_engine(repo, steps, loop__ray=cluster.address, loop__ray_resources={"slot": 1}, loop__workers=1,
                        loop__max_experiments=5, loop__hang_seconds=1.5, loop__timeout_seconds=3)
    got = {r.description: r for r in engine.results}
    assert got["MODE=crash"].status == "crash" and "boom: the model is broken" in got["MODE=crash"].error
    assert got["MODE=hang"].status == "hang" and "no output and no CPU progress" in got["MODE=hang"].error
    assert got["MODE=timeout"].status == "timeout" and "measured by the engine" in got["MODE=timeout"].error
    assert "stopping the process group: timeout" in log_text(engine.rd.experiment(got["MODE=timeout"].n) / "run.log")


def test_a_run_whose_ray_worker_dies_is_interrupted_skip_works_and_the_loop_goes_on(repo, cluster, background):
    steps = [{"set": {"MODE": "slow", "WIDTH": 100}}, {"set": {"MODE": "slow", "WIDTH": 110}}, {"set": {"LR": 0.02}}]
    bg = background(ray_engine(repo, cluster, steps, loop__workers=1, loop__max_experiments=5))
    rd = bg.rd

    def training(n):
        return lambda: bg.state().experiment == n and "step 2" in log_text(rd.experiment(n) / "run.log")

    bg.wait_for(training(3), 60, "#3 training on the node")
    # The monitor's row names the node, and the node's utilization comes back while it trains.
    bg.wait_for(lambda: (bg.state().node_util or {}).get("cpu") is not None, 20, "the node's utilization")
    flight = bg.state().flights[0]
    assert flight["experiment"] == 3 and flight["node"] == bg.state().node and flight["node"].endswith(")"), flight
    util = flight["node_util"]
    assert 0 <= util["cpu"] <= 100 and 0 < util["mem"][0] <= util["mem"][1] and util["gpus"] == [], util
    pid = int(re.search(r"worker pid (\d+)", log_text(rd.experiment(3) / "run.log")).group(1))
    mine = [d for d in cluster.node_dir.iterdir() if d.name.startswith(f"{pid}-")]
    assert len(mine) == 1 and processes_in(mine[0])  # the training process and its sandbox, on the node
    os.kill(pid, signal.SIGKILL)  # the Ray worker dies mid-run, as with a node gone
    bg.wait_for(lambda: any(r.n == 3 for r in bg.results()), 60, "#3 recorded")
    third = next(r for r in bg.results() if r.n == 3)
    assert third.status == "interrupted" and "went away during this experiment" in third.error
    gone_soon(mine[0])  # nothing it started outlived it

    bg.wait_for(training(4), 60, "#4 training on a new worker")
    assert send_command(rd.socket, "skip")["ok"]
    bg.thread.join(60)
    assert not bg.thread.is_alive() and bg.rc == 0
    got = {r.n: r for r in bg.results()}
    assert sorted(got) == [1, 2, 3, 4, 5]
    assert got[4].status == "skipped" and got[4].error == "skipped by a human"
    assert got[5].status in ("keep", "discard") and got[5].metric is not None  # the loop went on
    assert "stopping the process group: killed" in log_text(rd.experiment(4) / "run.log")


def test_a_node_whose_data_differs_from_the_heads_pauses_the_loop(repo, cluster, background):
    cluster.node_cache.mkdir(parents=True, exist_ok=True)
    manifest = cluster.node_cache / "manifest.json"
    saved = manifest.read_bytes() if manifest.exists() else None
    manifest.write_text(json.dumps({"artifacts": {"train.bin": {"sha256": "0" * 64}}}))
    try:
        bg = background(ray_engine(repo, cluster, [], loop__workers=1, loop__max_experiments=2))
        bg.wait_for(lambda: bg.state().paused and bg.results(), 60, "a pause")
        assert "holds other data than the head's" in bg.state().error
        first = bg.results()[0]
        assert first.status == "interrupted" and "holds other data than the head's" in first.error
        bg.stop()
    finally:
        if saved is None:
            manifest.unlink()
        else:
            manifest.write_bytes(saved)


def test_an_address_where_no_cluster_answers_is_one_line(repo):
    _ray()
    port = free_port()
    config = load_config(repo, {"loop.ray": f"127.0.0.1:{port}"})
    t0 = time.monotonic()
    with pytest.raises(UsageError, match=rf"no Ray cluster answers at 127.0.0.1:{port}"):
        make_engine(repo, [], loop__ray=f"127.0.0.1:{port}")
    assert time.monotonic() - t0 < 30 and config.loop.ray_resources == {"GPU": 1.0}


def test_ray_keys_are_checked(repo):
    with pytest.raises(ConfigError, match="ray_resources must map"):
        load_config(repo, {"loop.ray": "auto", "loop.ray_resources": {"GPU": 0}})
    with pytest.raises(ConfigError, match='ray must be "auto"'):
        load_config(repo, {"loop.ray": " "})
