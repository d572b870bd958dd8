"""Where things live: the recipes dir and the artifact root, from flags, then environment, then defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOME = "./.minigpt"
DEFAULT_RECIPES = "./recipes"


@dataclass(frozen=True)
class Settings:
    home: Path
    recipes: Path
    workers: int

    @classmethod
    def from_env(cls, home: str | None = None, recipes: str | None = None, workers: int | None = None) -> "Settings":
        home_p = Path(home or os.environ.get("MINIGPT_HOME") or DEFAULT_HOME).expanduser().resolve()
        rec_p = Path(recipes or os.environ.get("MINIGPT_RECIPES") or DEFAULT_RECIPES).expanduser().resolve()
        n = workers or int(os.environ.get("MINIGPT_WORKERS", "0") or 0) or max(1, min(os.cpu_count() or 1, 8))
        return cls(home=home_p, recipes=rec_p, workers=n)

    def export(self) -> None:
        """Make child processes (Dagster's run workers, subprocess launches) see the same locations."""
        os.environ["MINIGPT_HOME"] = str(self.home)
        os.environ["MINIGPT_RECIPES"] = str(self.recipes)
        os.environ["MINIGPT_WORKERS"] = str(self.workers)

    @property
    def dagster_home(self) -> Path:
        return Path(os.environ["DAGSTER_HOME"]) if os.environ.get("DAGSTER_HOME") else self.home / "dagster"
