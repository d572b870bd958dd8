"""`minigpt bench data --json` measures per-core rates; `minigpt plan data` turns them into a plan whose arithmetic
is checked here by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from minigpt_assets.data.plan import RATES_FILE, Assumptions, load_rates, plan
from minigpt_assets_tests.conftest import REPO

RATES = {"mb_per_s_per_core": {"ingest": 50.0, "filter": 2.0, "sign": 20.0, "join": 10.0, "removal": 40.0,
                               "tokenize": 5.0}, "parquet_bytes_per_text_byte": 0.4}


def test_the_plan_follows_the_yields_back_to_the_raw_text():
    a = Assumptions(bytes_per_token=4.0, keep_filter=0.5, keep_dedup=0.8, doc_bytes=4000, bands=14, bucket_mb=1024)
    p = plan(1e12, nodes=10, cores=50, rates=RATES, a=a)
    st = {s["stage"]: s for s in p["stages"]}
    # 1e12 tokens x 4 B = 4 TB kept by dedup <- 5 TB filtered <- 10 TB raw
    assert st["tokenize"]["reads_TB"] == pytest.approx(4.0) and st["removal"]["reads_TB"] == pytest.approx(5.0)
    assert st["filter"]["reads_TB"] == pytest.approx(10.0) and p["raw_TB"] == pytest.approx(10.0)
    # 10 TB / 2 MB/s per core = 5e6 core-seconds; on 500 cores: 1e4 s
    assert st["filter"]["core_hours"] == pytest.approx(5e6 / 3600)
    assert st["filter"]["wall_hours"] == pytest.approx(1e4 / 3600)
    assert st["tokenize"]["writes_TB"] == pytest.approx(4.0)  # 1e12 tokens x 4 bytes
    docs = 5e12 / 4000
    assert p["documents"] == pytest.approx(docs)
    assert p["buckets"] == -(-int(docs * 14 * 64) // 2**30)
    assert p["wall_hours"] == pytest.approx(sum(s["wall_hours"] for s in p["stages"]))


@pytest.mark.filterwarnings("ignore")
def test_bench_data_writes_rates_that_plan_data_reads(tmp_path):
    env = dict(os.environ, MINIGPT_HOME=str(tmp_path / "home"))
    rates = tmp_path / "rates.json"
    p = subprocess.run([sys.executable, "-m", "minigpt_assets.cli", "bench", "data", "--docs", "400", "--workers",
                        "2", "--json", str(rates)], capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "Gopher+C4+langid+quality, local, 2 process(es)" in p.stdout
    got = json.loads(rates.read_text())
    assert set(got["mb_per_s_per_core"]) == {"ingest", "filter", "sign", "join", "removal", "tokenize"}
    assert all(v > 0 for v in got["mb_per_s_per_core"].values()) and 0 < got["parquet_bytes_per_text_byte"] < 2
    p = subprocess.run([sys.executable, "-m", "minigpt_assets.cli", "plan", "data", "--tokens", "2e12", "--nodes",
                        "8", "--cores", "96", "--rates", str(rates)], capture_output=True, text=True, env=env,
                       cwd=REPO, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "2e+12 tokens on 8 node(s) x 96 core(s)" in p.stdout and "buckets of at most 1024 MB" in p.stdout
    assert load_rates(RATES_FILE)["mb_per_s_per_core"]  # the shipped rates parse too
