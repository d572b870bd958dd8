"""Where the data half's per-shard tasks run: this machine's processes (`local`) or a Ray cluster (`ray`).

Every per-shard stage (filtering and quality scoring, MinHash signing, dedup removal, tokenization) hands its
tasks to `Engine.map(fn, tasks)`: `fn` is a module-level function, each task a tuple of its arguments and a label
(the shard it reads, for messages). Results come back in task order, so outputs do not depend on scheduling.

- `local`: a process pool (forkserver, safe next to the DuckDB/Arrow/Dagster threads of the parent) of
  `workers` processes; one task or one worker runs in this process.
- `ray`: one Ray task per shard, `cpus_per_task` CPUs each. A task whose worker dies is retried by Ray
  (`max_retries`); an exception raised by the task itself is not retried (bad data fails the same way twice).
  With no address a local Ray instance is started; an address that does not answer stops before any work.

Tasks write their outputs under a temporary name and rename them (`ShardWriter`), so a retried or duplicated
task never leaves a partial or double shard. A task that reads an artifact's shard first checks its size and
sha256 against the manifest (`expected`), so a shard missing or corrupt on a shared filesystem is named, never
read as empty.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENGINES = ("local", "ray")


class EngineError(Exception):
    """A data task or the engine failed; the message is one line naming the stage and shard (or the address)."""


@dataclass(frozen=True)
class EngineConfig:
    """The `data:` block of a compute profile, with the process count of the local engine."""

    engine: str = "local"
    address: str | None = None  # ray: host:port of the cluster's head (ray start --head); None: a local instance
    cpus_per_task: float = 1.0
    max_retries: int = 3  # ray: retries of a task whose worker died
    workers: int = 1  # local: processes
    profile: str = "local"  # the profile it came from, for messages
    env: dict[str, str] = field(default_factory=dict)  # variables the remote workers need (ray runtime_env)


@dataclass(frozen=True)
class Expected:
    """A shard's size and sha256 from its artifact's manifest."""

    bytes: int
    sha256: str


def check_shard(path: str | Path, expected: Expected | None) -> None:
    """Raise EngineError unless the file exists with the manifest's size and sha256."""
    if expected is None:
        return
    from minigpt_assets.store import sha256_file

    p = Path(path)
    if not p.exists():
        raise EngineError(f"shard {p} is missing (its artifact's manifest lists it)")
    size = p.stat().st_size
    if size != expected.bytes:
        raise EngineError(f"shard {p} is corrupt: {size} bytes, the manifest says {expected.bytes}")
    if sha256_file(p) != expected.sha256:
        raise EngineError(f"shard {p} is corrupt: its sha256 differs from the manifest")


def _call(fn: Callable, args: tuple, checks: tuple[tuple[str, Expected | None], ...]) -> Any:
    for path, exp in checks:
        check_shard(path, exp)
    return fn(*args)


class Engine:
    """Runs `fn(*args)` for every task and returns the results in task order."""

    name = "local"

    def __init__(self, config: EngineConfig):
        self.config = config

    @property
    def parallelism(self) -> int:
        return max(1, self.config.workers)

    def map(self, fn: Callable, tasks: Sequence[tuple], labels: Sequence[str], stage: str,
            reads: Sequence[Sequence[tuple[str, Expected | None]]] | None = None) -> list:
        """`reads[i]`: the (path, expected) input shards task i checks before it runs."""
        checks = [tuple(r) for r in reads] if reads is not None else [()] * len(tasks)
        return self._map(fn, list(tasks), list(labels), stage, checks)

    def _map(self, fn, tasks, labels, stage, checks) -> list:
        workers = min(self.parallelism, len(tasks))
        if workers <= 1:
            out = []
            for args, label, chk in zip(tasks, labels, checks):
                out.append(_named(stage, label, lambda: _call(fn, args, chk)))
            return out
        # this process works too, from the end of the list, taking every task no worker has started: it works
        # while the pool starts, so small jobs never wait for processes
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([fn.__module__])
        out: list = [None] * len(tasks)
        with ProcessPoolExecutor(max_workers=workers - 1, mp_context=ctx) as pool:
            futures = [pool.submit(_call, fn, args, chk) for args, chk in zip(tasks, checks)]
            mine = set()
            for i in reversed(range(len(tasks))):
                if not futures[i].cancel():  # a worker has it, and every task before it
                    break
                mine.add(i)
                out[i] = _named(stage, labels[i], lambda i=i: _call(fn, tasks[i], checks[i]))
            for i, fut in enumerate(futures):
                if i not in mine:
                    out[i] = _named(stage, labels[i], fut.result)
        return out

    def close(self) -> None:
        pass


