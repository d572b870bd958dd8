"""`minigpt ui`: `dagster dev` (webserver + daemon) on this project's instance, configured for the machine it runs
on, and a small GraphQL client for what the UI's buttons do (launch a backfill, follow it, count runs).

The instance config (`$DAGSTER_HOME/dagster.yaml`) is written from the deployment profile: at most
`max_concurrent_runs` runs at once (more would only fight over the cores), pool limits (`training: 1` on a GPU
box), and runs that execute their steps in one process (the profile's `executor`), so a backfill of many small
partitions pays one process start per run instead of one per step.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import yaml

from minigpt_assets.defs.common import IN_FLIGHT
from minigpt_assets.settings import Profile, Settings, quiet_openmp


def instance_config(profile: Profile) -> dict:
    return {
        "telemetry": {"enabled": False},
        "run_coordinator": {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator",
                            "config": {"max_concurrent_runs": profile.max_concurrent_runs,
                                       "dequeue_interval_seconds": 1}},
        "run_monitoring": {"enabled": True, "poll_interval_seconds": 30},
    }


MARK = "# written by minigpt from the deployment profile (resources/<profile>.yaml)"


def prepare_instance(settings: Settings, log=print) -> dg.DagsterInstance:
    """Write dagster.yaml from the profile (rewritten while it is ours; a dagster.yaml of the user's own is left
    as it is), set the pool limits, open the instance."""
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    cfg = home / "dagster.yaml"
    text = cfg.read_text() if cfg.exists() else ""
    if not text or text.startswith(MARK) or text == "telemetry:\n  enabled: false\n":  # ours, or the runner's
        cfg.write_text(MARK + "\n" + yaml.safe_dump(instance_config(settings.profile), sort_keys=False))
    else:
        log(f"{cfg}: your own instance config, left as it is (the profile's run queue settings are not applied)")
    os.environ["DAGSTER_HOME"] = str(home)
    instance = dg.DagsterInstance.get()
    for pool, limit in {"proxy": settings.profile.sweep_parallel, **settings.profile.pools}.items():
        instance.event_log_storage.set_concurrency_slots(pool, limit)
    return instance


def prepare_ui(settings: Settings) -> tuple[dg.DagsterInstance, int]:
    """Everything `dagster dev` needs before it starts: the instance from the profile, and the recipe versions on
    disk recorded (how many changed), so the daemon starts from them. A bad recipe raises RecipeError."""
    from minigpt_assets.defs.partitions import Partitions
    from minigpt_assets.defs.recipe_versions import report_versions
    from minigpt_assets.recipes import Catalog

    cat = Catalog.load_or_raise(settings.recipes)
    settings.export()
    instance = prepare_instance(settings)
    return instance, report_versions(instance, cat, Partitions.from_catalog(cat))


def ui_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "dagster", "dev", "-m", "minigpt_assets.definitions", "-h", host, "-p", str(port)]


@dataclass
class UIServer:
    """`dagster dev` in its own process group, for tests and benchmarks: `with UIServer(settings) as ui: ...`."""

    settings: Settings
    port: int = 3300
    host: str = "127.0.0.1"
    log: Path | None = None
    timeout: float = 180.0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> "UIServer":
        prepare_ui(self.settings)
        env = dict(os.environ, DAGSTER_HOME=str(self.settings.dagster_home), **quiet_openmp())
        out = open(self.log, "w") if self.log else subprocess.DEVNULL
        self.proc = subprocess.Popen(ui_command(self.host, self.port), env=env, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.time() + self.timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dagster dev exited with {self.proc.returncode} (log: {self.log})")
            try:
                data = graphql(self.url, "{ workspaceOrError { ... on Workspace { locationEntries { "
                                         "loadStatus } } } }")
                entries = data["workspaceOrError"]["locationEntries"]
                if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                    return self
            except (OSError, urllib.error.URLError, KeyError, TypeError):
                pass
            time.sleep(1)
        self.__exit__(None, None, None)
        raise TimeoutError(f"dagster dev did not load the code location in {self.timeout:.0f} s (log: {self.log})")

    def __exit__(self, *exc) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def graphql(url: str, query: str, variables: dict | None = None, timeout: float = 60.0) -> dict:
    req = urllib.request.Request(f"{url}/graphql", data=json.dumps({"query": query, "variables": variables or {}})
                                 .encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        body = json.loads(r.read())
    if body.get("errors"):
        raise RuntimeError(f"graphql: {body['errors'][0].get('message')}")
    return body["data"]


LAUNCH = """mutation($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }"""


def launch_backfill(url: str, assets: list[str], partitions: list[str] | None = None) -> str:
    """What "Materialize all" (every partition) or a partition selection in the launch dialog sends."""
    params: dict = {"assetSelection": [{"path": [a]} for a in assets]}
    if partitions is None:
        params["allPartitions"] = True
    else:
        params["partitionNames"] = partitions
    res = graphql(url, LAUNCH, {"p": params})["launchPartitionBackfill"]
    if res["__typename"] != "LaunchBackfillSuccess":
        raise RuntimeError(f"backfill not launched: {res.get('message', res['__typename'])}")
    return res["backfillId"]


def backfill_status(url: str, backfill_id: str) -> str:
    q = "query($id: String!) { partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill { status } } }"
    return graphql(url, q, {"id": backfill_id})["partitionBackfillOrError"]["status"]


def wait_backfill(url: str, backfill_id: str, timeout: float) -> str:
    """Poll until the backfill leaves REQUESTED (COMPLETED_SUCCESS, COMPLETED_FAILED, FAILED, CANCELED...)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = backfill_status(url, backfill_id)
        if status != "REQUESTED":
            return status
        time.sleep(2)
    return "TIMEOUT"


