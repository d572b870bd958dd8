"""`minigpt bench train --profile K`: where a variant's step goes. K more steps under `torch.profiler`; on a GPU the
kernels with the most time per step and the GPU's busy time by kind of kernel, next to the step's wall time."""

from __future__ import annotations

import time

from minigpt_assets.tables import format_table

#: kernel kinds of a GPU profile, by the first pattern in a kernel's name before its template arguments (lower
#: case); attention first, as attention kernels are often built on CUTLASS
KERNEL_KINDS = (("attention", ("flash", "fmha", "sdpa", "attention", "flex")),
                ("multi-tensor (optimizer, clipping)", ("adam", "multi_tensor_apply", "muon", "foreach")),
                ("matmul", ("gemm", "nvjet", "cutlass", "xmma", "cublas", "aten::mm", "aten::addmm", "aten::bmm")),
                ("compiled (triton)", ("triton",)))
NOT_KERNELS = {"Command Buffer Full"}  # a profiler marker for the host waiting on a full launch queue, not GPU work


def kernel_kind(name: str) -> str:
    low = name.split("<")[0].lower()
    return next((kind for kind, pats in KERNEL_KINDS if any(p in low for p in pats)), "other")


def profile_steps(steps: int, step, batches, gpu: bool, top: int = 15) -> dict:
    """`steps` more steps under torch.profiler. On a GPU: the kernels (device events only, so an operator and the
    kernels it launched are not counted twice) with the most time per step, their share of the GPU's busy time,
    and that busy time by kind (matmul, attention, optimizer, compiled elementwise, other) next to the step's wall
    time; on a CPU the operators with the most self time."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step(next(batches))
        if gpu:
            torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) / steps
    key = "self_device_time_total" if gpu else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, key) > 0 and e.key not in NOT_KERNELS]
    kernels = [e for e in events if e.device_type != DeviceType.CPU]
    events = kernels if gpu and kernels else events
    total = sum(getattr(e, key) for e in events) or 1.0
    events.sort(key=lambda e: getattr(e, key), reverse=True)
    kinds: dict[str, float] = {}
    for e in events:
        kind = kernel_kind(e.key)
        kinds[kind] = kinds.get(kind, 0.0) + getattr(e, key) / 1e3 / steps
    return {"wall_ms_per_step": wall * 1e3, "busy_ms_per_step": total / 1e3 / steps, "kinds": kinds,
            "top": [{"op": e.key, "ms_per_step": getattr(e, key) / 1e3 / steps, "calls_per_step": e.count / steps,
                     "share": getattr(e, key) / total} for e in events[:top]]}



def print_profile(r: dict, gpu: bool) -> None:
    """A bench row's profile: the step's wall and busy time by kind, then the top kernels (on CPU: operators)."""
    p = r["profile"]
    ranks = f" x{r['gpus']} {r['strategy']}" if r.get("strategy", "none") != "none" else ""
    print(f"\nprofile: {r['model']} {r['impl']}{ranks}"
          + f": {p['wall_ms_per_step']:.1f} ms a step, " + (f"the GPU busy {p['busy_ms_per_step']:.1f} ms: "
          if gpu else f"{p['busy_ms_per_step']:.1f} ms of CPU self time: ")
          + ", ".join(f"{k} {v:.1f}" for k, v in sorted(p["kinds"].items(), key=lambda kv: -kv[1])))
    print(format_table(["kernel" if gpu else "operator", "ms/step", "calls/step", "share"],
                       [(t["op"][:70], f"{t['ms_per_step']:.2f}", f"{t['calls_per_step']:.0f}",
                         f"{t['share']:.1%}") for t in p["top"]]))
