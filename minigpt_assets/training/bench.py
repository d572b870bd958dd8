"""`minigpt bench train`: our trainer next to transformers' model of the same config and weights, on the same
batches, in one run. It reports tokens/s, MFU, peak memory, the share of step time spent waiting for data and the
ratio to the strongest baseline in the table.

Variants (`--impls`), each in a fresh process:
- `hf`: `AutoModelForCausalLM` (SDPA) trained by a plain loop: bf16 autocast, fp32 cross-entropy on the logits,
  clipping and fused AdamW. The loss is read only at the end, like a loop that logs now and then.
- `hf+compile`: the same model under `torch.compile`.
- `ours`: `Trainer.train_step` with compile and the fused loss off: eager, the loss on full fp32 logits.
- `ours+fast`: the defaults on a GPU, i.e. each block compiled and the chunked linear + cross-entropy, plus
  `--precision`.
- `ours+fast+docs`: the same on packed documents (attention kept inside each document), to show what document
  masking costs.
- `ours+fast+muon`: `ours+fast` with Muon on the hidden matrices (`optim: {name: muon}`).
- `ours+fast+fp8`: `ours+fast` with `precision: fp8` (torchao float8 training), to set next to bf16 in one run.

With `--nproc N`, each of our variants also runs as N ranks under torchrun on this machine, once per parallel
strategy (`--strategies fsdp,ddp,zero2,zero3,hsdp`), with the same batch per rank as its one-process row (weak
scaling: N times the global batch). The table gives tokens/s per GPU and its ratio to one process. With
`--nproc 1 --strategies ...` each strategy runs as one rank under torchrun: what its wrapping costs on one GPU.

With `--to-loss X` (on a `--mixture`), each variant trains from step 0 until its validation loss (the mixture's
val split, every `eval_every` steps) reaches X, and the table gives the wall time to get there, compilation
(from a cold cache in every variant) included and evaluation excluded. The LR decays over `steps` (cosine to
0.1·lr) on both sides. `--to-loss auto` lets the first variant (the baseline) train every step and takes
its best validation loss as the target: the others are timed to the best loss the baseline reaches, as a speedrun is.

MFU = (6 N + 12 L d T) x tokens/s / peak. N counts every parameter except the input embedding (the output head
counts, tied or not); L, d and T are layers, width and sequence length. The peak is dense bf16 989 TFLOP/s on an
H100/H200. On a CPU no peak is known, so MFU is left out.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from minigpt_assets.isolated import spawn, worker
from minigpt_assets.training.bench_profile import print_profile, profile_steps

IMPLS = ("hf", "hf+compile", "ours", "ours+fast", "ours+fast+docs", "ours+fast+muon", "ours+fast+fp8")
GPU_IMPLS = ["hf", "hf+compile", "ours", "ours+fast", "ours+fast+docs"]  # the default variants on a GPU
_LLAMA = {"family": "llama", "tie_embeddings": False, "max_seq_len": 2048, "bos_token_id": 1, "eos_token_id": 2}
#: the default shapes: (model config, batch) at sequence length 2048 (`tiny`: a CPU shape for the tests)
SHAPES: dict[str, tuple[dict, int]] = {
    "d768-l12": ({**_LLAMA, "vocab_size": 32000, "hidden_size": 768, "num_layers": 12, "num_heads": 12,
                  "num_kv_heads": 4, "intermediate_size": 2048}, 16),
    "d1024-l24": ({**_LLAMA, "vocab_size": 32000, "hidden_size": 1024, "num_layers": 24, "num_heads": 16,
                   "num_kv_heads": 4, "intermediate_size": 2816}, 8),
    "llama-1b-untied": ({**_LLAMA, "vocab_size": 128256, "hidden_size": 2048, "num_layers": 16, "num_heads": 32,
                         "num_kv_heads": 8, "intermediate_size": 8192, "rope_theta": 500000.0}, 4),
    "tiny": ({**_LLAMA, "vocab_size": 512, "hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
              "intermediate_size": 128, "max_seq_len": 256}, 4),
}
GPU_SHAPES = ["d768-l12", "d1024-l24", "llama-1b-untied"]
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12}  # dense bf16, by device name


@dataclass
class TrainJob:
    name: str
    model: dict
    impl: str
    device: str
    batch: int
    seq: int
    steps: int
    warmup: int
    precision: str = "default"
    doc_len: int = 512  # mean document length of the random token stream (for +docs)
    mixture: str | None = None  # a materialized mixture's folder: real tokens instead of random ones (cut into
    # windows of `seq` when the mixture's differ)
    to_loss: float | None = None  # train until the validation loss reaches this (at most `steps` steps)
    eval_every: int = 25
    eval_batches: int = 8
    seed: int = 0
    lr: float = 3e-4  # both sides' peak LR (an `optim: {lr}` in `extra` overrides it on ours)
    extra: dict = field(default_factory=dict)
    profile: int = 0  # steps after the timed ones to run under torch.profiler (the top kernels, time by kind)
    nproc: int = 1  # ranks under torchrun (`batch` is per rank)
    strategy: str = "none"  # how those ranks split the model: ddp | fsdp | hsdp | zero2 | zero3


def flops_per_token(cfg, seq: int) -> float:
    """6 N + 12 L d T, N without the input embedding (the head counts even when tied)."""
    from minigpt_assets.models import build_model

    import torch

    with torch.device("meta"):
        n = build_model(cfg, device="meta").num_params()
    n_head = cfg.vocab_size * cfg.hidden_size
    n_no_embed = n - n_head + (n_head if cfg.tie_embeddings else 0)
    return 6 * n_no_embed + 12 * cfg.num_layers * cfg.hidden_size * seq


def token_stream(vocab: int, n: int, doc_len: int, eos: int, seed: int):
    """Random tokens with an end-of-document token after documents of random length (mean `doc_len`)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    toks = rng.integers(3, vocab, size=n, dtype=np.int64)
    ends = np.cumsum(rng.integers(doc_len // 2, doc_len * 3 // 2 + 1, size=n // max(1, doc_len // 2) + 1))
    toks[ends[ends < n]] = eos
    return toks.astype(np.uint32)


def _stage(job: TrainJob):
    from minigpt_assets.training.config import StageConfig

    fast = job.impl.startswith("ours+fast")
    # a time to loss decays the LR over its steps (cosine to 0.1), as a real run would; the throughput rows keep
    # it constant
    timed = job.to_loss is not None
    extra = dict(job.extra) if job.impl.startswith("ours") else {}
    optim = {"lr": job.lr, "warmup_steps": 0, "schedule": "cosine" if timed else "constant", "min_lr_ratio": 0.1,
             "name": "adamw", **extra.pop("optim", {})}
    if job.impl.endswith("+muon"):  # the variant's name says what it runs, whatever the options name
        optim["name"] = "muon"
    return StageConfig.model_validate({
        "kind": "pretrain", "batch_size": job.batch * job.nproc,
        "max_steps": job.steps if timed else job.warmup + job.steps + job.profile,
        "compile": fast and job.device.startswith("cuda"), "fused_loss": fast, "document_masking": job.impl.endswith("+docs"),
        "precision": "fp8" if job.impl.endswith("+fp8") else job.precision if fast else "default", "log_every": job.warmup + job.steps,
        "checkpoint_every": 10**9, "eval_batches": job.eval_batches,
        "optim": optim, "seed": job.seed, **extra})


def run_job(d: dict) -> dict:
    """One variant, inside its worker process (each rank's, under torchrun)."""
    import torch

    from minigpt_assets.models import make_config

    job = TrainJob(**d)
    cfg = make_config({**job.model, "max_seq_len": max(job.model.get("max_seq_len", 0), job.seq)})
    rank, world = 0, 1
    if job.strategy != "none":  # under torchrun, even as one rank
        from minigpt_assets.training.run import join_distributed

        rank, world, job.device = join_distributed({"device": job.device, "strategy": job.strategy})
        if world != job.nproc:
            raise RuntimeError(f"expected {job.nproc} ranks, torchrun started {world}")
    try:
        return _run_job(job, cfg, rank, world)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _run_job(job: TrainJob, cfg, rank: int, world: int) -> dict:
    import numpy as np
    import torch

    from minigpt_assets.data.loader import ArrayTokens, PackedLoader, Prefetcher
    from minigpt_assets.training.trainer import Trainer

    dev = torch.device(job.device)
    gpu = dev.type == "cuda"
    batch_all = job.batch * world  # the global batch: `job.batch` rows on each rank
    if job.mixture:
        from minigpt_assets.data.loader import open_mixture

        data = open_mixture(Path(job.mixture), "train")
        if data.window - 1 != job.seq:  # the same real tokens, cut into windows of --seq
            need = (job.warmup + job.steps + job.profile + 2) * batch_all * (job.seq + 1)
            stream, i = [], 0
            while sum(map(len, stream)) < need and i < len(data):
                stream.append(data.window_tokens(i)[0])
                i += 1
            data = ArrayTokens(np.concatenate(stream)[:need], job.seq, cfg.eos_token_id or 0)
    else:
        n_tokens = (job.warmup + job.steps + job.profile + 2) * batch_all * (job.seq + 1)
        data = ArrayTokens(token_stream(cfg.vocab_size, n_tokens, job.doc_len, cfg.eos_token_id or 0, job.seed),
                           job.seq, cfg.eos_token_id or 0)
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    stage = _stage(job)
    with tempfile.TemporaryDirectory() as tmp:
        if job.to_loss is not None:  # compilation counts in a time to loss: every variant compiles from cold, none
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = f"{tmp}/inductor"  # reuses the kernels of the one before it
            os.environ.pop("TRITON_CACHE_DIR", None)
        trainer = Trainer(cfg, stage, data, Path(tmp), device=job.device, rank=rank, world_size=world,
                          strategy=job.strategy)
        params = trainer.model.num_params()  # before the hf side moves ours to "meta" (which unties a tied head)
        if job.impl.startswith("hf"):
            step, evaluate = _hf_loop(trainer, job)  # fed like ours: prefetched, pinned on a GPU
            batches = Prefetcher(PackedLoader(data, job.batch, seed=stage.seed), pin=gpu)
        else:
            step, batches, evaluate = trainer.train_step, trainer.batches(), trainer.evaluate
        if job.to_loss is not None:  # the mixture's val split (the tests: another random stream)
            from minigpt_assets.data.loader import open_mixture

            eos = cfg.eos_token_id or 0
            trainer.val = (open_mixture(Path(job.mixture), "val") if job.mixture else ArrayTokens(
                token_stream(cfg.vocab_size, job.eval_batches * job.batch * (job.seq + 1) + 1, job.doc_len, eos,
                             job.seed + 1), job.seq, eos))
            try:
                return _time_to_loss(job, stage.optim.lr, step, batches, evaluate, gpu)
            finally:
                batches.close()
        waits, losses = [], []

        for i in range(job.warmup + job.steps):
            if i == job.warmup:
                _sync(gpu)
                t_start = time.perf_counter()
                waits = []
            t0 = time.perf_counter()
            batch = next(batches)
            waits.append(time.perf_counter() - t0)
            losses.append(step(batch)["loss"])
        _sync(gpu)
        elapsed = time.perf_counter() - t_start
        top = profile_steps(job.profile, step, batches, gpu) if job.profile else None
        batches.close()
    losses = [float(x) for x in losses]
    tps = job.steps * job.batch * job.seq / elapsed  # per rank (each rank trains `job.batch` rows a step)
    name = torch.cuda.get_device_name(dev) if gpu else "cpu"
    peak = next((v for k, v in PEAK_FLOPS.items() if k in name), None)
    mfu = flops_per_token(cfg, job.seq) * tps / peak if peak else None
    return {"model": job.name, "impl": job.impl + ("+fp8" if job.precision == "fp8" and "fast" in job.impl
                                                             and not job.impl.endswith("+fp8") else ""),
            "params_M": params / 1e6, "batch": job.batch, "seq": job.seq, "step_ms": elapsed / job.steps * 1e3,
            "tokens_per_s": tps, "mfu": mfu, "peak_mem_GB": (torch.cuda.max_memory_allocated(dev) / 2**30) if gpu
            else None, "data_wait": float(np.sum(waits)) / elapsed, "first_loss": losses[0], "last_loss": losses[-1],
            "tail_loss": float(np.mean(losses[-10:])),
            # the rows a forward+backward takes at once (micro_batch_size auto may have halved the batch)
            "micro_batch": trainer.micro if job.impl.startswith("ours") else job.batch,
            "device": name, "gpus": world, "strategy": job.strategy, **({"profile": top} if top else {})}


def _sync(gpu: bool) -> None:
    """Wait for the GPU's queued work, so the clock measures it."""
    if gpu:
        import torch

        torch.cuda.synchronize()


def _time_to_loss(job: TrainJob, lr: float, step, batches, evaluate, gpu: bool) -> dict:
    """Steps from 0 until the validation loss reaches `job.to_loss` (at peak LR `lr`): wall seconds of training
    (compilation included, evaluation excluded), steps and tokens."""

    trained, val, curve = 0.0, None, []
    for i in range(1, job.steps + 1):
        t0 = time.perf_counter()
        step(next(batches))
        if i % job.eval_every and i != job.steps:
            trained += time.perf_counter() - t0
            continue
        _sync(gpu)
        trained += time.perf_counter() - t0
        val = evaluate()
        curve.append((i, round(trained, 2), val))
        if val <= job.to_loss:
            break
    reached = val is not None and val <= job.to_loss
    return {"model": job.name, "impl": job.impl, "batch": job.batch, "seq": job.seq, "to_loss": job.to_loss,
            "lr": lr, "reached": reached, "seconds": trained if reached else None, "steps": i,
            "tokens": i * job.batch * job.seq,
            "val_loss": val, "curve": curve}


def _baseline_target(r: dict) -> float:
    """`--to-loss auto`: the baseline's row becomes the time to its own best validation loss (its first
    evaluation at that loss), and that loss is the target of the variants after it."""
    finite = [c for c in r["curve"] if math.isfinite(c[2])]
    if not finite:
        raise ValueError("the baseline's validation loss was never finite")
    step, seconds, best = min(finite, key=lambda c: (c[2], c[0]))
    r.update(to_loss=best, reached=True, seconds=seconds, steps=step, tokens=step * r["batch"] * r["seq"],
             val_loss=best)
    return best


def _hf_loop(trainer, job: TrainJob):
    """transformers' model with our model's initial weights, and a plain training step for it."""
    import torch
    import torch.nn.functional as F
    import transformers

    from minigpt_assets.models.interop import hf_config, to_hf_state_dict
    from minigpt_assets.training.optimizers import param_groups
    from minigpt_assets.training.trainer import lr_multiplier

    cfg = trainer.model_cfg
    hcfg = hf_config(cfg)
    hcfg.pop("architectures")
    conf = transformers.AutoConfig.for_model(**hcfg)
    conf._attn_implementation = "sdpa"
    model = transformers.AutoModelForCausalLM.from_config(conf).to(trainer.device)
    model.load_state_dict(to_hf_state_dict(cfg, trainer.model.state_dict()), strict=False)
    trainer.model.to("meta")  # ours is not used: free its memory (the reported parameters stay its count)
    trainer.optimizer = None
    o = trainer.stage.optim
    opt = torch.optim.AdamW(param_groups(list(model.parameters()), o.weight_decay), lr=o.lr, betas=o.betas, eps=o.eps,
                            fused=trainer.device.type == "cuda")
    # the stage's LR schedule, as a transformers user's loop would step one (get_cosine_schedule_with_warmup)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_multiplier(s, trainer.stage.max_steps, o))
    run = torch.compile(model) if job.impl == "hf+compile" else model
    dtype = torch.bfloat16 if trainer.device.type == "cuda" else torch.float32
    clip = o.grad_clip

    def step(batch: dict) -> dict:
        ids, labels = trainer.to_device(batch["input_ids"]), trainer.to_device(batch["labels"])
        with torch.autocast(trainer.device.type, dtype=dtype, enabled=dtype != torch.float32):
            logits = run(input_ids=ids, use_cache=False).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip if clip else float("inf"))
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        return {"loss": loss.detach()}

    @torch.no_grad()
    def evaluate() -> float:
        """Mean loss over the same validation windows the trainer's evaluate reads."""
        from minigpt_assets.data.loader import make_batch

        model.eval()
        n = min(len(trainer.val), trainer.stage.eval_batches * job.batch)
        losses = []
        for lo in range(0, n, job.batch):
            b = make_batch(trainer.val, list(range(lo, min(n, lo + job.batch))))
            ids = torch.from_numpy(b["input_ids"]).to(trainer.device)
            labels = torch.from_numpy(b["labels"]).to(trainer.device)
            with torch.autocast(trainer.device.type, dtype=dtype, enabled=dtype != torch.float32):
                logits = run(input_ids=ids, use_cache=False).logits
            losses.append(float(F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)))
        model.train()
        return sum(losses) / len(losses)

    return step, evaluate