def run_counts(instance: dg.DagsterInstance) -> dict[str, int]:
    """Runs by who launched them: a backfill, the automation sensor, another sensor, or by hand."""
    counts = {"backfill": 0, "automation": 0, "sensor": 0, "other": 0}
    for rec in instance.get_run_records():
        tags = rec.dagster_run.tags
        if "dagster/backfill" in tags:
            counts["backfill"] += 1
        elif tags.get("dagster/sensor_name") == "minigpt_automation" or "dagster/from_automation_condition" in tags:
            counts["automation"] += 1
        elif "dagster/sensor_name" in tags:
            counts["sensor"] += 1
        else:
            counts["other"] += 1
    return counts


def materializable_assets(settings: Settings) -> list[str]:
    from minigpt_assets.definitions import build_definitions

    graph = build_definitions(settings).resolve_asset_graph()
    return [k.to_user_string() for k in graph.toposorted_asset_keys if graph.get(k).is_materializable]


def materialized_since(instance: dg.DagsterInstance, since: float) -> list[tuple[str, str | None]]:
    """(asset, partition) of every materialization recorded by runs created after `since` (a timestamp)."""
    from datetime import datetime, timezone

    after = datetime.fromtimestamp(since, tz=timezone.utc)
    out = []
    for rec in instance.get_run_records(dg.RunsFilter(created_after=after)):
        for ev in instance.all_logs(rec.dagster_run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
            m = ev.asset_materialization
            out.append((m.asset_key.to_user_string(), m.partition))
    return out


def wait_quiet(instance: dg.DagsterInstance, quiet: float, timeout: float) -> None:
    """Wait until no run has been in flight for `quiet` seconds (the daemon launches the next level within its
    30 s tick), or `timeout`."""
    deadline, calm_since = time.time() + timeout, None
    while time.time() < deadline:
        if instance.get_run_records(dg.RunsFilter(statuses=IN_FLIGHT)):
            calm_since = None
        elif calm_since is None:
            calm_since = time.time()
        elif time.time() - calm_since >= quiet:
            return
        time.sleep(2)


def edit_seed(recipes: Path, mixture: str) -> None:
    """Change a mixture's sampling seed (a new plan of the same sources: everything below it changes)."""
    path = recipes / "mixtures" / f"{mixture}.yaml"
    text = path.read_text()
    seed = yaml.safe_load(text).get("seed")
    if seed is None:
        path.write_text(text.rstrip("\n") + "\nseed: 1\n")
    else:
        path.write_text(text.replace(f"seed: {seed}", f"seed: {int(seed) + 1}"))


def run_backfill_bench(settings: Settings, root: Path, port: int, idle: float, timeout: float,
                       edit_mixture: str | None = None, log=print) -> tuple[list[dict], dict | None]:
    """The same selection (every asset, every partition) materialized twice on fresh homes under `root`, from a
    copy of the recipes: by `minigpt materialize`, then by a backfill launched as the UI's "Materialize all ->
    All -> Launch backfill" launches it, under `dagster dev` with the instance config `minigpt ui` writes. Then
    `idle` seconds more of the daemon, counting what it launches on its own; with `edit_mixture`, that mixture's
    seed is changed and what the daemon re-materializes for it is listed."""
    import shutil

    shutil.rmtree(root, ignore_errors=True)
    recipes = root / "recipes"
    shutil.copytree(settings.recipes, recipes)
    rows, edit = [], None
    for path in ("minigpt materialize", "UI backfill"):
        home = root / ("cli" if path.startswith("minigpt") else "ui")
        s = Settings(home=home, recipes=recipes, workers=settings.workers, profile=settings.profile)
        env = dict(os.environ, MINIGPT_HOME=str(home), MINIGPT_RECIPES=str(recipes),
                   MINIGPT_WORKERS=str(settings.workers), DAGSTER_HOME=str(home / "dagster"))
        log(f"{path}: into {home}")
        t0 = time.time()
        if path.startswith("minigpt"):
            proc = subprocess.run([sys.executable, "-m", "minigpt_assets.cli", "materialize"], env=env,
                                  capture_output=True, text=True)
            status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}: {proc.stdout[-300:]}"
            seconds = time.time() - t0
            os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]
            counts = after = run_counts(dg.DagsterInstance.get())
        else:
            os.environ.update(env)
            with UIServer(s, port=port, log=home / "dagster-dev.log") as ui:
                started = time.time()
                bid = launch_backfill(ui.url, materializable_assets(s))
                status = wait_backfill(ui.url, bid, timeout)
                seconds = time.time() - started
                instance = dg.DagsterInstance.get()
                counts = run_counts(instance)
                log(f"  {status} in {seconds:.0f} s; {idle:.0f} s more of the idle daemon")
                time.sleep(idle)
                after = run_counts(instance)
                if edit_mixture:
                    t1 = time.time()
                    edit_seed(recipes, edit_mixture)
                    log(f"  edited the seed of {edit_mixture}: waiting for the daemon")
                    time.sleep(45)  # the recipe sensor (10 s), then the automation sensor (30 s)
                    wait_quiet(instance, quiet=75, timeout=timeout)
                    done = materialized_since(instance, t1)
                    edit = {"mixture": edit_mixture, "seconds": time.time() - t1 - 75,
                            "runs": run_counts(instance)["automation"] - after["automation"],
                            "materialized": sorted(set(done), key=str), "repeated": len(done) - len(set(done))}
        rows.append({"path": path, "status": status, "seconds": seconds, "runs": sum(counts.values()),
                     "runs_after_idle": sum(after.values()) - sum(counts.values())})
        log(f"  {status}: {seconds:.0f} s, {sum(counts.values())} runs")
    return rows, edit
