"""Sharded training on CPU: 2 processes with gloo under torchrun (DDP and FSDP2) match one process, and
checkpoints move between strategies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minigpt_assets_tests.training.test_trainer import EOS, MODEL, counting_corpus, stage


def _spec(tmp_path: Path, name: str, strategy: str = "none", max_steps: int | None = None) -> Path:
    tokens = tmp_path / "tokens.npy"
    if not tokens.exists():
        np.save(tokens, counting_corpus())
    moe = {**MODEL, "family": "moe", "moe": {"n_routed": 4, "top_k": 2, "n_shared": 1, "first_dense_layers": 1}}
    spec = {"model": moe, "stage": stage(max_steps=8, checkpoint_every=4).model_dump(mode="json"),
            "run_dir": str(tmp_path / name), "device": "cpu", "strategy": strategy, "max_steps": max_steps,
            "data": {"kind": "array", "path": str(tokens), "seq_len": 32, "eos": EOS}}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(spec))
    return path


def _run(spec: Path, nproc: int = 1) -> dict:
    cmd = [sys.executable, "-m", "minigpt_assets.training.run", str(spec)]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "minigpt_assets.training.run", str(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("single")
    return _run(_spec(tmp, "single"))


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_match_one_process(tmp_path, single, strategy):
    res = _run(_spec(tmp_path, strategy, strategy), nproc=2)
    assert len(res["losses"]) == len(single["losses"]) == 8
    np.testing.assert_allclose(res["losses"], single["losses"], rtol=2e-4)


def test_fsdp_checkpoint_resumes_on_one_process(tmp_path, single):
    spec = _spec(tmp_path, "mixed", "fsdp", max_steps=4)
    first = _run(spec, nproc=2)
    assert len(first["losses"]) == 4
    data = json.loads(spec.read_text())
    data.update(strategy="none", max_steps=None)
    spec.write_text(json.dumps(data))
    rest = _run(spec)
    assert rest["resumed_from"] == 4
    np.testing.assert_allclose(first["losses"] + rest["losses"], single["losses"], rtol=2e-4)
