"""The one Dagster resource: where recipes and artifacts live, and handles to the artifact store and stats db."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import PrivateAttr

from minigpt_assets.defs.partitions import Partitions
from minigpt_assets.defs.recipe_versions import report_versions
from minigpt_assets.recipes import Catalog
from minigpt_assets.settings import Settings
from minigpt_assets.store import ArtifactStore, StatsDB


class ProjectResource(dg.ConfigurableResource):
    """Artifact root (`MINIGPT_HOME`), recipes dir (`MINIGPT_RECIPES`) and worker processes per stage."""

    home: str
    recipes: str
    workers: int = 2
    _instance: dg.DagsterInstance | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._instance = context.instance

    @classmethod
    def from_settings(cls, s: Settings) -> "ProjectResource":
        return cls(home=str(s.home), recipes=str(s.recipes), workers=s.workers)

    def store(self) -> ArtifactStore:
        return ArtifactStore(self.home)

    def stats(self) -> StatsDB:
        return StatsDB(self.home)

    def catalog(self, record: bool = True) -> Catalog:
        """Re-read the recipes at run time: the run uses the bytes on disk now, and records their hash. In a run,
        a recipe whose hash the instance has not seen yet is recorded as an observation first, so the
        materialization that follows lists the version it read (not an older one the daemon would re-run for)."""
        cat = Catalog.load_or_raise(Path(self.recipes))
        if record and self._instance is not None:
            report_versions(self._instance, cat, Partitions.from_catalog(cat))
        return cat

    def engine(self):
        """The data engine for per-shard tasks (profile `data:`, `--engine`), made once per process."""
        from minigpt_assets.data.engine import get_engine
        from minigpt_assets.settings import data_engine_config

        return get_engine(data_engine_config(self.workers))

    def scratch(self, name: str) -> Path:
        p = Path(self.home) / "cache" / name
        p.mkdir(parents=True, exist_ok=True)
        return p
