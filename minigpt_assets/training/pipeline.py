"""One training stage of an experiment on a mixture, from recipes to a published checkpoint artifact.

Shared by `minigpt train` and the Dagster assets (which pass a Pipes launcher); no Dagster here. The stage
trains in a resumable run folder `runs/<experiment>/<mixture>/<stage>-<key>/`, where the key hashes everything
the result depends on (the model recipe, the stage's settings and position, the mixture artifact, the stage's
starting weights), so an interrupted run resumes, a changed recipe starts afresh, and re-running a finished
stage (say, after a later stage was added to the experiment) only publishes it again. The finished checkpoint, the tokenizer, the
loss curve and the metrics are then published as the stage's artifact, and the metrics go to the DuckDB table
`training_metrics`.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from minigpt_assets.recipes import Catalog
from minigpt_assets.settings import TrainingProfile, load_profile, quiet_openmp
from minigpt_assets.store import OBJECTIVE_METRICS, Artifact, ArtifactStore, StatsDB
from minigpt_assets.training.config import STAGE_SLOTS, StageConfig

STAGE_ASSETS = {"pretrain": "pretrained_model", "sft": "sft_model", "lora": "sft_model", "distill": "sft_model",
                "dpo": "aligned_model", "grpo": "aligned_model", "ppo": "aligned_model", "reward": "reward_model"}
assert set(STAGE_ASSETS) == set(STAGE_SLOTS)
MIXTURE_ASSET, TOKENIZER_ASSET = "mixture", "tokenizer"

DATA_KINDS = {"dpo": "preferences", "reward": "preferences", "grpo": "tasks", "ppo": "tasks"}  # others: chat
Launcher = Callable[[list[str], Path], int]  # (command, log file) -> exit code


class PipelineError(RuntimeError):
    """One line for the user: what is missing or wrong, and where."""


@dataclass
class StageOutcome:
    artifact: Artifact
    summary: dict
    run_dir: Path


def stage_partition(experiment: str, mixture: str) -> str:
    """The store partition of a training artifact (Dagster's multi-partition key is `experiment|mixture`)."""
    return f"{experiment}+{mixture}"


def find_stage(cat: Catalog, experiment: str, stage: str | None) -> tuple[int, StageConfig]:
    exp = cat.experiments[experiment]
    if stage is None:
        return 0, exp.stages[0]
    for i, s in enumerate(exp.stages):
        if s.stage_name == stage:
            return i, s
    raise PipelineError(f"experiment {experiment!r} has no stage {stage!r} "
                        f"(stages: {', '.join(s.stage_name for s in exp.stages)})")


def launch_command(profile: TrainingProfile, spec: Path, node_rank: int | None = None) -> list[str]:
    """The command that trains `spec` under a compute profile: one process, torchrun on this node, or the
    per-node torchrun of a multi-node job (`node_rank` pins the node; by default the rendezvous assigns it)."""
    entry = ["-m", "minigpt_assets.training.run", str(spec)]
    if profile.launcher == "process":
        return [sys.executable, *entry]
    run = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={profile.nproc_per_node}"]
    if profile.nnodes == 1:
        return [*profile.command_prefix, *run, "--standalone", *entry]
    if not profile.rdzv_endpoint:
        raise PipelineError("a multi-node compute profile needs training.rdzv_endpoint (host:port)")
    run += [f"--nnodes={profile.nnodes}", "--rdzv-backend=c10d",
            f"--rdzv-endpoint={os.path.expandvars(profile.rdzv_endpoint)}", f"--rdzv-id={profile.rdzv_id}"]
    if node_rank is not None:
        run.append(f"--node-rank={node_rank}")
    return [*profile.command_prefix, *run, *entry]


def subprocess_launcher(command: list[str], log: Path) -> int:
    """Run the stage in a child process (so a crash or a kill never takes the caller with it), echoing output."""
    with open(log, "a") as fh:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                env={**os.environ, **quiet_openmp()})
        assert proc.stdout is not None
        for line in proc.stdout:
            fh.write(line)
            if not line.startswith("RESULT "):
                print(line, end="", flush=True)
        return proc.wait()


def _tokenizer_vocab(folder: Path) -> int:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab_size()


