"""The one Dagster resource: where recipes and artifacts live, and handles to the artifact store and stats db."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from minigpt_assets.recipes import Catalog
from minigpt_assets.settings import Settings
from minigpt_assets.store import ArtifactStore, StatsDB


class ProjectResource(dg.ConfigurableResource):
    """Artifact root (`MINIGPT_HOME`), recipes dir (`MINIGPT_RECIPES`) and worker processes per stage."""

    home: str
    recipes: str
    workers: int = 2

    @classmethod
    def from_settings(cls, s: Settings) -> "ProjectResource":
        return cls(home=str(s.home), recipes=str(s.recipes), workers=s.workers)

    def store(self) -> ArtifactStore:
        return ArtifactStore(self.home)

    def stats(self) -> StatsDB:
        return StatsDB(self.home)

    def catalog(self) -> Catalog:
        """Re-read the recipes at run time: the run uses the bytes on disk now, and records their hash."""
        return Catalog.load_or_raise(Path(self.recipes))

    def scratch(self, name: str) -> Path:
        p = Path(self.home) / "cache" / name
        p.mkdir(parents=True, exist_ok=True)
        return p