def run_train_bench(models: list[str] | None, recipes: dict, device: str | None, steps: int, warmup: int,
                    batch: int | None, seq: int | None, impls: list[str] | None, precision: str = "default",
                    out: Path | None = None, mixture: tuple[str, Path, int] | None = None,
                    to_loss: float | str | None = None, eval_every: int = 25, extra: dict | None = None,
                    nproc: int = 1, strategies: list[str] | None = None, profile: int = 0,
                    lr: float = 3e-4) -> list[dict]:
    """Run every (shape, variant) and print the table. `recipes`: model recipe name -> config dict, for names
    that are not built-in shapes; `mixture`: (name, folder, seq_len) of real tokens to train on; `to_loss`:
    time each variant to this validation loss instead (at most `steps` steps; "auto": to the first variant's best
    after all `steps`); `nproc` > 1 or `strategies`: each variant also as `nproc` ranks under torchrun, once per
    strategy (with `nproc` 1: one rank, what the strategy's wrapping costs)."""
    import json
    import platform

    import torch

    from minigpt_assets.tables import format_table

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.startswith("cuda")
    names = models or (GPU_SHAPES if gpu else ["tiny"])
    if to_loss is not None:
        impls = impls or ["hf+compile" if gpu else "hf", "ours+fast", "ours+fast+muon"]
    ranks = nproc > 1 or bool(strategies)  # our variants also under torchrun, once per strategy
    impls = impls or (["ours+fast"] if ranks else GPU_IMPLS if gpu else ["hf", "ours", "ours+fast"])
    runs = [(1, "none")] + [(nproc, s) for s in (strategies or ["fsdp", "ddp"])] if ranks else [(1, "none")]
    where = torch.cuda.get_device_name() if gpu else f"{platform.machine()}, {torch.get_num_threads()} threads"
    data = f"mixture {mixture[0]}" if mixture else "random tokens"
    what = (f"time to validation loss {to_loss} (at most {steps} steps, eval every {eval_every})" if to_loss
            is not None else f"{steps} timed steps after {warmup} warm-up")
    lr_note = f"lr {lr:g}" + (" (ours: the options' optim lr where set)" if (extra or {}).get("optim", {}).get("lr")
                               else "")
    print(f"bench train: {what}, {data}, {lr_note}, {'bf16 autocast' if gpu else 'fp32'}"
          f"{', precision ' + precision if precision != 'default' else ''}, on {where}; torch {torch.__version__}",
          flush=True)
    rows = []
    for name in names:
        model, default_batch = SHAPES[name] if name in SHAPES else (recipes[name], 4)
        s = seq or (mixture[2] if mixture else 2048 if gpu else 64)
        target = float("-inf") if to_loss == "auto" else to_loss  # auto: the first variant runs every step
        for impl in impls:
            for n, strategy in runs:
                job = TrainJob(name, model, impl, device, batch or default_batch, s, steps, warmup, precision,
                               mixture=str(mixture[1]) if mixture else None, to_loss=target, eval_every=eval_every,
                               lr=lr, extra=extra or {}, nproc=n, strategy=strategy, profile=profile)
                ident = {"model": name, "impl": impl, "gpus": n, "strategy": strategy}
                # ranks that wait on each other in a collective must not hang the bench: an hour each at most
                rows.append(spawn("minigpt_assets.training.bench", asdict(job), ident, nproc=n,
                                  torchrun=strategy != "none", timeout=3600 if strategy != "none" else None))
                r = rows[-1]
                if to_loss == "auto" and target == float("-inf") and "curve" in r:
                    try:
                        target = _baseline_target(r)
                    except ValueError as e:  # a diverged baseline: its row is an error, the next one leads
                        rows[-1] = r = {**ident, "error": str(e)}
                done = ("error" if "error" in r else f"{r['tokens_per_s']:,.0f} tok/s" + ("/GPU" if n > 1 else "")
                        if "tokens_per_s" in r
                        else f"val {r['val_loss']:.3f} after {r['steps']} steps")
                label = impl if strategy == "none" else f"{impl} x{n} {strategy}"
                print(f"  {name:<16} {label:<24} " + (r["error"][:120] if "error" in r else done), flush=True)
    print()
    print(format_table(*(to_loss_table(rows) if to_loss is not None else scaling_table(rows) if ranks
                         else table(rows))))
    for r in rows:
        if r.get("profile"):
            print_profile(r, gpu)
    if out:
        out.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def table(rows: list[dict]) -> tuple[list[str], list[tuple]]:
    """Columns and rows; the ratio is to the strongest transformers variant of the same shape."""
    best: dict[str, float] = {}
    for r in rows:
        if r.get("impl", "").startswith("hf") and "error" not in r:
            best[r["model"]] = max(best.get(r["model"], 0.0), r["tokens_per_s"])
    cols = ["model", "impl", "params", "batch x seq", "step ms", "tokens/s", "MFU", "peak GB", "data wait",
            "vs best hf", "loss first/last/mean of last 10"]
    out = []
    for r in rows:
        if "error" in r:
            out.append((r["model"], r["impl"], "", "", "", "", "", "", "", "", r["error"][:90]))
            continue
        ref = best.get(r["model"])
        out.append((r["model"], r["impl"], f"{r['params_M']:.1f}M", f"{r['batch']}x{r['seq']}", *_speed(r),
                    f"{r['data_wait']:.2%}", f"{r['tokens_per_s'] / ref:.2f}x" if ref else "",
                    f"{r['first_loss']:.3f}/{r['last_loss']:.3f}/{r['tail_loss']:.3f}"))
    return cols, out


