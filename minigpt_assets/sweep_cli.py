"""`minigpt sweep NAME` (materialize one sweep with a progress bar) and `minigpt report sweep NAME` (Markdown)."""

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
    if any(o.asset in ("mixture_search", "scaling_law", "mixture_transfer") for o in failed):
        return 1
    return 0


def cmd_report_sweep(args: argparse.Namespace, settings: Settings) -> int:
    from minigpt_assets.science.report import SweepReportError, write_sweep_report

    try:
        path = write_sweep_report(settings.home, Catalog.load_or_raise(settings.recipes), args.name)
    except SweepReportError as e:
        print(str(e), file=sys.stderr)
        return 1
    print(path.read_text() if args.print else f"report: {path}")
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
