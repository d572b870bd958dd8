"""Benchmarks that run each variant in a fresh Python process, so its peak memory, its compile caches and its
CUDA context are its own. A worker prints one `RESULT {json}` line; a variant that fails is a row with an
`error`, not a crash of the benchmark."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Callable


def spawn(module: str, job: dict, ident: dict, timeout: float | None = None, nproc: int = 1) -> dict:
    """Run `python -m module JOB_JSON` (with `nproc` > 1: `nproc` ranks under torchrun on this machine, rank 0
    reporting) and return its result (or `ident` with the error)."""
    launch = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                  f"--nproc-per-node={nproc}"]
    try:
        proc = subprocess.run([*launch, "-m", module, json.dumps(job)], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**ident, "error": f"timed out after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return {**ident, "error": f"worker exited {proc.returncode}: {tail[0]}"}


def worker(run: Callable[[dict], dict], argv: list[str], ident: Callable[[dict], dict]) -> int:
    """The worker side: run one job, print its result line (on an error, `ident(job)` and the error). Under
    torchrun only rank 0 prints."""
    import os

    job = json.loads(argv[0])
    try:
        line = "RESULT " + json.dumps(run(job))
    except Exception as e:  # noqa: BLE001 - a failed variant is a row in the table
        line = "RESULT " + json.dumps({**ident(job), "error": f"{type(e).__name__}: {e}"})
    if os.environ.get("RANK", "0") == "0":
        print(line, flush=True)
    return 0
