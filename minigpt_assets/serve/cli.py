"""`minigpt serve`: a trained model behind an OpenAI-compatible endpoint and a chat page."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def resolve_model(settings, checkpoint: str | None, experiment: str | None, mixture: str | None,
                  stage: str | None) -> tuple[Path, str]:
    """(folder, served name) of a checkpoint folder, or of an experiment's published stage (default: its last)."""
    from minigpt_assets.recipes import Catalog
    from minigpt_assets.store import ArtifactStore
    from minigpt_assets.training.pipeline import STAGE_ASSETS, PipelineError, find_stage, stage_partition

    if checkpoint:
        folder = Path(checkpoint)
        if not (folder / "tokenizer.json").is_file():
            raise PipelineError(f"{folder}: not a model folder with its tokenizer (tokenizer.json missing)")
        return folder, folder.resolve().name
    cat = Catalog.load_or_raise(settings.recipes, check_files=False)
    if experiment not in cat.experiments:
        raise PipelineError(f"unknown experiment {experiment!r} (known: {', '.join(sorted(cat.experiments))})")
    exp = cat.experiments[experiment]
    _, st = find_stage(cat, experiment, stage or exp.stages[-1].stage_name)
    if st.kind == "reward":
        raise PipelineError(f"{experiment}/{st.stage_name} is a reward model, not a model to talk to; serve the "
                            "stage before it (--stage)")
    art = ArtifactStore(settings.home).current(STAGE_ASSETS[st.kind], stage_partition(experiment, mixture))
    if art is None:
        raise PipelineError(f"no {st.stage_name} checkpoint of {experiment} on {mixture} yet: "
                            f"minigpt train --experiment {experiment} --mixture {mixture} --stage {st.stage_name}")
    return art.path, f"{experiment}/{mixture}/{st.stage_name}"


def cmd_serve(args: argparse.Namespace, settings) -> int:
    import uvicorn

    from minigpt_assets.serve.api import create_app
    from minigpt_assets.serve.engine import load_engine
    from minigpt_assets.training.pipeline import PipelineError

    if bool(args.checkpoint) == bool(args.experiment and args.mixture):
        print("serve: give a CHECKPOINT folder, or --experiment and --mixture (a trained run)", file=sys.stderr)
        return 1
    try:
        folder, name = resolve_model(settings, args.checkpoint, args.experiment, args.mixture, args.stage)
        engine, tokenizer = load_engine(folder, args.device or "cpu", args.max_batch)
    except (PipelineError, ValueError, OSError) as e:
        print(f"serve: {e}", file=sys.stderr)
        return 1
    name = args.name or name
    app = create_app(engine.start(), tokenizer, name, args.max_tokens_limit)
    print(f"serving {name} ({folder}) at http://{args.host}:{args.port}/  (OpenAI API: /v1, up to {args.max_batch} "
          "requests per batch)", flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    finally:
        engine.close()
    return 0


def add_parser(sub, common: argparse.ArgumentParser, settings_of) -> None:
    s = sub.add_parser("serve", parents=[common],
                       help="an OpenAI-compatible endpoint (/v1/chat/completions, /v1/completions) and a chat page")
    s.add_argument("checkpoint", nargs="?", help="a model folder with its tokenizer (or --experiment/--mixture)")
    s.add_argument("--experiment")
    s.add_argument("--mixture")
    s.add_argument("--stage", help="stage name (default: the experiment's last)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--device", help="cpu (default), cuda, cuda:1")
    s.add_argument("--name", help="the model id clients send (default: experiment/mixture/stage or the folder name)")
    s.add_argument("--max-batch", type=int, default=64, help="requests decoded together at most")
    s.add_argument("--max-tokens-limit", type=int, default=1024, help="largest max_tokens a request may ask for")
    s.add_argument("--log-level", default="warning", help="uvicorn's (warning: errors and start-up only)")
    s.set_defaults(func=lambda a: cmd_serve(a, settings_of(a)))
