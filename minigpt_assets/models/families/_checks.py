"""Checks shared by the family modules: one clear sentence per violated constraint."""

from __future__ import annotations

from minigpt_assets.models.config import ModelConfig


def require(cfg: ModelConfig, family: str, **expected) -> None:
    """Fail when a field differs from what the family's architecture fixes (e.g. qkv_bias=True for qwen2)."""
    for field, want in expected.items():
        got = getattr(cfg, field)
        if field == "moe":
            ok = (got is not None) == want
            if not ok:
                raise ValueError(f"family {family} {'needs' if want else 'has no'} `moe` block")
        elif got != want:
            raise ValueError(f"family {family} fixes {field}={want!r} (got {got!r})")
