"""The data engine: the process pool and Ray give byte-identical artifacts; failures are one line naming the shard
(or the address); a shard whose bytes differ from its manifest is never read; a killed Ray task is retried."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from minigpt_assets.data.documents import ShardWriter, document
from minigpt_assets.data.engine import Engine, EngineConfig, EngineError, Expected, make_engine
from minigpt_assets.data.filters import filter_shards
from minigpt_assets.recipes import FilterProfile
from minigpt_assets.store import sha256_file
from minigpt_assets_tests.conftest import REPO, prose_doc, write

PROFILE = FilterProfile.model_validate({"length": {"min_chars": 200}})


def _shards(tmp_path: Path, n: int = 4, per: int = 6) -> list[Path]:
    w = ShardWriter(tmp_path / "in", prefix="shard", max_documents=per)
    for i in range(n * per):
        w.write(document(f"s/{i}", prose_doc(i, words=10 if i % 5 == 0 else 60), "s", "web", "test"))
    return [s.path for s in w.close()]


def _double(x: int) -> int:
    return 2 * x


def _fails_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("bad record at line 7")
    return x


def test_local_engine_keeps_order_and_names_the_failing_shard():
    eng = Engine(EngineConfig(workers=2))
    assert eng.map(_double, [(i,) for i in range(7)], [f"s{i}" for i in range(7)], "doubling") == \
        [2 * i for i in range(7)]
    with pytest.raises(EngineError) as e:
        eng.map(_fails_on_three, [(i,) for i in range(5)], [f"shard-{i}" for i in range(5)], "filtering")
    assert str(e.value) == "filtering failed on shard shard-3: ValueError: bad record at line 7"


def test_a_shard_that_differs_from_its_manifest_is_named_not_read(tmp_path):
    shards = _shards(tmp_path)
    good = {str(p): Expected(p.stat().st_size, sha256_file(p)) for p in shards}
    ok = filter_shards(shards, tmp_path / "ok", PROFILE, None, expected=good)
    assert ok.input_documents == 24
    data = bytearray(shards[1].read_bytes())
    data[100] ^= 0xFF  # same size, one byte flipped on the "shared filesystem"
    shards[1].write_bytes(bytes(data))
    with pytest.raises(EngineError, match=rf"filtering: shard {shards[1]} is corrupt: its sha256 differs"):
        filter_shards(shards, tmp_path / "bad", PROFILE, None, expected=good)
    shards[2].unlink()
    with pytest.raises(EngineError, match=rf"shard {shards[2]} is missing"):
        filter_shards(shards[2:], tmp_path / "gone", PROFILE, None, expected=good)


def test_an_address_that_does_not_answer_is_one_line(tmp_path):
    pytest.importorskip("ray")
    with pytest.raises(EngineError) as e:
        make_engine(EngineConfig(engine="ray", address="127.0.0.1:9", profile="cluster"))
    assert str(e.value) == "data engine ray: address 127.0.0.1:9 (profile cluster) does not answer"
    # the same from the command line, before any work
    write(tmp_path / "resources/far.yaml", "data: {engine: ray, address: '127.0.0.1:9'}\n")
    env = dict(os.environ, MINIGPT_PROFILE="far", MINIGPT_RESOURCES=str(tmp_path / "resources"),
               MINIGPT_HOME=str(tmp_path / "home"))
    p = subprocess.run([sys.executable, "-m", "minigpt_assets.cli", "materialize", "--select", "source_documents"],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert p.returncode == 1
    assert "address 127.0.0.1:9 (profile far) does not answer" in p.stderr
    assert not (tmp_path / "home" / "artifacts").exists()


def test_arrow_batches_cut_shards_where_rows_do(tmp_path):
    import pyarrow as pa

    docs = [document(f"s/{i}", prose_doc(i, words=10 + 7 * (i % 9)), "s", "web", "t") for i in range(57)]
    by_row = ShardWriter(tmp_path / "rows", max_documents=10, max_bytes=1500)
    by_row.write_many(docs)
    by_batch = ShardWriter(tmp_path / "batches", max_documents=10, max_bytes=1500)
    for lo in (0, 3, 25, 26, 57):  # uneven batches, one empty
        hi = {0: 3, 3: 25, 25: 26, 26: 57, 57: 57}[lo]
        by_batch.write_batch(pa.RecordBatch.from_pylist(docs[lo:hi], schema=by_batch.schema))
    a, b = by_row.close(), by_batch.close()
    assert len(a) > 6 and [(s.documents, s.bytes) for s in a] == [(s.documents, s.bytes) for s in b]
    assert [s.path.read_bytes() for s in a] == [s.path.read_bytes() for s in b]


def _ray_checks(marker: str) -> None:
    """Run ray_checks.py in a fresh process. A local Ray instance started beside a loaded 2-core test run has
    failed there once in three full runs while passing alone: the first failure's output is printed (pytest shows
    it with the test) and the checks run once more; they must pass then."""
    pytest.importorskip("ray")
    for attempt in (1, 2):
        p = subprocess.run([sys.executable, "-X", "faulthandler", "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            "-o", "addopts=", "-m", marker, str(Path(__file__).with_name("ray_checks.py"))],
                           cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
                           timeout=1500)
        if p.returncode == 0:
            break
        print(f"ray_checks.py attempt {attempt} failed:\n{(p.stdout + p.stderr)[-6000:]}")
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    assert " passed" in p.stdout.splitlines()[-1], p.stdout[-2000:]


def test_ray_engine_checks_pass_in_a_fresh_process():
    """ray_checks.py: Ray gives the pool's artifacts on the tiny recipes; a killed task is retried with an identical
    result and a task that keeps dying is one line; a task error is not retried and names its shard."""
    _ray_checks("not slow")


@pytest.mark.slow
def test_ray_engine_gives_the_pools_artifacts_on_the_demo_data():
    _ray_checks("slow")
