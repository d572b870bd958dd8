"""Training checkpoints: everything needed to continue bit-for-bit, written atomically, the last K kept.

A checkpoint is a folder `step-00000100/` holding
  model_config.json, model.safetensors   the weights (loadable by `models.from_pretrained`, `minigpt export-hf`)
  optimizer.pt                           optimizer and LR-scheduler state (`torch.load(weights_only=True)`)
  trainer.json                           step, loader state, counters
  rng.pt                                 torch / CUDA / numpy / python RNG states
It is written into `step-00000100.partial/` and renamed into place, so a process killed at any moment leaves
either a complete checkpoint or a `.partial` folder that the next start removes.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from minigpt_assets.models.interop import write_model_files

_NAME = re.compile(r"^step-(\d{8})$")


def checkpoint_dirs(root: Path) -> list[Path]:
    """Complete checkpoints under root, oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: Path) -> Path | None:
    dirs = checkpoint_dirs(root)
    return dirs[-1] if dirs else None


def clean_partial(root: Path) -> list[Path]:
    """Remove the leftovers of a write that was killed; returns what was removed."""
    removed = []
    if root.is_dir():
        for p in root.glob("*.partial"):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def rng_state() -> dict[str, Any]:
    """All RNG states as tensors and plain values, so `torch.load(weights_only=True)` reads them back."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"name": name, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "python": list(random.getstate()[1]), "python_version": random.getstate()[0]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate((state["python_version"], tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(root: Path, step: int, model, model_state: dict[str, torch.Tensor], optim_state: dict,
                    trainer_state: dict, keep_last: int, hook: Callable[[str], None] | None = None,
                    extra: Callable[[Path], None] | None = None) -> Path:
    """Write checkpoint `step` under root (staged, renamed), then drop all but the newest `keep_last`.

    `extra(folder)` writes more files (a LoRA adapter); `hook(point)` is called between the files (tests kill
    the process there)."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f"step-{step:08d}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write_model_files(model, tmp, metadata={"step": step}, state_dict=model_state)
    if extra:
        extra(tmp)
    if hook:
        hook("weights")
    torch.save(optim_state, tmp / "optimizer.pt")
    torch.save(rng_state(), tmp / "rng.pt")
    (tmp / "trainer.json").write_text(json.dumps({**trainer_state, "step": step}, indent=2) + "\n")
    if hook:
        hook("before_rename")
    for f in tmp.rglob("*"):  # durable before it becomes visible
        if not f.is_file():
            continue
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    for old in checkpoint_dirs(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict, dict, dict]:
    """(model state, optimizer+scheduler state, trainer state, rng state) of a checkpoint folder."""
    from safetensors.torch import load_file

    model_state = load_file(str(path / "model.safetensors"))
    optim_state = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    rng = torch.load(path / "rng.pt", map_location="cpu", weights_only=True)
    trainer = json.loads((path / "trainer.json").read_text())
    return model_state, optim_state, trainer, rng