def _speed(r: dict) -> tuple[str, str, str, str]:
    """A row's step ms, tokens/s, MFU and peak memory, as both tables show them."""
    return (f"{r['step_ms']:.1f}", f"{r['tokens_per_s']:,.0f}", f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a",
            f"{r['peak_mem_GB']:.1f}" if r["peak_mem_GB"] is not None else "n/a")


def scaling_table(rows: list[dict]) -> tuple[list[str], list[tuple]]:
    """`--nproc` / `--strategies`: tokens/s per GPU and its ratio to the same variant in one plain process."""
    one = {(r["model"], r["impl"]): r["tokens_per_s"] for r in rows
           if r.get("strategy") == "none" and "error" not in r}
    cols = ["model", "impl", "GPUs", "strategy", "batch/GPU x seq", "step ms", "tokens/s/GPU", "MFU", "peak GB",
            "vs one process", "loss first/last"]
    out = []
    for r in rows:
        if "error" in r:
            out.append((r["model"], r["impl"], r.get("gpus", ""), r.get("strategy", ""), "", "", "", "", "", "",
                        r["error"][:90]))
            continue
        ref = one.get((r["model"], r["impl"]))
        out.append((r["model"], r["impl"], r["gpus"], r["strategy"], f"{r['batch']}x{r['seq']}", *_speed(r),
                    f"{r['tokens_per_s'] / ref:.2f}x" if ref else "", f"{r['first_loss']:.3f}/{r['last_loss']:.3f}"))
    return cols, out


