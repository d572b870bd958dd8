"""`minigpt sweep NAME` (materialize one sweep with a progress bar), `minigpt report sweep NAME` (Markdown) and
`minigpt bench sweep NAME` (proxy points per hour at several parallelisms)."""

from __future__ import annotations

import argparse
import sys
import time

from minigpt_assets.recipes import Catalog, RecipeError
from minigpt_assets.settings import Settings


def cmd_sweep(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from minigpt_assets.defs.runner import _describe, materialize_sweep
    from minigpt_assets.settings import load_profile

    cat = Catalog.load_or_raise(settings.recipes)
    if args.name not in cat.sweeps:
        print(f"unknown sweep {args.name!r} (known: {', '.join(sorted(cat.sweeps)) or 'none'}; "
              f"recipes/sweeps/<name>.yaml)", file=sys.stderr)
        return 2
    parallel = args.parallel or load_profile().sweep_parallel
    print(f"sweep {args.name}: {len(cat.sweep_point_keys(args.name))} points, {parallel} at a time, into {settings.home}")
    bar = None
    t0 = time.time()

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=f"{args.name} points", unit="point", file=sys.stdout, dynamic_ncols=True)
        bar.n = done
        bar.refresh()

    def log(line: str) -> None:
        (bar.write if bar is not None else print)(line)

    out = materialize_sweep(settings, args.name, parallel, log=log, progress=progress, force=args.force)
    if bar is not None:
        bar.close()
    failed = [o for o in out if not o.ok]
    ran = [o for o in out if o.ok and not o.fresh and not o.waiting]
    print(f"{len(ran)} materialized, {sum(o.fresh for o in out)} fresh, {len(failed)} failed in {time.time() - t0:.0f}s")
    for o in failed:
        print(_describe(o), file=sys.stderr)
    print(f"report: minigpt report sweep {args.name}")
    sweep = cat.sweeps[args.name]
    needed = ({"mixture_search"} | ({"mixture_transfer"} if sweep.transfer else set()) if sweep.kind == "mixture"
              else {"scaling_law"})
    reached = {o.asset for o in out if o.ok and not o.waiting and o.partition == args.name}
    return 0 if needed <= reached else 1


def cmd_report_sweep(args: argparse.Namespace, settings: Settings) -> int:
    from minigpt_assets.science.report import SweepReportError, write_sweep_report

    try:
        path = write_sweep_report(settings.home, Catalog.load_or_raise(settings.recipes), args.name)
    except SweepReportError as e:
        print(str(e), file=sys.stderr)
        return 1
    print(path.read_text() if args.print else f"report: {path}")
    return 0


def cmd_bench_sweep(args: argparse.Namespace, settings: Settings) -> int:
    """Proxy points per hour at each parallelism, on the same points: the first `--points` of the sweep are copied
    into a fresh sweep per parallelism (`<name>-bench<time>-p<k>`, a recipes copy under the home), so every side
    trains the same mixtures from scratch, one after the other, on one device."""
    import shutil

    import yaml

    from minigpt_assets.tables import format_table
    from minigpt_assets.defs.runner import DATA_ASSETS, materialize_graph, materialize_points

    cat = Catalog.load_or_raise(settings.recipes)
    if not args.name or args.name not in cat.sweeps or cat.sweeps[args.name].kind != "mixture":
        print(f"{args.name!r}: not a mixture sweep of {settings.recipes}", file=sys.stderr)
        return 2
    levels = [int(x) for x in args.parallel.split(",")]
    points = max(args.points, len(cat.sweeps[args.name].sources) + 2)  # the fewest a mixture sweep may have
    root = settings.home / "bench" / f"sweep-{args.name}" / "recipes"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(settings.recipes, root)
    data = yaml.safe_load((settings.recipes / "sweeps" / f"{args.name}.yaml").read_text())
    for f in (root / "sweeps").glob("*.y*ml"):
        f.unlink()
    stamp = time.strftime("%m%d%H%M%S")  # fresh sweep names: every level trains from scratch, also on a re-run
    for k in levels:
        sweep = {**data, "points": points, "search": {**data.get("search", {}), "min_points": 3}}
        sweep.pop("transfer", None)
        (root / "sweeps" / f"{args.name}-bench{stamp}-p{k}.yaml").write_text(yaml.safe_dump(sweep))
    bench = Settings.from_env(str(settings.home), str(root), settings.workers)
    materialize_graph(bench, DATA_ASSETS, None, log=lambda s: None)
    rows = []
    for k in levels:
        name = f"{args.name}-bench{stamp}-p{k}"
        materialize_graph(bench, {"sweep_points"}, {name}, log=lambda s: None)
        t0 = time.time()
        out = materialize_points(bench, name, k, log=lambda s: None)
        dt = time.time() - t0
        ok = sum(o.ok for o in out if o.asset == "proxy_scores")
        first = float(rows[0][3]) if rows else dt
        rows.append((k, points, ok, f"{dt:.1f}", f"{3600 * ok / dt:.0f}", f"{first / dt:.2f}x"))
        print(f"parallel {k}: {ok}/{points} points in {dt:.1f}s", flush=True)
    print(format_table(["parallel", "points", "scored", "seconds", "points/hour", "speed-up"], rows))
    return 0


def add_parsers(sub, common: argparse.ArgumentParser, settings_of) -> None:
    s = sub.add_parser("sweep", parents=[common],
                       help="materialize a sweep: its points (proxy runs, scores), the fit, the search and transfer")
    s.add_argument("name", help="a recipe of recipes/sweeps/")
    s.add_argument("--parallel", type=int, default=None,
                   help="points trained at once (default: the compute profile's sweep_parallel)")
    s.add_argument("--force", action="store_true", help="also run partitions that are fresh")
    s.set_defaults(func=lambda a: _guard(cmd_sweep, a, settings_of))
    s = sub.add_parser("report", parents=[common], help="Markdown reports with plots")
    rs = s.add_subparsers(dest="what", required=True)
    r = rs.add_parser("sweep", parents=[common], help="a sweep: predicted vs measured, importances, scaling, verdict")
    r.add_argument("name")
    r.add_argument("--print", action="store_true", help="print the Markdown instead of its path")
    r.set_defaults(func=lambda a: _guard(cmd_report_sweep, a, settings_of))


def _guard(fn, args, settings_of) -> int:
    try:
        return fn(args, settings_of(args))
    except RecipeError as e:
        for line in str(e).splitlines():
            print(line, file=sys.stderr)
        return 1
