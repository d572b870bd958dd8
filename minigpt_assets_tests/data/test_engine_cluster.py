"""A Ray cluster of a head and a worker node, started with `ray start` on loopback: the data stages run on it and
give the process pool's bytes (filtering, MinHash signing and the bucketed join, removal, tokenization)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minigpt_assets.data.documents import ShardWriter, document
from minigpt_assets.data.dedup import apply_removals, build_index
from minigpt_assets.data.engine import Engine, EngineConfig, close_engine, get_engine
from minigpt_assets.data.filters import filter_shards
from minigpt_assets.recipes import DedupRecipe
from minigpt_assets_tests.conftest import REPO, prose_doc
from minigpt_assets_tests.data.test_engine import PROFILE, _shards


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def two_nodes(tmp_path, monkeypatch):
    """`ray start --head` and `ray start --address` as two foreground processes (stopped by this fixture only, so
    other Ray instances on the machine are left alone)."""
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # a loopback test cluster: no token to share
    env = dict(os.environ)
    exe = Path(sys.executable).with_name("ray")
    port = _free_port()
    common = ["--block", "--num-cpus=1", "--include-dashboard=false", "--disable-usage-stats"]
    head = subprocess.Popen([str(exe), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
                             f"--ray-client-server-port={_free_port()}", *common],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    procs = [head]
    try:
        address = f"127.0.0.1:{port}"
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.5)
        procs.append(subprocess.Popen([str(exe), "start", f"--address={address}", "--node-ip-address=127.0.0.1",
                                       *[c for c in common if "dashboard" not in c]],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                                      start_new_session=True))
        yield ray, address
    finally:
        close_engine()
        for p in reversed(procs):  # each node's whole process group: raylet, GCS, workers
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        time.sleep(1)
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)  # stragglers of the group
            except ProcessLookupError:
                pass


def test_a_head_and_a_worker_node_give_the_process_pools_bytes(two_nodes, tmp_path):
    """The driver is a fresh process, as `minigpt materialize` on a cluster would be (a process that ran a local
    Ray instance before keeps state that a second ray.init cannot shed)."""
    _, address = two_nodes
    p = subprocess.run([sys.executable, "-c", "import sys; from minigpt_assets_tests.data.test_engine_cluster "
                        "import drive; drive(sys.argv[1], sys.argv[2])", address, str(tmp_path)],
                       cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip().splitlines()[-1] == "identical: 2 nodes"


def drive(address: str, tmp: str) -> None:
    import ray

    tmp_path = Path(tmp)
    eng = get_engine(EngineConfig(engine="ray", address=address, profile="test"))
    deadline = time.time() + 90
    while len([n for n in ray.nodes() if n["Alive"]]) < 2 and time.time() < deadline:
        time.sleep(0.5)
    nodes = len([n for n in ray.nodes() if n["Alive"]])
    assert nodes == 2 and eng.parallelism == 2, (nodes, eng.parallelism)
    shards = _shards(tmp_path, n=6)
    w = ShardWriter(tmp_path / "copies", prefix="shard")  # exact and near copies of earlier documents
    for i in (1, 2, 3, 8):
        text = prose_doc(i, words=60)
        w.write(document(f"s/copy{i}", text if i < 3 else text.replace(" ", "  ", 1) + " x", "s", "web", "test"))
    shards += [s.path for s in w.close()]
    local = Engine(EngineConfig(workers=2))
    out = {}
    for name, e in (("local", local), ("ray", eng)):
        fr = filter_shards(shards, tmp_path / name / "filtered", PROFILE, None, engine=e)
        files = [s.path for s in fr.shards]
        idx = build_index({"s": (0, files)}, DedupRecipe(), tmp_path / name / "index", engine=e, buckets=3)
        kept = apply_removals(files, idx.removed_path, "s", tmp_path / name / "dedup", shard_documents=4,
                              engine=e)[0]
        out[name] = [p.read_bytes() for p in files] + [s.path.read_bytes() for s in kept] + [
            (tmp_path / name / "index" / f).read_bytes() for f in ("removed.parquet", "clusters.parquet")]
    assert out["local"] == out["ray"] and len(out["ray"]) > 8
    assert idx.stats["s"]["exact_removed"] + idx.stats["s"]["near_removed"] >= 3, idx.stats
    close_engine()
    print(f"identical: {nodes} nodes")