def loss_curve_png(rows: list[dict], out: Path, title: str) -> None:
    from matplotlib.figure import Figure  # the object API: no pyplot state, so threads may plot at once

    train = [(r["step"], r["loss"]) for r in rows if r.get("loss") is not None and not r.get("skipped")]
    val = [(r["step"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
    fig = Figure(figsize=(6, 3.5), dpi=100)
    ax = fig.subplots()
    if train:
        ax.plot(*zip(*train), label="train", lw=1)
    if val:
        ax.plot(*zip(*val), "o-", label="validation", lw=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    handles = ax.get_legend_handles_labels()
    reward = [(r["step"], r["reward"]) for r in rows if r.get("reward") is not None]
    val_reward = [(r["step"], r["val_reward"]) for r in rows if r.get("val_reward") is not None]
    if reward or val_reward:  # grpo: the reward is the curve that matters
        ax2 = ax.twinx()
        if reward:
            ax2.plot(*zip(*reward), color="tab:green", lw=1, label="reward (sampled)")
        if val_reward:
            ax2.plot(*zip(*val_reward), "s-", color="tab:red", lw=1.5, label="held-out reward (greedy)")
        ax2.set_ylabel("reward")
        h2 = ax2.get_legend_handles_labels()
        handles = (handles[0] + h2[0], handles[1] + h2[1])
    if handles[0]:
        ax.legend(*handles, fontsize=8)
    fig.tight_layout()
    fig.savefig(out)


def metrics_rows(run_dir: Path, mixture: str, experiment: str) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []
    return [{"mixture": mixture, "experiment": experiment, "stage": r.get("stage"), "step": r["step"],
             "loss": r.get("loss"), "val_loss": r.get("val_loss"), "lr": r.get("lr"), "grad_norm": r.get("grad_norm"),
             "tokens": r.get("tokens"), "tokens_per_s": r.get("tokens_per_s"), "skipped": r.get("skipped"),
             **{k: r.get(k) for k in OBJECTIVE_METRICS}}
            for r in rows]


def train_stage(home: Path, cat: Catalog, mixture: str, experiment: str, stage: str | None = None,
                max_steps: int | None = None, checkpoint_every: int | None = None, resume: bool = True,
                device: str | None = None, launch: Launcher = subprocess_launcher,
                profile: TrainingProfile | None = None, wandb_group: str | None = None) -> StageOutcome:
    """Train one stage and publish its checkpoint artifact (see the module docstring). `wandb_group`: the W&B
    group (default `<experiment>/<mixture>`; a sweep's runs share `sweep/<name>`)."""
    if experiment not in cat.experiments:
        raise PipelineError(f"unknown experiment {experiment!r} (known: {', '.join(sorted(cat.experiments))})")
    if mixture not in cat.mixtures:
        raise PipelineError(f"unknown mixture {mixture!r} (known: {', '.join(sorted(cat.mixtures))})")
    exp = cat.experiments[experiment]
    index, st = find_stage(cat, experiment, stage)
    if checkpoint_every:
        st = st.model_copy(update={"checkpoint_every": checkpoint_every})
    store = ArtifactStore(home)
    mix_art = store.require(MIXTURE_ASSET, mixture)  # a sweep's points are mixtures too (their plans live here)
    tok_name = cat.mixtures[mixture].tokenizer
    tok_art = store.require(TOKENIZER_ASSET, tok_name)
    model_cfg = cat.models[exp.model]
    vocab = _tokenizer_vocab(tok_art.path)
    if vocab > model_cfg.vocab_size:
        raise PipelineError(f"recipes/models/{exp.model}.yaml: vocab_size: {model_cfg.vocab_size} is smaller than "
                            f"tokenizer {tok_name!r} ({vocab} tokens)")
    seq_len = cat.mixtures[mixture].seq_len
    if seq_len > model_cfg.max_seq_len:
        raise PipelineError(f"recipes/models/{exp.model}.yaml: max_seq_len: {model_cfg.max_seq_len} is shorter "
                            f"than mixture {mixture!r} windows ({seq_len})")
    init = None
    data: dict = {"kind": "mixture", "path": str(mix_art.path)}
    if index > 0:  # later stages start from the previous stage's published checkpoint
        prev = exp.stages[index - 1]
        init = store.require(STAGE_ASSETS[prev.kind], stage_partition(experiment, mixture))
    if st.chat is not None:
        chat_len = st.chat.seq_len or seq_len
        if chat_len > model_cfg.max_seq_len:
            raise PipelineError(f"recipes/experiments/{experiment}.yaml: stages.{index}.chat.seq_len: {chat_len} is "
                                f"longer than the model's max_seq_len ({model_cfg.max_seq_len})")
        new_tokens = st.ppo.max_new_tokens if st.kind == "ppo" else st.grpo.max_new_tokens
        data = {"kind": DATA_KINDS.get(st.kind, "chat"), "chat": st.chat.model_dump(mode="json"),
                "tokenizer": str(tok_art.path), "seq_len": chat_len, "max_prompt_len": max(8, chat_len - new_tokens),
                "answers": not (st.kind == "ppo" and st.ppo.reward_from is not None)}
    teacher = resolve_teacher(store, cat, st, mixture, experiment, index) if st.kind == "distill" else None
    reward = None
    if st.kind == "ppo" and st.ppo.reward_from is not None:
        reward = resolve_reward_model(store, cat, st, mixture, experiment, index)
        check_same_tokenizer(reward[0], tok_art.path, f"recipes/experiments/{experiment}.yaml: stages.{index}."
                                                      "ppo.reward_from")
    # what this stage's result depends on (not the later stages: adding an SFT stage keeps the pretraining run);
    # the starting point by its weights, so experiments that share a prefix of stages share its runs
    key = hashlib.sha256(json.dumps({"model": model_cfg.model_dump(mode="json", exclude={"description"}),
                                     "stage": st.model_dump(mode="json"), "index": index,
                                     "mixture": mix_art.version, "init": weights_sha(init) if init else None,
                                     **({"teacher": teacher[1]} if teacher else {}),
                                     **({"reward_model": reward[1]} if reward else {}),
                                     **({"data_file": d} if st.chat is not None and (d := st.chat.file_digest()) else {}),
                                     # the validation split hashes each row's prompt (it hashed the whole row before)
                                     **({"split": "prompt"} if st.chat is not None else {})},
                                    sort_keys=True).encode()).hexdigest()[:12]
    run_dir = Path(home) / "runs" / experiment / mixture / f"{st.stage_name}-{key}"
    done = finished_elsewhere(Path(home), mixture, f"{st.stage_name}-{key}", st.max_steps, run_dir)
    if done is not None and resume and max_steps is None:  # the same stage from the same weights: trained once
        print(f"{experiment}/{mixture}/{st.stage_name}: the same run finished as {done}; publishing it", flush=True)
        return publish_stage(store, done, mixture, experiment, st, tok_art.path,
                             {"mixture_version": mix_art.version} if data["kind"] == "mixture" else None)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:  # start over: nothing of an earlier run of the same key survives
        import shutil

        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    profile = profile or load_profile(exp.compute).training
    spec = {"model": model_cfg.model_dump(mode="json"), "stage": st.model_dump(mode="json"), "run_dir": str(run_dir),
            "data": data, "max_steps": max_steps, "init_weights": str(init.path) if init else None,
            "teacher": str(teacher[0]) if teacher else None, "reward_model": str(reward[0]) if reward else None,
            "device": device or profile.device, "resume": resume, "strategy": profile.strategy,
            "wandb": {**profile.wandb.model_dump(), "name": f"{experiment}/{mixture}/{st.stage_name}",
                      "group": wandb_group or f"{experiment}/{mixture}", "id": f"{experiment}-{mixture}-{st.stage_name}-{key}"}}
    spec_path = run_dir / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=2) + "\n")
    code = launch(launch_command(profile, spec_path), run_dir / "train.log")
    if code != 0:
        tail = (run_dir / "train.log").read_text().strip().splitlines()[-1:] if (run_dir / "train.log").is_file() else []
        raise PipelineError(f"training {experiment}/{mixture}/{st.stage_name} failed (exit {code})"
                            + (f": {tail[0]}" if tail else "") + f"; log: {run_dir / 'train.log'}")
    return publish_stage(store, run_dir, mixture, experiment, st, tok_art.path,
                         {"mixture_version": mix_art.version} if data["kind"] == "mixture" else None)


def weights_sha(art: Artifact) -> str:
    """sha256 of a published model's weights (its manifest has it): what a later stage starts from."""
    return next(f["sha256"] for f in art.manifest["files"] if f["path"] == "model.safetensors")


def finished_elsewhere(home: Path, mixture: str, name: str, max_steps: int, own: Path) -> Path | None:
    """A complete run of the same key (`<stage>-<key>`) under any experiment on this mixture: the same model,
    stage settings, position, data and starting weights, so the same result (another experiment with the same
    first stages). None when there is none, or when this experiment's own run exists (it resumes or republishes)."""
    from minigpt_assets.training.checkpoint import latest_checkpoint

    if own.is_dir():
        return None
    for cand in sorted((home / "runs").glob(f"*/{mixture}/{name}")):
        last = latest_checkpoint(cand / "checkpoints")
        if last is not None and json.loads((last / "trainer.json").read_text())["step"] >= max_steps:
            return cand
    return None


def other_stage(cat: Catalog, where: str, name: str, stage: str | None, kind: str | None = None,
                field: str = "experiment", stage_field: str = "stage") -> tuple[str, StageConfig]:
    """(experiment, stage) that a stage names in another experiment: `stage`, else the one of `kind`, else its
    last stage. `where`, `field` and `stage_field` name the recipe fields for the error line."""
    if name not in cat.experiments:
        raise PipelineError(f"{where}.{field}: unknown experiment {name!r}")
    stages = cat.experiments[name].stages
    if stage is not None:
        chosen = next((s for s in stages if s.stage_name == stage), None)
        if chosen is None:
            raise PipelineError(f"{where}.{stage_field}: experiment {name!r} has no stage {stage!r}")
    else:
        chosen = next((s for s in stages if s.kind == kind), None) if kind else stages[-1]
    if kind is not None and (chosen is None or chosen.kind != kind):
        raise PipelineError(f"{where}: experiment {name!r} has no {kind} stage"
                            + (f" ({stage!r} is {chosen.kind})" if chosen is not None else ""))
    return name, chosen


def teacher_stage(cat: Catalog, st: StageConfig, experiment: str, index: int) -> tuple[str, StageConfig]:
    """(experiment, stage) that a distill stage names as its teacher (its last stage unless `teacher_stage`)."""
    d = st.distill
    where = f"recipes/experiments/{experiment}.yaml: stages.{index}.distill"
    return other_stage(cat, where, d.teacher_experiment, d.teacher_stage, field="teacher_experiment",
                       stage_field="teacher_stage")


def reward_stage(cat: Catalog, st: StageConfig, experiment: str, index: int) -> tuple[str, StageConfig]:
    """(experiment, stage) of the reward model a ppo stage's `reward_from` names."""
    r = st.ppo.reward_from
    return other_stage(cat, f"recipes/experiments/{experiment}.yaml: stages.{index}.ppo.reward_from", r.experiment,
                       r.stage, kind="reward")


def _published(store: ArtifactStore, cat: Catalog, name: str, chosen: StageConfig, mixture: str, where: str,
               role: str) -> tuple[Path, str]:
    """(folder, version) of another experiment's published stage on this mixture, or one line on how to train it."""
    art = store.current(STAGE_ASSETS[chosen.kind], stage_partition(name, mixture))
    if art is None:
        raise PipelineError(f"{where}: the {role} {name}/{chosen.stage_name} on {mixture} is not trained yet "
                            f"(run `minigpt train --experiment {name} --mixture {mixture} --stage {chosen.stage_name}`)")
    return art.path, art.version


def _folder(path_text: str, where: str) -> tuple[Path, str]:
    """(path, version: a hash of its weights) of a model named by path."""
    path = Path(os.path.expandvars(path_text)).expanduser()
    if not path.exists():
        raise PipelineError(f"{where}: {path} does not exist")
    version = hashlib.sha256(b"".join(f.read_bytes() for f in sorted(path.glob("*.safetensors"))
                                      or ([path] if path.is_file() else []))).hexdigest()[:16]
    return path, version


def resolve_teacher(store: ArtifactStore, cat: Catalog, st: StageConfig, mixture: str, experiment: str,
                    index: int) -> tuple[Path, str]:
    """(folder, version) of a distill stage's teacher: a model folder, or another experiment's published
    stage on the same mixture (its last stage unless `teacher_stage` names one)."""
    where = f"recipes/experiments/{experiment}.yaml: stages.{index}.distill"
    if st.distill.teacher_path:
        return _folder(st.distill.teacher_path, f"{where}.teacher_path")
    name, chosen = teacher_stage(cat, st, experiment, index)
    return _published(store, cat, name, chosen, mixture, where, "teacher")


def resolve_reward_model(store: ArtifactStore, cat: Catalog, st: StageConfig, mixture: str, experiment: str,
                         index: int) -> tuple[Path, str]:
    """(folder, version) of a ppo stage's reward model: a folder, or another experiment's reward stage's
    published `reward_model` on this mixture. The folder must hold a score head."""
    where = f"recipes/experiments/{experiment}.yaml: stages.{index}.ppo.reward_from"
    r = st.ppo.reward_from
    if r.path:
        path, version = _folder(r.path, f"{where}.path")
    else:
        name, chosen = reward_stage(cat, st, experiment, index)
        path, version = _published(store, cat, name, chosen, mixture, where, "reward model")
    from safetensors import safe_open

    weights = path / "model.safetensors"
    if not weights.is_file():
        raise PipelineError(f"{where}: {path} has no model.safetensors")
    with safe_open(str(weights), "pt") as f:
        if "score.weight" not in f.keys():
            raise PipelineError(f"{where}: {path} is not a reward model (no score head; train one with kind: reward)")
    return path, version


def check_same_tokenizer(model_dir: Path, tokenizer_dir: Path, where: str) -> None:
    """A model scoring our token ids must have been trained on the same tokenizer (tokenizer.json, byte for byte)."""
    theirs, ours = Path(model_dir) / "tokenizer.json", Path(tokenizer_dir) / "tokenizer.json"
    if not theirs.is_file():
        raise PipelineError(f"{where}: {model_dir} has no tokenizer.json to check against the policy's tokenizer")
    if theirs.read_bytes() != ours.read_bytes():
        raise PipelineError(f"{where}: {model_dir} was trained with a different tokenizer than the policy's "
                            f"({tokenizer_dir}); a reward model must share the policy's tokenizer")


def publish_stage(store: ArtifactStore, run_dir: Path, mixture: str, experiment: str, st: StageConfig,
                  tokenizer_dir: Path, meta: dict | None = None) -> StageOutcome:
    import shutil

    from minigpt_assets.training.checkpoint import latest_checkpoint

    last = latest_checkpoint(run_dir / "checkpoints")
    if last is None:
        raise PipelineError(f"{run_dir}: the run left no checkpoint")
    rows = metrics_rows(run_dir, mixture, experiment)
    StatsDB(store.root).write("training_metrics", f"{experiment}+{mixture}+{st.stage_name}", rows)
    losses = [r["loss"] for r in rows if r["loss"] is not None and not r["skipped"]]
    vals = [r["val_loss"] for r in rows if r["val_loss"] is not None]
    rewards = [r["val_reward"] for r in rows if r["val_reward"] is not None]
    trainer = json.loads((last / "trainer.json").read_text())
    summary = {"steps": trainer["step"], "tokens": trainer["tokens"], "bad_steps": trainer["bad_steps"],
               "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
               "first_val_loss": vals[0] if vals else None, "final_val_loss": vals[-1] if vals else None,
               "max_steps": st.max_steps, "complete": trainer["step"] >= st.max_steps}
    if rewards:  # grpo, ppo: greedy reward on held-out tasks
        summary.update(first_val_reward=rewards[0], final_val_reward=rewards[-1])
    accuracy = [r["val_reward_accuracy"] for r in rows if r["val_reward_accuracy"] is not None]
    if accuracy:  # dpo, reward: held-out pair accuracy
        summary.update(first_val_reward_accuracy=accuracy[0], final_val_reward_accuracy=accuracy[-1])
    with store.stage(STAGE_ASSETS[st.kind], stage_partition(experiment, mixture)) as stg:
        shutil.copy2(last / "model_config.json", stg.path / "model_config.json")
        if st.kind == "ppo":  # the policy alone: the value head served the updates, and the model loads as an LM
            from safetensors import safe_open
            from safetensors.torch import save_file

            with safe_open(str(last / "model.safetensors"), "pt") as f:
                save_file({k: f.get_tensor(k) for k in f.keys() if k != "score.weight"},
                          str(stg.path / "model.safetensors"), metadata=f.metadata())
        else:
            shutil.copy2(last / "model.safetensors", stg.path / "model.safetensors")
        if (last / "adapter").is_dir():  # LoRA: the weights above are merged; the adapter alone, peft format
            shutil.copytree(last / "adapter", stg.path / "adapter")
        for f in tokenizer_dir.iterdir():
            if f.is_file() and f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
                shutil.copy2(f, stg.path / f.name)
        shutil.copy2(run_dir / "metrics.jsonl", stg.path / "metrics.jsonl")
        loss_curve_png(rows, stg.path / "loss_curve.png", f"{experiment} on {mixture}: {st.stage_name}")
        (stg.path / "training.json").write_text(json.dumps({**summary, "run_dir": str(run_dir)}, indent=2) + "\n")
        art = stg.publish(counts={"steps": summary["steps"], "tokens": summary["tokens"]},
                          meta={**summary, "run_dir": str(run_dir), "checkpoint": str(last), **(meta or {})})
    return StageOutcome(art, summary, run_dir)
