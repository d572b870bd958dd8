"""`python -m minigpt_assets.training.run SPEC.json`: one training stage in this process (or under torchrun).

SPEC is JSON: {"model": {model recipe fields}, "stage": {stage fields}, "run_dir": "...",
"data": {"kind": "mixture", "path": MIXTURE_ARTIFACT} | {"kind": "array", "path": "x.npy", "seq_len": N, "eos": E},
"max_steps": optional int, "device": optional str, "init_weights": optional checkpoint folder}.
The last line printed is `RESULT {json}`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from minigpt_assets.data.loader import ArrayTokens, open_mixture
from minigpt_assets.models.registry import make_config
from minigpt_assets.training.config import StageConfig
from minigpt_assets.training.trainer import Trainer, TrainingError, kill_hook_from_env


def open_data(spec: dict):
    """(train, validation) windows for a data spec."""
    if spec["kind"] == "mixture":
        folder = Path(spec["path"])
        val = open_mixture(folder, "validation") if (folder / "plan_validation.parquet").is_file() else None
        return open_mixture(folder, "train"), val
    if spec["kind"] == "array":
        tokens = np.load(spec["path"], mmap_mode="r")
        n_val = int(spec.get("validation_tokens", 0))
        train = ArrayTokens(tokens[n_val:], spec["seq_len"], spec["eos"])
        val = ArrayTokens(tokens[:n_val], spec["seq_len"], spec["eos"]) if n_val else None
        return train, val
    raise ValueError(f"unknown data kind {spec['kind']!r}")


def run(spec: dict) -> dict:
    train, val = open_data(spec["data"])
    trainer = Trainer(make_config(spec["model"]), StageConfig.model_validate(spec["stage"]), train,
                      Path(spec["run_dir"]), val=val, device=spec.get("device"),
                      init_weights=Path(spec["init_weights"]) if spec.get("init_weights") else None,
                      hook=kill_hook_from_env())
    res = trainer.fit(max_steps=spec.get("max_steps"), resume=spec.get("resume", True))
    return {"steps": res.steps, "final_loss": res.final_loss, "val_loss": res.val_loss, "bad_steps": res.bad_steps,
            "checkpoint": str(res.checkpoint) if res.checkpoint else None, "resumed_from": res.resumed_from,
            "losses": [r["loss"] for r in res.metrics]}


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    try:
        result = run(spec)
    except TrainingError as e:
        print(f"training: {e}", file=sys.stderr)
        return 1
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
