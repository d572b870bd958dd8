"""`minigpt bench …`: benchmarks that print tables, each timing our path and the baseline a user would otherwise
pick side by side in one run (data stages, model steps, evaluation, UI backfills, sweep parallelism, generation
and serving)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from minigpt_assets.cli_common import _fail, _settings
from minigpt_assets.recipes import Catalog, RecipeError
from minigpt_assets.tables import format_table


BENCHES = ["data", "model", "train", "minimind", "eval", "backfill", "sweep", "generate", "serve"]
#: defaults of the options that mean the same in several benches but default differently
_DEFAULTS = {"minimind": {"steps": 300, "warmup": 20, "timeout": 1800.0},
             "*": {"steps": 5, "warmup": 5, "timeout": 7200.0}}


def cmd_bench(args: argparse.Namespace) -> int:
    for k, v in _DEFAULTS.get(args.what, _DEFAULTS["*"]).items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    if args.what == "data":
        from minigpt_assets.data.bench import run_data_bench

        return run_data_bench(_settings(args), docs=args.docs, engines=args.engine.split(","),
                              out=Path(args.json) if args.json else None)
    if args.what == "backfill":
        return _bench_backfill(args)
    if args.what == "sweep":
        from minigpt_assets.sweep_cli import cmd_bench_sweep

        return cmd_bench_sweep(args, _settings(args))
    if args.what == "minimind":
        return _bench_minimind(args)
    settings = _settings(args)
    cat = Catalog.load_or_raise(settings.recipes, check_files=False)
    models = args.models.split(",") if args.models else None
    if args.what == "train":
        return _bench_train(args, cat, models)
    if args.what == "serve":
        return _bench_serve(args, settings)
    unknown = [m for m in models or [] if m not in cat.models]
    if unknown:
        return _fail(f"bench {args.what}: --models: unknown model recipe(s) {', '.join(unknown)} "
                     f"(known: {', '.join(sorted(cat.models))})")
    if args.what == "model":
        from minigpt_assets.models.bench import run_model_bench

        return run_model_bench(settings.recipes, models, args.device, args.dtype, args.batch, args.seq,
                               args.steps, args.impls.split(",") if args.impls else None, args.compile,
                               Path(args.json) if args.json else None)
    if args.what == "eval":
        return _bench_eval(args, settings, models)
    if args.what == "generate":
        return _bench_generate(args, cat, models)
    return _fail(f"bench: unknown benchmark {args.what!r} (expected: {', '.join(BENCHES)})")


def _where(device: str) -> str:
    import torch

    return torch.cuda.get_device_name() if device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"


def _bench_generate(args: argparse.Namespace, cat: Catalog, models: list[str] | None) -> int:
    import torch

    from minigpt_assets.serve.bench import GENERATE_COLUMNS, run_generate_bench

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.startswith("cuda") else "float32"))
    batches = [int(b) for b in (args.batches or "1,8").split(",")]
    all_rows = []
    for name in models or ["minimind-demo"]:
        cfg = cat.models[name]
        print(f"bench generate: {name}, greedy, {args.new_tokens} new tokens after {args.prompt_len}, {dtype}, on "
              f"{_where(device)}; transformers' generate on the exported folder next to ours", flush=True)
        rows = [{"model": name, **r} for r in run_generate_bench(cfg, device, dtype, batches, args.prompt_len,
                                                                 args.new_tokens)]
        print(format_table(["model", *GENERATE_COLUMNS], [tuple(r[c] for c in ["model", *GENERATE_COLUMNS])
                                                          for r in rows]))
        all_rows += rows
    if args.json:
        Path(args.json).write_text(json.dumps(all_rows, indent=2) + "\n")
    return 0


def _bench_serve(args: argparse.Namespace, settings) -> int:

    from minigpt_assets.serve.bench import SERVE_COLUMNS, run_serve_bench
    from minigpt_assets.serve.cli import resolve_model
    from minigpt_assets.training.pipeline import PipelineError

    if bool(args.checkpoint) == bool(args.experiment and args.mixture):
        return _fail("bench serve: give --checkpoint DIR, or --experiment and --mixture (a trained run)")
    try:
        folder, name = resolve_model(settings, args.checkpoint, args.experiment, args.mixture, args.stage)
    except PipelineError as e:
        return _fail(f"bench serve: {e}")
    device = args.device or "cpu"
    print(f"bench serve: {args.concurrency} concurrent streaming chat requests of up to {args.max_tokens} tokens to "
          f"{name} on loopback, {_where(device)}; continuous batching next to one request at a time", flush=True)
    rows = run_serve_bench(folder, name, args.concurrency, args.max_tokens, device)
    print(format_table(list(SERVE_COLUMNS), [tuple(r[c] for c in SERVE_COLUMNS) for r in rows]))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if all(r["completed"] == r["requests"] for r in rows) else 1


def _unmaterialized(bench: str, mixture: str) -> str:
    return (f"bench {bench}: --mixture: {mixture} is not materialized "
            f"(minigpt materialize --select mixture --partition {mixture})")


def _bench_train(args: argparse.Namespace, cat: Catalog, models: list[str] | None) -> int:
    from minigpt_assets.training import bench as T

    unknown = [m for m in models or [] if m not in T.SHAPES and m not in cat.models]
    if unknown:
        return _fail(f"bench train: --models: unknown {', '.join(unknown)} (shapes: {', '.join(T.SHAPES)}; "
                     f"or a model recipe)")
    impls = args.impls.split(",") if args.impls else None
    bad = [i for i in impls or [] if i not in T.IMPLS]
    if bad:
        return _fail(f"bench train: --impls: unknown {', '.join(bad)} (known: {', '.join(T.IMPLS)})")
    recipes = {m: cat.models[m].model_dump(mode="json", exclude={"description"}) for m in models or []
               if m in cat.models}
    mixture = None
    if args.mixture:
        from minigpt_assets.store import ArtifactStore

        art = ArtifactStore(_settings(args).home).current("mixture", args.mixture)
        if art is None:
            return _fail(_unmaterialized("train", args.mixture))
        mixture = (args.mixture, art.path, cat.mixtures[args.mixture].seq_len)
    if args.to_loss is not None and mixture is None:
        return _fail("bench train: --to-loss needs --mixture (its val split is what the loss is measured on)")
    strategies = args.strategies.split(",") if args.strategies else None
    if args.nproc > 1 or strategies:
        from minigpt_assets.training.trainer import STRATEGIES

        bad = [s for s in strategies or [] if s not in STRATEGIES or s == "none"]
        if bad:
            return _fail(f"bench train: --strategies: unknown {', '.join(bad)} (known: "
                         f"{', '.join(s for s in STRATEGIES if s != 'none')})")
        if any(i.startswith("hf") for i in impls or []) or args.to_loss is not None:
            return _fail("bench train: --nproc and --strategies run our variants only (transformers' side is one "
                         "process), "
                         "and not with --to-loss")
    if args.nproc < 1:
        return _fail(f"bench train: --nproc: expected a positive number of ranks, got {args.nproc}")
    from pydantic import ValidationError

    from minigpt_assets.training.config import StageConfig

    try:
        extra = json.loads(args.stage_options) if args.stage_options else {}
        mb = extra.get("micro_batch_size") if isinstance(extra, dict) else None
        # the fields' types and ranges (the batch each shape runs is checked in its worker)
        StageConfig.model_validate({"kind": "pretrain", **extra, "batch_size": mb if isinstance(mb, int) and mb > 0
                                    else 1})
    except json.JSONDecodeError as e:
        return _fail(f"bench train: --stage-options: not JSON ({e})")
    except (ValidationError, TypeError) as e:
        where = (f"{'.'.join(map(str, e.errors()[0]['loc']))}: {e.errors()[0]['msg']}"
                 if isinstance(e, ValidationError) else str(e))
        return _fail(f"bench train: --stage-options: {where}")
    rows = T.run_train_bench(models, recipes, args.device, args.steps, args.warmup, args.batch, args.seq, impls,
                             args.precision, Path(args.json) if args.json else None, mixture, args.to_loss,
                             args.eval_every, extra, args.nproc, strategies, args.profile, args.lr)
    return 0 if rows and all("error" not in r for r in rows) else 1


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def _loss_target(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or auto, got {text!r}") from None


def _bench_minimind(args: argparse.Namespace) -> int:
    from minigpt_assets.store import ArtifactStore
    from minigpt_assets.training import bench as T
    from minigpt_assets.training import bench_minimind as M

    if not args.minimind:
        return _fail("bench minimind: give --minimind DIR, a checkout of MiniMind (github.com/jingyaogong/minimind, "
                     "e.g. `git archive c090b69`, its last MiniMind2 revision)")
    if lack := M.missing(Path(args.minimind)):
        return _fail(f"bench minimind: --minimind {args.minimind}: {lack}")
    settings = _settings(args)
    cat = Catalog.load_or_raise(settings.recipes, check_files=False)
    name = args.models or "minimind2-small"
    if name not in cat.models:
        return _fail(f"bench minimind: --models: {name} is not a model recipe (one recipe: our side's shape)")
    impls = (args.impls or "ours,ours+fast").split(",")
    if bad := [i for i in impls if not i.startswith("ours") or i not in T.IMPLS]:
        return _fail(f"bench minimind: --impls: unknown {', '.join(bad)} (known: "
                     f"{', '.join(i for i in T.IMPLS if i.startswith('ours'))})")
    variants = (args.variants or "docs,chunks,docs+compile").split(",")
    if bad := [v for v in variants if v not in M.VARIANTS]:
        return _fail(f"bench minimind: --variants: unknown {', '.join(bad)} (known: {', '.join(M.VARIANTS)})")
    mixture, store = args.mixture or "balanced", ArtifactStore(settings.home)
    if store.current("mixture", mixture) is None:
        return _fail(_unmaterialized("minimind", mixture))
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    workers = getattr(args, "workers", None)
    rows = M.run_minimind_bench(Path(args.minimind), store, mixture, name,
                                cat.models[name].model_dump(mode="json", exclude={"description"}), device,
                                args.batch or 32, args.seq or 512, args.steps, args.warmup, impls, variants,
                                8 if workers is None else workers, args.timeout,
                                Path(args.json) if args.json else None)
    return 0 if rows and all("error" not in r for r in rows) else 1


def _bench_backfill(args: argparse.Namespace) -> int:
    settings = _settings(args)
    try:
        Catalog.load_or_raise(settings.recipes)
    except RecipeError as e:
        return _fail(str(e).splitlines())
    from minigpt_assets.defs.ui import run_backfill_bench

    root = settings.home / "bench-backfill"
    print(f"bench backfill: every asset and partition of {settings.recipes}, on fresh homes under {root}, "
          f"profile max_concurrent_runs={settings.profile.max_concurrent_runs}, executor={settings.profile.executor}")
    rows, edit = run_backfill_bench(settings, root, args.port, args.idle, args.timeout, args.edit_mixture)
    base = rows[0]["seconds"]
    print()
    cols = ["path", "status", "wall s", "vs minigpt materialize", "runs", f"runs in {args.idle:.0f} s idle after"]
    print(format_table(cols,
                       [(r["path"], r["status"], round(r["seconds"], 1), f"{r['seconds'] / base:.2f}x", r["runs"],
                         r["runs_after_idle"]) for r in rows]))
    if edit:
        print(f"\nafter editing the seed of {edit['mixture']}: {edit['runs']} runs launched by the daemon in "
              f"{edit['seconds']:.0f} s, materializing {len(edit['materialized'])} asset partitions "
              f"({edit['repeated']} twice):")
        for asset, part in edit["materialized"]:
            print(f"  {asset}[{part}]" if part else f"  {asset}")
    return 0 if all(r["status"] in ("ok", "COMPLETED_SUCCESS") for r in rows) else 1


def _bench_eval(args: argparse.Namespace, settings, models: list[str] | None) -> int:
    import json

    from minigpt_assets.evaluation import bench as B

    tasks = args.tasks.split(",") if args.tasks else None
    if bad := [t for t in tasks or [] if t not in B.TASKS]:
        return _fail(f"bench eval: --tasks: unknown task(s) {', '.join(bad)} (known: {', '.join(B.TASKS)})")
    impls = tuple(args.impls.split(",")) if args.impls else ("ours", "lm-eval")
    if bad := [i for i in impls if i not in ("ours", "lm-eval")]:
        return _fail(f"bench eval: --impls: unknown implementation(s) {', '.join(bad)} (known: ours, lm-eval)")
    if "lm-eval" in impls:
        try:
            import lm_eval  # noqa: F401
        except ImportError:
            return _fail("bench eval: lm-evaluation-harness is not installed (pip install -e '.[lm-eval]'), "
                         "or pass --impls ours")
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    where = torch.cuda.get_device_name() if device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"bench eval: log-likelihood tasks, ours next to lm-evaluation-harness on the same model and rows, "
          f"on {where}; torch {torch.__version__}", flush=True)
    rows = B.run_eval_bench(settings.recipes, models, device, args.dtype, args.batch, args.examples, tasks,
                            args.fewshot, impls)
    if not rows:
        return 1
    r0 = rows[0]
    print(f"\n{r0['dtype']}, batch {r0['batch']}, {r0['num_fewshot']}-shot; seconds exclude loading (load_s)")
    print(format_table(list(B.COLUMNS), [tuple(r.get(c) for c in B.COLUMNS) for r in rows]))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


# ------------------------------------------------------------------------------------------------ training


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("bench", parents=[common], help="benchmarks that print tables")
    s.add_argument("what", choices=BENCHES)
    s.add_argument("name", nargs="?", help="sweep: a mixture sweep recipe")
    s.add_argument("--points", type=int, default=8, help="sweep: points trained at each parallelism")
    s.add_argument("--parallel", default="1,4", help="sweep: comma-separated parallelisms to time")
    s.add_argument("--docs", type=int, default=6000, help="data: documents per benchmark input")
    s.add_argument("--engine", default="local", help="data: comma-separated engines to time side by side "
                                                     "(local, ray), each on --workers cores")
    s.add_argument("--models", help="model, eval: comma-separated model recipes (default: small ones on CPU); "
                                    "train: built-in shapes (d768-l12, d1024-l24, llama-1b-untied, tiny) or recipes; "
                                    "minimind: our side's model recipe (default minimind2-small)")
    s.add_argument("--impls", help="model: comma-separated of hf,ours,ours+docmask,ours+ckpt; eval: ours,lm-eval; "
                                   "train: of hf,hf+compile,ours,ours+fast,ours+fast+docs; "
                                   "minimind: our side's (default ours,ours+fast)")
    s.add_argument("--precision", choices=["default", "fp8"], default="default",
                   help="train: fp8 runs the ours+fast variants with float8 linear layers (torchao)")
    s.add_argument("--warmup", type=int, help="train (default 5), minimind (default 20): untimed steps first "
                                              "(compilation happens there)")
    s.add_argument("--to-loss", type=_loss_target, help="train: wall time of each variant to this validation loss "
                   "(with --mixture; --steps is then the most steps), or auto: to the best loss the first variant reaches")
    s.add_argument("--lr", type=_positive_float, default=3e-4, help="train: the peak LR of every variant, "
                   "transformers' too (default 3e-4; cosine to 0.1x with --to-loss, else constant)")
    s.add_argument("--stage-options", help="train: JSON of stage fields for our variants, e.g. "
                                           "'{\"activation_checkpointing\": true, \"optim\": {\"name\": \"adamw8bit\"}}'")
    s.add_argument("--nproc", type=int, default=1, help="train: also run our variants as N ranks under torchrun on "
                   "this machine (tokens/s per GPU next to one process)")
    s.add_argument("--profile", type=int, default=0, help="train: after the timed steps, run this many under "
                   "torch.profiler and print the kernels with the most GPU time (on CPU: operators) and the time by kind")
    s.add_argument("--strategies", help="train: comma-separated of fsdp,ddp,hsdp,zero2,zero3 for the --nproc ranks "
                   "(default fsdp,ddp); with --nproc 1, one rank under torchrun (a strategy's cost on one GPU)")
    s.add_argument("--eval-every", type=int, default=25, help="train --to-loss: steps between validation losses")
    s.add_argument("--mixture", help="train: real tokens from this materialized mixture (its seq_len) instead of "
                                     "random ones; the losses then compare what each variant learns; minimind: "
                                     "the documents of both sides (default balanced)")
    s.add_argument("--device", help="model, eval, minimind: cpu or cuda (default: cuda when available)")
    s.add_argument("--dtype", help="model, eval: float32 or bfloat16 (default: float32 on CPU, bfloat16 on GPU)")
    s.add_argument("--batch", type=int, help="model: sequences per step; eval: requests per forward pass; "
                                             "minimind: rows per step of both sides (default 32)")
    s.add_argument("--examples", type=int, default=200, help="eval: examples per task")
    s.add_argument("--tasks", help="eval: comma-separated of hellaswag,arc_easy,mmlu,lambada_openai")
    s.add_argument("--fewshot", type=int, default=0, help="eval: few-shot examples per prompt")
    s.add_argument("--seq", type=int, help="model: tokens per sequence; minimind: both sides' (default 512)")
    s.add_argument("--steps", type=int, help="model, train: timed steps (default 5); minimind: default 300")
    s.add_argument("--compile", action="store_true", help="model: torch.compile every variant")
    s.add_argument("--json", help="model, train, eval, minimind: also write the rows to this JSON file; data: rows "
                                  "and per-core rates (for minigpt plan data)")
    s.add_argument("--port", type=int, default=3310, help="backfill: port of the dagster dev it starts")
    s.add_argument("--idle", type=float, default=120, help="backfill: seconds the daemon runs on after the backfill")
    s.add_argument("--timeout", type=float, help="backfill: seconds to wait for the backfill (default 7200); "
                   "minimind: seconds for all runs together, each run cut at what is left (default 1800)")
    s.add_argument("--minimind", metavar="DIR", help="minimind: a checkout of MiniMind (trainer/train_pretrain.py, "
                                                     "model/, dataset/), run unmodified")
    s.add_argument("--variants", help="minimind: its runs, comma-separated of docs,chunks,docs+compile,"
                                      "chunks+compile (default docs,chunks,docs+compile)")
    s.add_argument("--edit-mixture", help="backfill: then change this mixture's seed and list what the daemon re-runs")
    s.add_argument("--batches", help="generate: comma-separated batch sizes (default 1,8)")
    s.add_argument("--prompt-len", type=int, default=32, help="generate: prompt tokens")
    s.add_argument("--new-tokens", type=int, default=128, help="generate: tokens generated per row")
    s.add_argument("--concurrency", type=int, default=64, help="serve: streaming requests at once")
    s.add_argument("--max-tokens", type=int, default=64, help="serve: max_tokens of each request")
    s.add_argument("--checkpoint", help="serve: a model folder with its tokenizer")
    s.add_argument("--experiment", help="serve: a trained run's experiment (with --mixture)")
    s.add_argument("--stage", help="serve: its stage (default: the last)")
    s.set_defaults(func=cmd_bench)