def to_loss_table(rows: list[dict]) -> tuple[list[str], list[tuple]]:
    """Seconds to the target loss; the ratio is how many times sooner than the fastest transformers variant."""
    best = {}
    for r in rows:
        if r.get("impl", "").startswith("hf") and r.get("reached"):
            best[r["model"]] = min(best.get(r["model"], float("inf")), r["seconds"])
    cols = ["model", "impl", "lr", "target", "reached", "seconds", "steps", "tokens", "val loss", "sooner than best hf"]
    out = []
    for r in rows:
        if "error" in r:
            out.append((r["model"], r["impl"], "", "", "", "", "", "", "", r["error"][:90]))
            continue
        ref = best.get(r["model"])
        out.append((r["model"], r["impl"], f"{r['lr']:g}", f"{r['to_loss']:.4f}", "yes" if r["reached"] else "no",
                    f"{r['seconds']:.1f}" if r["reached"] else "", r["steps"], f"{r['tokens']:,}",
                    f"{r['val_loss']:.4f}", f"{ref / r['seconds']:.2f}x" if ref and r["reached"] else ""))
    return cols, out


if __name__ == "__main__":
    sys.exit(worker(run_job, sys.argv[1:], lambda job: {"model": job["name"], "impl": job["impl"],
                                                         "gpus": job["nproc"], "strategy": job["strategy"]}))
