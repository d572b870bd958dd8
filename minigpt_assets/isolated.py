"""Benchmarks that run each variant in a fresh Python process, so its peak memory, its compile caches and its
CUDA context are its own. A worker prints one `RESULT {json}` line; a variant that fails is a row with an
`error`, not a crash of the benchmark."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Callable


def spawn(module: str, job: dict, ident: dict, timeout: float | None = None, nproc: int = 1,
          torchrun: bool = False) -> dict:
    """Run `python -m module JOB_JSON` (with `nproc` > 1 or `torchrun`: `nproc` ranks under torchrun on this
    machine, rank 0 reporting) and return its result (or `ident` with the error). On `timeout` the whole process
    group goes."""
    launch = [sys.executable]
    if nproc > 1 or torchrun:
        launch += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    proc = subprocess.Popen([*launch, "-m", module, json.dumps(job)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {**ident, "error": f"timed out after {timeout:.0f} s"}
    for line in out.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {**ident, "error": f"worker exited {proc.returncode}: {_last_words(err or out)}"}


def _last_words(text: str) -> str:
    """The last line that says something (torchrun ends its failure report with a row of '=')."""
    lines = [x.strip() for x in text.splitlines() if x.strip().strip("=-*")]
    return lines[-1] if lines else "no output"


def worker(run: Callable[[dict], dict], argv: list[str], ident: Callable[[dict], dict]) -> int:
    """The worker side: run one job, print its result line (on an error, `ident(job)` and the error). Under
    torchrun rank 0 prints its result, and a rank that fails prints its error and exits 1, so torchrun stops
    the others instead of leaving them waiting in a collective."""
    job = json.loads(argv[0])
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    try:
        result = run(job)
    except Exception as e:  # noqa: BLE001 - a failed variant is a row in the table
        print("RESULT " + json.dumps({**ident(job), "error": f"{type(e).__name__}: {e}"}), flush=True)
        return 1 if distributed else 0
    if os.environ.get("RANK", "0") == "0":
        print("RESULT " + json.dumps(result), flush=True)
    return 0
