"""Where things live: the recipes dir and the artifact root, from flags, then environment, then defaults."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


def quiet_openmp() -> dict[str, str]:
    """OpenMP threads that sleep when idle (`OMP_WAIT_POLICY=PASSIVE`, unless already set), put into this process's
    environment and returned for a child's. Two CPU trainings side by side (the local profile runs two steps at
    once, the tests two workers) then share the cores instead of spinning against each other: measured on 2 cores,
    1,790 instead of 1,150 tokens/s each, and no change for one run alone. It must run before torch loads."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return {"OMP_WAIT_POLICY": os.environ["OMP_WAIT_POLICY"]}


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """These environment variables set for the duration, then restored (unset again where they were unset)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def shared_cores(parallel: int) -> dict[str, str]:
    """Thread counts for one of `parallel` processes sharing this machine's cores (OpenMP, MKL, torch's intra-op
    pool): cores // parallel each, unless the user set OMP_NUM_THREADS. Without it every process of a
    `minigpt sweep --parallel 8` starts one thread per core, 8x the cores in all."""
    if os.environ.get("OMP_NUM_THREADS"):
        return {}
    n = str(max(1, (os.cpu_count() or 1) // max(1, parallel)))
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}

DEFAULT_HOME = "./.minigpt"
DEFAULT_RECIPES = "./recipes"


class WandbSettings(BaseModel):
    """Weights & Biases logging of every training stage: `offline` (the default) writes runs under the run folder
    for `wandb sync`; `online` streams them (with WANDB_API_KEY set); `disabled` turns it off. WANDB_MODE in
    the environment overrides `mode`."""

    model_config = ConfigDict(extra="forbid")
    mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "minigpt-assets"
    entity: str | None = None


class TrainingProfile(BaseModel):
    """How a training stage is launched on this kind of machine (an experiment's `compute:` names the profile).

    `process`: one Python process. `torchrun`: `torchrun --nproc-per-node N` on this node, or with `nnodes` > 1
    one torchrun per node meeting at `rdzv_endpoint` (c10d rendezvous), each started by `command_prefix`
    (e.g. `[srun, --ntasks-per-node=1]` under Slurm)."""

    model_config = ConfigDict(extra="forbid")
    launcher: Literal["process", "torchrun"] = "process"
    nproc_per_node: int = Field(1, gt=0)
    nnodes: int = Field(1, gt=0)
    strategy: Literal["none", "ddp", "fsdp", "hsdp", "zero2", "zero3"] = "none"  # hsdp: replicate across nodes, shard
    # within one (FSDP2 on a 2-D mesh); zero*: DeepSpeed ZeRO (pip extra)
    rdzv_endpoint: str | None = None
    rdzv_id: str = "minigpt"
    device: str | None = None
    command_prefix: list[str] = Field(default_factory=list)
    wandb: WandbSettings = WandbSettings()


class DataProfile(BaseModel):
    """Where the data half's per-shard tasks run (`minigpt materialize/demo --engine` overrides `engine`).

    `local`: `workers` processes on this machine. `ray`: one Ray task per shard on the cluster at `address`
    (host:port of `ray start --head`; none: a local Ray instance is started), `cpus_per_task` CPUs each, a task
    whose worker dies retried `max_retries` times. On a cluster MINIGPT_HOME must be a shared filesystem."""

    model_config = ConfigDict(extra="forbid")
    engine: Literal["local", "ray"] = "local"
    address: str | None = None
    cpus_per_task: float = Field(1.0, gt=0)
    max_retries: int = Field(3, ge=0)


class Profile(BaseModel):
    """A deployment profile from resources/<name>.yaml: how runs execute on this kind of machine."""

    model_config = ConfigDict(extra="forbid")
    executor: Literal["multiprocess", "in_process"] = "in_process"
    max_concurrent: int = Field(2, gt=0)
    max_concurrent_runs: int = Field(2, gt=0)
    pools: dict[str, int] = Field(default_factory=dict)
    # a sweep's runs trained at once on one device (proxies, transfer runs): tiny models leave a GPU mostly idle;
    # also the `proxy` pool's limit under `minigpt ui` unless `pools` sets it
    sweep_parallel: int = Field(1, gt=0)
    workers: int | None = Field(None, gt=0)
    # memory budget of one bucket of the dedup join (the LSH band rows are split by hash range into as many
    # buckets as keep each under it; each bucket is joined on its own)
    dedup_bucket_mb: int = Field(1024, gt=0)
    data: DataProfile = DataProfile()
    training: TrainingProfile = TrainingProfile()


def load_profile(name: str | None = None) -> Profile:
    """Read the profile named by MINIGPT_PROFILE (default `local`); a missing file means defaults."""
    from minigpt_assets.recipes import RecipeError, RecipeProblem, _format_validation

    name = name or os.environ.get("MINIGPT_PROFILE") or "local"
    path = Path(os.environ.get("MINIGPT_RESOURCES") or "./resources") / f"{name}.yaml"
    if not path.exists():
        if name != "local":
            raise RecipeError([RecipeProblem(file=str(path), field="", message="deployment profile not found")])
        return Profile()
    try:
        return Profile.model_validate(yaml.safe_load(path.read_text()) or {})
    except ValidationError as e:
        raise RecipeError(_format_validation(str(path), e)) from None
    except yaml.YAMLError as e:
        raise RecipeError([RecipeProblem(file=str(path), field="", message=f"invalid YAML: {e}")]) from None


def data_engine_config(workers: int):
    """The data engine's settings: the profile's `data:` block, MINIGPT_DATA_ENGINE (`--engine`) over its
    engine, `workers` local processes."""
    from minigpt_assets.data.engine import EngineConfig

    name = os.environ.get("MINIGPT_PROFILE") or "local"
    d = load_profile().data
    env = {k: os.environ[k] for k in ("MINIGPT_HOME", "MINIGPT_RECIPES", "MINIGPT_PROFILE") if k in os.environ}
    address = os.path.expandvars(d.address) if d.address else None  # e.g. ${RAY_HEAD}:6379
    return EngineConfig(engine=os.environ.get("MINIGPT_DATA_ENGINE") or d.engine, address=address,
                        cpus_per_task=d.cpus_per_task, max_retries=d.max_retries, workers=workers, profile=name,
                        env=env)


def sweep_parallel() -> int:
    """Runs of a sweep trained at once: `minigpt sweep --parallel` (MINIGPT_SWEEP_PARALLEL), else the profile's."""
    return int(os.environ.get("MINIGPT_SWEEP_PARALLEL") or load_profile().sweep_parallel)


@dataclass(frozen=True)
class Settings:
    home: Path
    recipes: Path
    workers: int
    profile: Profile = field(default_factory=Profile)

    @classmethod
    def from_env(cls, home: str | None = None, recipes: str | None = None, workers: int | None = None) -> "Settings":
        home_p = Path(home or os.environ.get("MINIGPT_HOME") or DEFAULT_HOME).expanduser().resolve()
        rec_p = Path(recipes or os.environ.get("MINIGPT_RECIPES") or DEFAULT_RECIPES).expanduser().resolve()
        profile = load_profile()
        n = (workers or int(os.environ.get("MINIGPT_WORKERS", "0") or 0) or profile.workers
             or max(1, min(os.cpu_count() or 1, 8)))
        return cls(home=home_p, recipes=rec_p, workers=n, profile=profile)

    def export(self) -> None:
        """Make child processes (Dagster's run workers, subprocess launches) see the same locations."""
        os.environ["MINIGPT_HOME"] = str(self.home)
        os.environ["MINIGPT_RECIPES"] = str(self.recipes)
        os.environ["MINIGPT_WORKERS"] = str(self.workers)

    @property
    def dagster_home(self) -> Path:
        return Path(os.environ["DAGSTER_HOME"]) if os.environ.get("DAGSTER_HOME") else self.home / "dagster"
