"""`minigpt bench model`: forward+backward tokens/s and peak memory of our modules next to transformers'
module of the same config, same dtype, same batch, in one run.

Every (model, implementation) pair runs in its own fresh subprocess so that peak memory is its own: peak CUDA
memory on a GPU, peak resident set size above the post-import baseline on CPU.
"""

from __future__ import annotations

import json
import platform
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from minigpt_assets.isolated import spawn, worker

CPU_MODELS = ["proxy-10m", "proxy-25m", "moe-proxy-80m"]
GPU_MODELS = ["minimind-3", "proxy-350m", "qwen2-0.5b", "llama-3.2-1b", "minimind-3-moe", "moe-proxy-80m"]


@dataclass
class Job:
    recipe: str
    impl: str  # hf | ours | ours+docmask (8 packed documents per row) | ours+ckpt (activation checkpointing)
    device: str
    dtype: str
    batch: int
    seq: int
    steps: int
    recipes_dir: str
    compile: bool = False


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_job(job: Job) -> dict:
    """One measurement (called inside the worker subprocess)."""
    import torch

    from minigpt_assets.models.interop import hf_config, to_hf_state_dict
    from minigpt_assets.models.registry import build_model
    from minigpt_assets.recipes import Catalog

    base_rss = _rss_mb()
    cat = Catalog.load_or_raise(job.recipes_dir, check_files=False)
    cfg = cat.models[job.recipe]
    updates = {"max_seq_len": max(cfg.max_seq_len, job.seq)}
    if job.impl == "ours+ckpt":
        updates["activation_checkpointing"] = True
    cfg = cfg.model_copy(update=updates)
    dtype = getattr(torch, job.dtype)
    dev = torch.device(job.device)
    torch.manual_seed(0)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    ours = build_model(cfg, device=dev)
    if job.impl == "hf":
        import transformers

        hcfg = hf_config(cfg)
        hcfg.pop("architectures")
        conf = transformers.AutoConfig.for_model(**hcfg)
        conf._attn_implementation = "sdpa"
        model = transformers.AutoModelForCausalLM.from_config(conf).to(dev)
        model.load_state_dict(to_hf_state_dict(cfg, ours.state_dict()), strict=False)
        del ours
        fwd = lambda ids, docs, pos: model(input_ids=ids, use_cache=False).logits  # noqa: E731
        params = sum(p.numel() for p in model.parameters())
    else:
        model = ours
        use_docs = job.impl == "ours+docmask"
        fwd = lambda ids, docs, pos: model(ids, position_ids=pos if use_docs else None,  # noqa: E731
                                           doc_ids=docs if use_docs else None)
        params = model.num_params()
    model = model.to(dtype).train()
    if job.compile:
        model = torch.compile(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # zero_grad/step cost without changing the weights
    g = torch.Generator(device="cpu").manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (job.batch, job.seq), generator=g).to(dev)
    # packed windows of ~8 documents each, for the doc-mask variants
    cuts = torch.sort(torch.randint(1, job.seq, (job.batch, 7), generator=g), dim=1).values
    docs = torch.zeros(job.batch, job.seq, dtype=torch.long)
    for b in range(job.batch):
        for c in cuts[b]:
            docs[b, int(c):] += 1
    pos = torch.arange(job.seq).expand(job.batch, -1) - torch.stack(
        [torch.searchsorted(docs[b], docs[b], right=False) for b in range(job.batch)])
    docs, pos = docs.to(dev), pos.to(dev)

    def step():
        logits = fwd(ids, docs, pos)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(2):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(job.steps):
        loss = step()
    sync()
    dt = (time.perf_counter() - t0) / job.steps
    mem = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else _rss_mb() - base_rss
    return {"model": job.recipe, "impl": job.impl + ("+compile" if job.compile else ""), "params_M": params / 1e6,
            "dtype": job.dtype, "batch": job.batch, "seq": job.seq, "step_ms": dt * 1e3,
            "tokens_per_s": job.batch * job.seq / dt, "peak_mem_MB": mem, "loss": float(loss)}


def _spawn(job: Job) -> dict:
    return spawn("minigpt_assets.models.bench", job.__dict__, {"model": job.recipe, "impl": job.impl})


def format_table(rows: list[dict]) -> str:
    head = ["model", "impl", "params", "dtype", "batch x seq", "step ms", "tokens/s", "peak MB", "vs hf"]
    hf = {r["model"]: r for r in rows if r.get("impl") == "hf" and "error" not in r}
    lines = []
    for r in rows:
        if "error" in r:
            lines.append([r["model"], r["impl"], "", "", "", "", "", "", r["error"][:90]])
            continue
        ref = hf.get(r["model"])
        ratio = f"{r['tokens_per_s'] / ref['tokens_per_s']:.2f}x" if ref and r["impl"] != "hf" else ""
        lines.append([r["model"], r["impl"], f"{r['params_M']:.1f}M", r["dtype"], f"{r['batch']}x{r['seq']}",
                      f"{r['step_ms']:.0f}", f"{r['tokens_per_s']:,.0f}", f"{r['peak_mem_MB']:,.0f}", ratio])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    fmt = lambda row: "  ".join(str(x).ljust(w) for x, w in zip(row, widths))  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in lines])


def run_model_bench(recipes_dir: Path, models: list[str] | None, device: str | None, dtype: str | None,
                    batch: int | None, seq: int | None, steps: int, impls: list[str] | None,
                    compile: bool = False, out: Path | None = None) -> int:
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.startswith("cuda")
    models = models or (GPU_MODELS if gpu else CPU_MODELS)
    dtype = dtype or ("bfloat16" if gpu else "float32")
    batch = batch or (8 if gpu else 4)
    seq = seq or (2048 if gpu else 256)
    impls = impls or ["hf", "ours", "ours+docmask", "ours+ckpt"]
    where = torch.cuda.get_device_name() if gpu else f"{platform.processor() or platform.machine()}, " \
                                                     f"{torch.get_num_threads()} threads"
    print(f"bench model: fwd+bwd+SGD step, {dtype}, batch {batch} x seq {seq}, {steps} timed steps after 2 "
          f"warm-up, on {where}; torch {torch.__version__}", flush=True)
    rows = []
    for name in models:
        for impl in impls:
            rows.append(_spawn(Job(name, impl, device, dtype, batch, seq, steps, str(recipes_dir), compile)))
            print(f"  {name:<16} {impl:<14} " + (f"{rows[-1]['tokens_per_s']:,.0f} tok/s" if "error" not in rows[-1]
                                                 else rows[-1]["error"][:100]), flush=True)
    print()
    print(format_table(rows))
    if out:
        out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(worker(lambda job: run_job(Job(**job)), sys.argv[1:],
                    lambda job: {"model": job["recipe"], "impl": job["impl"]}))