def _task_error(stage: str, label: str, e: BaseException) -> EngineError:
    """A task's failure as one line naming the stage and the shard (a check's own message is kept)."""
    if isinstance(e, EngineError):
        return EngineError(f"{stage}: {e}")
    msg = str(e).strip().splitlines()
    return EngineError(f"{stage} failed on shard {label}: {type(e).__name__}: {msg[-1] if msg else ''}")


def _named(stage: str, label: str, get: Callable[[], Any]) -> Any:
    """`get()`, with any failure turned into `_task_error`."""
    try:
        return get()
    except EngineError as e:
        raise _task_error(stage, label, e) from None
    except Exception as e:  # noqa: BLE001 - a task's own error, passed on with the shard it came from
        raise _task_error(stage, label, e) from e


class RayEngine(Engine):
    name = "ray"

    def __init__(self, config: EngineConfig):
        super().__init__(config)
        import ray

        self.ray = ray
        if not ray.is_initialized():
            if config.address and config.address != "auto":
                _answers(config.address, config.profile)
            env = {"env_vars": dict(config.env)} if config.env else None
            try:
                # no address: a new local instance ("local"), never a `ray start` cluster found on the machine
                ray.init(address=config.address or os.environ.get("RAY_ADDRESS") or "local",
                         include_dashboard=False, log_to_driver=False,
                         runtime_env=env, configure_logging=False)
            except Exception as e:  # noqa: BLE001 - any failure to join is one line
                where = config.address or "a local instance"
                raise EngineError(f"data engine ray: cannot join {where} (profile {config.profile}): "
                                  f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None
            self._started = not config.address and not os.environ.get("RAY_ADDRESS")
            if self._started:  # child processes (a run's step workers) join this instance, not a new one
                os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
        else:
            self._started = False

    @property
    def parallelism(self) -> int:
        cpus = self.ray.cluster_resources().get("CPU", 1)
        return max(1, int(cpus // max(self.config.cpus_per_task, 1e-9)))

    def _map(self, fn, tasks, labels, stage, checks) -> list:
        error = self._gather(fn, tasks, labels, stage, checks)
        if isinstance(error, EngineError):  # raised here, where no frame holds an ObjectRef: a ref that outlived
            raise error  # ray.shutdown() (kept alive by a traceback) would crash the process when collected
        return error

    def _gather(self, fn, tasks, labels, stage, checks) -> list | EngineError:
        ray = self.ray
        remote = ray.remote(num_cpus=self.config.cpus_per_task, max_retries=self.config.max_retries,
                            retry_exceptions=False)(_call)
        fn_ref = ray.put(fn)
        refs = [remote.remote(fn_ref, args, chk) for args, chk in zip(tasks, checks)]
        out = []
        for ref, label in zip(refs, labels):
            try:
                out.append(ray.get(ref))
                continue
            except ray.exceptions.RayTaskError as e:
                error = _task_error(stage, label, e.cause if getattr(e, "cause", None) is not None else e)
            except ray.exceptions.RayError as e:
                error = EngineError(f"{stage} failed on shard {label} after {self.config.max_retries} retries: "
                                    f"{type(e).__name__}")
            for r in refs:  # stop what is still queued or running
                try:
                    ray.cancel(r)
                except Exception:  # noqa: BLE001 - a finished task cannot be cancelled
                    pass
            return error
        return out

    def close(self) -> None:
        """Disconnect; a local instance this engine started stops."""
        if self._started:
            os.environ.pop("RAY_ADDRESS", None)
        self.ray.shutdown()


def _answers(address: str, profile: str, timeout: float = 5.0) -> None:
    """Fail in one line unless something listens at host:port (a Ray head's GCS port)."""
    host, _, port = address.rpartition(":")
    if host.startswith("ray://"):
        host = host[len("ray://"):]
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return
    except (OSError, ValueError):
        raise EngineError(f"data engine ray: address {address} (profile {profile}) does not answer") from None


_CURRENT: list = [None, None]  # (config, engine) of this process: a Ray connection is made once


def get_engine(config: EngineConfig) -> Engine:
    """The engine for `config`, made once per process (again only when the config changes)."""
    if _CURRENT[0] != config:
        close_engine()
        _CURRENT[1] = make_engine(config)
        _CURRENT[0] = config
    return _CURRENT[1]


def close_engine() -> None:
    """Close this process's engine (a Ray connection; the local pool holds nothing between maps)."""
    if _CURRENT[1] is not None:
        _CURRENT[1].close()
    _CURRENT[0] = _CURRENT[1] = None


def make_engine(config: EngineConfig) -> Engine:
    if config.engine == "local":
        return Engine(config)
    if config.engine == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise EngineError(f"data engine ray (profile {config.profile}) needs the ray package: "
                              "pip install 'minigpt-assets[ray]'") from None
        return RayEngine(config)
    raise EngineError(f"data engine {config.engine!r} (profile {config.profile}): expected one of {', '.join(ENGINES)}")
