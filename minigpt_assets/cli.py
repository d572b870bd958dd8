"""The `minigpt` command: validate recipes, run the demo, materialize assets, query stats, benchmark, open the UI."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from minigpt_assets.cli_common import _common, _fail, _settings
from minigpt_assets.recipes import RECIPE_KINDS, Catalog, RecipeError
from minigpt_assets.settings import quiet_openmp
from minigpt_assets.tables import format_table
from minigpt_assets.training.pipeline import STAGE_ASSETS


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
            checked += sum(1 for k in RECIPE_KINDS for n in getattr(cat, k) if n not in cat.generated)
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
               force: bool = False, exclude: set[str] | None = None) -> int:
    settings = _settings(args)
    try:
        Catalog.load_or_raise(settings.recipes)
    except RecipeError as e:
        return _fail(str(e).splitlines())
    from minigpt_assets.data.engine import EngineError, get_engine
    from minigpt_assets.defs.runner import materialize_graph
    from minigpt_assets.settings import data_engine_config

    if getattr(args, "engine", None):
        os.environ["MINIGPT_DATA_ENGINE"] = args.engine  # the run's assets read it (profile `data: engine`)
    try:  # a cluster that does not answer stops here, before any work
        engine = get_engine(data_engine_config(settings.workers))
    except EngineError as e:
        return _fail([str(e)])
    t0 = time.time()
    print(f"materializing into {settings.home} (recipes: {settings.recipes}, data engine: {engine.name}, "
          f"{engine.parallelism} tasks at once)")
    outcomes = materialize_graph(settings, select, partitions, force=force, exclude=exclude)
    failed = [o for o in outcomes if not o.ok]
    fresh = [o for o in outcomes if o.fresh]
    waits = [o for o in outcomes if o.waiting]
    summary = f"{len(outcomes) - len(failed) - len(fresh) - len(waits)} materialized, {len(fresh)} fresh" + (
        f", {len(waits)} waiting for upstream partitions" if waits else "")
    print(f"{summary}, {len(failed)} failed in {time.time() - t0:.0f}s" if failed else summary)
    return 1 if failed else 0


def cmd_materialize(args: argparse.Namespace) -> int:
    select = set(args.select.split(",")) if args.select else None
    parts = set(args.partition.split(",")) if args.partition else None
    return _run_graph(args, select, parts, force=args.force)


DEMO_EXPERIMENT, DEMO_MIXTURE = "minimind-demo", "balanced"
TRAINING_ASSETS = set(STAGE_ASSETS.values())  # pretrained, sft, aligned and reward models
EVAL_ASSETS = {"benchmark_scores", "experiment_comparison"}
SWEEP_ASSETS = {"sweep_points", "point_mixture", "proxy_model", "proxy_scores", "mixture_search", "mixture_transfer",
                "scaling_law"}  # `minigpt sweep NAME` runs these


def cmd_demo(args: argparse.Namespace) -> int:
    """The data graph for every recipe; the demo experiment's whole chain on the default mixture and its
    pretraining on every other mixture; then benchmark scores for each and the comparison report."""
    settings = _settings(args)
    code = _run_graph(args, None, None, exclude=TRAINING_ASSETS | EVAL_ASSETS | SWEEP_ASSETS)
    cat = Catalog.load_or_raise(settings.recipes)
    train = (not args.no_train and code == 0 and DEMO_EXPERIMENT in cat.experiments and DEMO_MIXTURE in cat.mixtures)
    from minigpt_assets.store import ArtifactStore

    store = ArtifactStore(settings.home)
    mixtures = sorted(m for m in cat.ordinary_mixtures() if store.current("mixture", m) is not None)
    if train:
        stages = " -> ".join(st.kind for st in cat.experiments[DEMO_EXPERIMENT].stages)
        print(f"\ntraining {DEMO_EXPERIMENT} on {DEMO_MIXTURE}: {stages}, and its pretraining on "
              f"{', '.join(m for m in mixtures if m != DEMO_MIXTURE)} (CPU: minutes; progress in the Dagster logs)")
        code = _run_graph(args, TRAINING_ASSETS, {f"{DEMO_EXPERIMENT}|{DEMO_MIXTURE}"})
        if code == 0:
            code = _run_graph(args, {"pretrained_model"}, {f"{DEMO_EXPERIMENT}|{m}" for m in mixtures})
        if code == 0 and cat.evals:
            print(f"\nevaluating every pretrained {DEMO_EXPERIMENT} model ({', '.join(sorted(cat.active_evals()))}) "
                  "and comparing them")
            code = _run_graph(args, {"benchmark_scores"}, {f"{DEMO_EXPERIMENT}|{m}" for m in mixtures})
            if code == 0:
                code = _run_graph(args, {"experiment_comparison"}, None)
    if code == 0:
        from minigpt_assets.store import StatsDB

        db = StatsDB(settings.home)
        cols, rows = db.query(
            "SELECT source, max(CASE WHEN stage='raw' THEN documents END) AS raw, "
            "max(CASE WHEN stage='filtered' THEN documents END) AS filtered, "
            "max(CASE WHEN stage='deduplicated' THEN documents END) AS deduplicated "
            "FROM source_stats GROUP BY source ORDER BY source")
        print()
        print(format_table(cols, rows))
        if train:
            order = [st.stage_name for st in cat.experiments[DEMO_EXPERIMENT].stages]  # the chain's order
            cols, rows = db.query(
                "SELECT experiment, mixture, stage, max(step) AS steps, arg_min(loss, step) AS first_loss, "
                "arg_max(loss, step) AS final_loss, arg_min(val_loss, step) AS first_val_loss, "
                "arg_max(val_loss, step) AS final_val_loss, arg_max(val_reward_accuracy, step) AS val_reward_acc "
                f"FROM training_metrics WHERE experiment = '{DEMO_EXPERIMENT}' "
                f"GROUP BY experiment, mixture, stage ORDER BY mixture, list_position({order}, stage)")
            print()
            print(format_table(cols, rows))
            if cat.evals:
                _print_comparison(settings.home)
        print(f"\nartifacts:   {settings.home / 'artifacts'}")
        print(f"stats:       {settings.home / 'stats.duckdb'}  (try: minigpt sql \"SELECT * FROM eval_scores\")")
        print(f"dagster UI:  minigpt ui   (runs are recorded in {settings.dagster_home})")
    return code


def _print_comparison(home) -> None:
    from minigpt_assets.store import StatsDB

    db = StatsDB(home)
    cols, rows = db.query(
        "SELECT task, metric, mixture, round(value, 4) AS value, round(ci_low, 4) AS ci_low, "
        "round(ci_high, 4) AS ci_high, n FROM eval_scores WHERE stage = 'pretrain' "
        "AND metric IN ('bits_per_byte', 'acc_mutual_info', 'acc', 'pass@1') ORDER BY task, metric, mixture")
    print()
    print(format_table(cols, rows))
    cols, rows = db.query("SELECT task, metric, verdict, coalesce(winner, best) AS best, round(diff, 4) AS diff, "
                          "round(p_adjusted, 4) AS p_holm FROM eval_verdicts "
                          "WHERE metric IN ('bits_per_byte', 'acc_mutual_info', 'acc', 'pass@1') ORDER BY task, metric")
    print()
    print(format_table(cols, rows))
    print(f"\nreport:      {Path(home) / 'reports' / 'comparison' / 'report.md'}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from minigpt_assets.evaluation.pipeline import evaluate_folder, evaluate_run
    from minigpt_assets.store import ArtifactError
    from minigpt_assets.training.pipeline import PipelineError

    settings = _settings(args)
    cat = Catalog.load_or_raise(settings.recipes, check_files=False)
    evals = args.evals.split(",") if args.evals else None
    if bool(args.model) == bool(args.experiment and args.mixture):
        return _fail("evaluate: give --experiment and --mixture (a trained run), or --model PATH --name NAME")
    try:
        if args.model:
            out = evaluate_folder(settings.home, cat, Path(args.model), args.name or Path(args.model).name,
                                  args.stage or "pretrain", evals, args.device, log=print, dtype=args.dtype)
        else:
            out = evaluate_run(settings.home, cat, args.experiment, args.mixture, args.stage, evals, args.device,
                               log=print, dtype=args.dtype)
    except (PipelineError, ArtifactError, ValueError) as e:
        return _fail(f"evaluate: {e}")
    cols = ["task", "metric", "value", "ci_low", "ci_high", "n"]
    print(format_table(cols, [tuple(s[c] for c in cols) for s in out.scores]))
    where = f"{out.artifact.path}  " if out.artifact else ""
    print(f"results: {where}(minigpt sql \"SELECT * FROM eval_results WHERE experiment = '{args.experiment}'\")")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from minigpt_assets.evaluation.pipeline import compare_runs
    from minigpt_assets.training.pipeline import PipelineError

    settings = _settings(args)
    try:
        comparison, report = compare_runs(settings.home, args.experiments.split(",") if args.experiments else None,
                                          args.mixtures.split(",") if args.mixtures else None, args.stage,
                                          args.alpha, args.correction, Path(args.out) if args.out else None)
    except (PipelineError, ValueError) as e:
        return _fail(f"compare: {e}")
    from minigpt_assets.evaluation.report import verdict_line

    for v in comparison.verdicts:
        print(verdict_line(v, comparison.correction, comparison.confidence))
    print(f"\nreport: {report}")
    return 0


# ------------------------------------------------------------------------------------------------ stats
def cmd_plan(args: argparse.Namespace) -> int:
    """Wall time, core-hours, dedup buckets and storage of the data half for a token target (data/plan.py)."""
    from minigpt_assets.data.plan import Assumptions, load_rates, print_plan

    try:
        rates = load_rates(Path(args.rates) if args.rates else None)
    except (OSError, ValueError, KeyError) as e:
        where = args.rates or "the shipped rates (minigpt_assets/data/rates.json)"
        return _fail([f"{where}: not a rates file written by `minigpt bench data --json` ({e})"])
    a = Assumptions(bytes_per_token=args.bytes_per_token, keep_filter=args.keep_filter, keep_dedup=args.keep_dedup,
                    doc_bytes=args.doc_bytes, bucket_mb=args.bucket_mb)
    print_plan(args.tokens, args.nodes, args.cores, rates, a)
    return 0


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
def cmd_train(args: argparse.Namespace) -> int:
    from minigpt_assets.store import ArtifactError
    from minigpt_assets.training.pipeline import PipelineError, train_stage

    settings = _settings(args)
    cat = Catalog.load_or_raise(settings.recipes, check_files=False)
    try:
        out = train_stage(settings.home, cat, args.mixture, args.experiment, args.stage, args.max_steps,
                          args.checkpoint_every, args.resume, args.device)
    except (PipelineError, ArtifactError) as e:
        return _fail(f"train: {e}")
    s = out.summary
    val = f", validation loss {s['first_val_loss']:.3f} -> {s['final_val_loss']:.3f}" if s["final_val_loss"] else ""
    print(f"trained {s['steps']}/{s['max_steps']} steps, {s['tokens']:,} tokens: loss {s['first_loss']:.3f} -> "
          f"{s['final_loss']:.3f}{val}")
    print(f"checkpoint: {out.artifact.path}  (minigpt export-hf {out.artifact.path} OUT)")
    print(f"metrics:    minigpt sql \"SELECT step, loss, val_loss FROM training_metrics "
          f"WHERE experiment='{args.experiment}' AND mixture='{args.mixture}' ORDER BY step\"")
    return 0


# ------------------------------------------------------------------------------------------------ models
def _model_errors():
    from minigpt_assets.models.interop import CheckpointError

    return (CheckpointError, FileNotFoundError, ValueError, KeyError)


def cmd_export_hf(args: argparse.Namespace) -> int:
    import warnings

    from minigpt_assets.model_card import model_card
    from minigpt_assets.models.interop import TokenizerMismatchWarning, export_hf

    settings = _settings(args)
    cat = Catalog.load_or_raise(settings.recipes, check_files=False)
    card = lambda model: model_card(model, Path(args.out).name, settings.home, Path(args.checkpoint), cat)  # noqa: E731
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TokenizerMismatchWarning)
            out = export_hf(args.checkpoint, args.out, dtype=args.dtype, tokenizer=args.tokenizer, card=card)
    except _model_errors() as e:
        return _fail(f"export-hf: {e}")
    for w in caught:
        if issubclass(w.category, TokenizerMismatchWarning):
            print(f"warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    print(f"wrote {out} (load it with transformers.AutoModelForCausalLM.from_pretrained({str(out)!r}))")
    return 0


def cmd_import_hf(args: argparse.Namespace) -> int:
    from minigpt_assets.models.interop import import_hf

    try:
        out = import_hf(args.folder, args.out)
    except _model_errors() as e:
        return _fail(f"import-hf: {e}")
    print(f"wrote {out}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    import torch
    from tokenizers import Tokenizer

    from minigpt_assets.models.interop import from_pretrained
    from minigpt_assets.models.transformer import generate

    ckpt = Path(args.checkpoint)
    tok_dir = Path(args.tokenizer) if args.tokenizer else (ckpt if ckpt.is_dir() else ckpt.parent)
    if not (tok_dir / "tokenizer.json").is_file():
        return _fail(f"generate: {tok_dir}: no tokenizer.json (pass --tokenizer DIR)")
    try:
        model = from_pretrained(ckpt)
    except _model_errors() as e:
        return _fail(f"generate: {e}")
    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    ids = tok.encode(args.prompt).ids
    if not ids:
        return _fail("generate: the prompt encodes to no tokens")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device)
    out = generate(model, torch.tensor([ids], device=device), args.max_new_tokens, args.temperature,
                   args.top_k, args.top_p, model.config.eos_token_id, args.seed)
    print(args.prompt + tok.decode(out[0, len(ids):].tolist()))
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    """`dagster dev` on this project's instance: dagster.yaml from the profile (run queue, pools), and the recipe
    versions recorded first, so the daemon starts from what is on disk and launches nothing until an edit."""
    settings = _settings(args)
    from minigpt_assets.defs.ui import prepare_ui, ui_command

    try:
        _, changed = prepare_ui(settings)
    except RecipeError as e:
        return _fail(str(e).splitlines())
    print(f"instance: {settings.dagster_home} (runs at once: {settings.profile.max_concurrent_runs}; "
          f"{changed} recipe versions recorded)")
    env = dict(os.environ, DAGSTER_HOME=str(settings.dagster_home))
    cmd = ui_command(args.host, args.port)
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
    s = sub.add_parser("demo", parents=[common],
                       help="the data graph, the demo model on every demo mixture, its scores and the comparison")
    s.add_argument("--no-train", action="store_true", help="stop after the data graph")
    s.add_argument("--engine", choices=["local", "ray"], help="where per-shard data tasks run (default: the "
                   "profile's data: engine); ray without an address in the profile starts a local Ray instance")
    s.set_defaults(func=cmd_demo)
    s = sub.add_parser("evaluate", parents=[common], help="run the eval recipes on one run's checkpoint or a model folder")
    s.add_argument("--experiment")
    s.add_argument("--mixture")
    s.add_argument("--model", help="any model folder instead (ours, or an HF export), recorded as experiment "
                                   "NAME on mixture 'external'")
    s.add_argument("--name", help="with --model: its name in the tables (default: the folder name)")
    s.add_argument("--stage", help="stage name (default: the pretraining stage)")
    s.add_argument("--evals", help="comma-separated eval recipes (default: every one whose data is present)")
    s.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    s.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="autocast compute dtype (compare runs evaluated in the same one)")
    s.set_defaults(func=cmd_evaluate)
    s = sub.add_parser("compare", parents=[common],
                       help="paired comparison of evaluated runs: intervals, corrected tests, a Markdown report")
    s.add_argument("--experiments", help="comma-separated (default: all evaluated)")
    s.add_argument("--mixtures", help="comma-separated (default: all evaluated)")
    s.add_argument("--stage", default="pretrain")
    s.add_argument("--alpha", type=float, default=0.05)
    s.add_argument("--correction", default="holm", choices=["holm", "bh", "none"])
    s.add_argument("--out", help="report folder (default: $MINIGPT_HOME/reports/comparison)")
    s.set_defaults(func=cmd_compare)
    s = sub.add_parser("materialize", parents=[common],
                       help="materialize what is missing or stale (all assets and partitions by default)")
    s.add_argument("--select", help="comma-separated asset names")
    s.add_argument("--partition", help="comma-separated partition keys")
    s.add_argument("--force", action="store_true", help="also run partitions that are fresh")
    s.add_argument("--engine", choices=["local", "ray"], help="where per-shard data tasks run (default: the "
                   "profile's data: engine); ray without an address in the profile starts a local Ray instance")
    s.set_defaults(func=cmd_materialize)
    s = sub.add_parser("plan", parents=[common], help="plan the data half for a token target on a cluster, from "
                                                      "measured per-core rates")
    s.add_argument("what", choices=["data"])
    s.add_argument("--tokens", type=float, required=True, help="tokens wanted after filtering and dedup, e.g. 2e12")
    s.add_argument("--nodes", type=int, default=1)
    s.add_argument("--cores", type=int, default=64, help="cores per node")
    s.add_argument("--rates", help="rates JSON from `minigpt bench data --json` (default: the one shipped, "
                                   "see docs/scale.md)")
    s.add_argument("--bytes-per-token", type=float, default=4.0)
    s.add_argument("--keep-filter", type=float, default=0.5, help="share of raw bytes the filters keep")
    s.add_argument("--keep-dedup", type=float, default=0.7, help="share of filtered bytes dedup keeps")
    s.add_argument("--doc-bytes", type=float, default=3000.0, help="mean document size in bytes")
    s.add_argument("--bucket-mb", type=int, default=1024, help="memory budget of one dedup join task")
    s.set_defaults(func=cmd_plan)
    s = sub.add_parser("sql", parents=[common], help="query the DuckDB stats database")
    s.add_argument("query")
    s.set_defaults(func=cmd_sql)
    s = sub.add_parser("analyze-mixture", parents=[common], help="token shares of a materialized mixture")
    s.add_argument("name")
    s.set_defaults(func=cmd_analyze_mixture)
    from minigpt_assets.bench_cli import add_parser as add_bench_parser

    add_bench_parser(sub, common)
    s = sub.add_parser("train", parents=[common], help="train one stage of an experiment on a mixture")
    s.add_argument("--mixture", required=True)
    s.add_argument("--experiment", required=True)
    s.add_argument("--stage", help="stage name (default: the first)")
    s.add_argument("--max-steps", type=int, help="stop after this many steps (the schedule keeps its length)")
    s.add_argument("--checkpoint-every", type=int, help="override the stage's checkpoint interval")
    s.add_argument("--resume", action="store_true", help="continue the same run from its last checkpoint")
    s.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    s.set_defaults(func=cmd_train)
    s = sub.add_parser("export-hf", parents=[common], help="our checkpoint -> a transformers folder")
    s.add_argument("checkpoint")
    s.add_argument("out")
    s.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="weight dtype (default: as saved)")
    s.add_argument("--tokenizer", help="tokenizer folder to include (default: the checkpoint's own)")
    s.set_defaults(func=cmd_export_hf)
    s = sub.add_parser("import-hf", parents=[common], help="a transformers folder -> our checkpoint")
    s.add_argument("folder")
    s.add_argument("out")
    s.set_defaults(func=cmd_import_hf)
    s = sub.add_parser("generate", parents=[common], help="continue a prompt with a checkpoint (KV cache)")
    s.add_argument("checkpoint", help="our checkpoint folder, an HF folder, or a MiniMind .pth")
    s.add_argument("prompt")
    s.add_argument("--max-new-tokens", type=int, default=64)
    s.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    s.add_argument("--top-k", type=int)
    s.add_argument("--top-p", type=float)
    s.add_argument("--seed", type=int)
    s.add_argument("--device")
    s.add_argument("--tokenizer", help="folder with tokenizer.json (default: the checkpoint's)")
    s.set_defaults(func=cmd_generate)
    s = sub.add_parser("ui", parents=[common], help="dagster dev on 127.0.0.1 with this project's instance")
    s.add_argument("--port", type=int, default=3000)
    s.add_argument("--host", default="127.0.0.1", help="address to serve on (default: loopback only)")
    s.set_defaults(func=cmd_ui)
    from minigpt_assets.serve.cli import add_parser as add_serve_parser
    from minigpt_assets.sweep_cli import add_parsers

    add_serve_parser(sub, common, _settings)
    add_parsers(sub, common, _settings)
    return p


def main(argv: list[str] | None = None) -> int:
    quiet_openmp()  # before torch loads
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RecipeError as e:
        return _fail(str(e).splitlines())
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
