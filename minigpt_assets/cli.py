"""The `minigpt` command: validate recipes, run the demo, materialize assets, query stats, benchmark, open the UI."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from minigpt_assets.recipes import RECIPE_KINDS, Catalog, RecipeError
from minigpt_assets.settings import Settings


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--home", default=argparse.SUPPRESS,
                   help="artifact root (default: $MINIGPT_HOME or ./.minigpt)")
    p.add_argument("--recipes", default=argparse.SUPPRESS,
                   help="recipes directory (default: $MINIGPT_RECIPES or ./recipes)")
    p.add_argument("--workers", type=int, default=argparse.SUPPRESS, help="worker processes per stage")
    return p


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(getattr(args, "home", None), getattr(args, "recipes", None),
                             getattr(args, "workers", None))


def _fail(lines: list[str] | str, code: int = 1) -> int:
    for line in [lines] if isinstance(lines, str) else lines:
        print(line, file=sys.stderr)
    return code


# ------------------------------------------------------------------------------------------------ validate
def _recipes_root(path: Path) -> Path:
    """recipes/sources/x.yaml -> recipes; a directory is taken as a recipes dir itself."""
    if path.is_dir():
        return path
    return path.parent.parent if path.parent.name in RECIPE_KINDS else path.parent


def cmd_validate(args: argparse.Namespace) -> int:
    targets = [Path(p) for p in args.paths] or [_settings(args).recipes]
    problems: list[str] = []
    checked = 0
    for target in targets:
        if not target.exists():
            problems.append(f"{target}: file or directory not found")
            continue
        cat = Catalog.load(_recipes_root(target.resolve()))
        if target.is_dir():
            checked += sum(len(getattr(cat, k)) for k in RECIPE_KINDS)
            problems += [str(p) for p in cat.problems]
        else:
            mine = [p for p in cat.problems if Path(p.file).name == target.name
                    and Path(p.file).parent.name == target.resolve().parent.name]
            checked += 1
            problems += [str(p) for p in mine]
    if problems:
        return _fail(problems)
    print(f"ok: {checked} recipe(s) valid")
    return 0


# ------------------------------------------------------------------------------------------------ run graph
def _run_graph(args: argparse.Namespace, select: set[str] | None, partitions: set[str] | None,
               force: bool = False) -> int:
    settings = _settings(args)
    try:
        Catalog.load_or_raise(settings.recipes)
    except RecipeError as e:
        return _fail(str(e).splitlines())
    from minigpt_assets.defs.runner import materialize_graph

    t0 = time.time()
    print(f"materializing into {settings.home} (recipes: {settings.recipes}, workers: {settings.workers})")
    outcomes = materialize_graph(settings, select, partitions, force=force)
    failed = [o for o in outcomes if not o.ok]
    fresh = [o for o in outcomes if o.fresh]
    summary = f"{len(outcomes) - len(failed) - len(fresh)} materialized, {len(fresh)} fresh"
    print(f"{summary}, {len(failed)} failed in {time.time() - t0:.0f}s" if failed else summary)
    return 1 if failed else 0


def cmd_materialize(args: argparse.Namespace) -> int:
    select = set(args.select.split(",")) if args.select else None
    parts = set(args.partition.split(",")) if args.partition else None
    return _run_graph(args, select, parts, force=args.force)


def cmd_demo(args: argparse.Namespace) -> int:
    settings = _settings(args)
    code = _run_graph(args, None, None)
    if code == 0:
        from minigpt_assets.store import StatsDB

        cols, rows = StatsDB(settings.home).query(
            "SELECT source, max(CASE WHEN stage='raw' THEN documents END) AS raw, "
            "max(CASE WHEN stage='filtered' THEN documents END) AS filtered, "
            "max(CASE WHEN stage='deduplicated' THEN documents END) AS deduplicated "
            "FROM source_stats GROUP BY source ORDER BY source")
        print()
        print(format_table(cols, rows))
        print(f"\nartifacts:   {settings.home / 'artifacts'}")
        print(f"stats:       {settings.home / 'stats.duckdb'}  (try: minigpt sql \"SELECT * FROM filter_stats\")")
        print(f"dagster UI:  minigpt ui   (runs are recorded in {settings.dagster_home})")
    return code


# ------------------------------------------------------------------------------------------------ stats
def format_table(cols: list[str], rows: list[tuple]) -> str:
    def cell(v: object) -> str:
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    body = [[cell(v) for v in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in body]) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.rjust(w) if _numeric(v) else v.ljust(w) for v, w in zip(r, widths)) for r in body]
    return "\n".join(lines)


def _numeric(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def cmd_sql(args: argparse.Namespace) -> int:
    import duckdb

    from minigpt_assets.store import StatsDB

    db = StatsDB(_settings(args).home)
    try:
        cols, rows = db.query(args.query)
    except duckdb.Error as e:
        return _fail(f"sql: {str(e).splitlines()[0]}")
    print(format_table(cols, rows))
    return 0


def cmd_analyze_mixture(args: argparse.Namespace) -> int:
    from minigpt_assets.store import ArtifactStore, StatsDB

    settings = _settings(args)
    art = ArtifactStore(settings.home).current("mixture", args.name)
    if art is None:
        return _fail(f"mixture {args.name!r} is not materialized under {settings.home} "
                     f"(run: minigpt materialize --select mixture --partition {args.name})")
    cols, rows = StatsDB(settings.home).query(
        "SELECT mixture, split, source, documents, tokens, target_share, actual_share, epochs FROM mixture_stats "
        f"WHERE mixture = '{args.name}' ORDER BY split DESC, source")
    print(format_table(cols, rows))
    for w in art.manifest.get("meta", {}).get("warnings", []):
        print(f"warning: {w}")
    print(f"composition: {art.path / 'composition.png'}")
    return 0


# ------------------------------------------------------------------------------------------------ bench / ui
def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "data":
        from minigpt_assets.data.bench import run_data_bench

        return run_data_bench(_settings(args), docs=args.docs)
    return _fail(f"bench: unknown benchmark {args.what!r} (expected: data)")


def cmd_ui(args: argparse.Namespace) -> int:
    settings = _settings(args)
    settings.export()
    env = dict(os.environ, DAGSTER_HOME=str(settings.dagster_home))
    settings.dagster_home.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "dagster", "dev", "-m", "minigpt_assets.definitions", "-h", "127.0.0.1",
           "-p", str(args.port)]
    print(" ".join(cmd))
    return subprocess.call(cmd, env=env)


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    p = argparse.ArgumentParser(prog="minigpt", parents=[common],
                                description="LLM experiments as a Dagster asset graph.")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("validate", parents=[common], help="check recipes and cross-references")
    s.add_argument("paths", nargs="*", help="recipe files or recipes dirs (default: the recipes dir)")
    s.set_defaults(func=cmd_validate)
    s = sub.add_parser("demo", parents=[common], help="materialize the whole default graph")
    s.set_defaults(func=cmd_demo)
    s = sub.add_parser("materialize", parents=[common],
                       help="materialize what is missing or stale (all assets and partitions by default)")
    s.add_argument("--select", help="comma-separated asset names")
    s.add_argument("--partition", help="comma-separated partition keys")
    s.add_argument("--force", action="store_true", help="also run partitions that are fresh")
    s.set_defaults(func=cmd_materialize)
    s = sub.add_parser("sql", parents=[common], help="query the DuckDB stats database")
    s.add_argument("query")
    s.set_defaults(func=cmd_sql)
    s = sub.add_parser("analyze-mixture", parents=[common], help="token shares of a materialized mixture")
    s.add_argument("name")
    s.set_defaults(func=cmd_analyze_mixture)
    s = sub.add_parser("bench", parents=[common], help="benchmarks that print tables")
    s.add_argument("what", choices=["data"])
    s.add_argument("--docs", type=int, default=6000, help="documents per benchmark input")
    s.set_defaults(func=cmd_bench)
    s = sub.add_parser("ui", parents=[common], help="dagster dev on 127.0.0.1 with this project's instance")
    s.add_argument("--port", type=int, default=3000)
    s.set_defaults(func=cmd_ui)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RecipeError as e:
        return _fail(str(e).splitlines())
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
