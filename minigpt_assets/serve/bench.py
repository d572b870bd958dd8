"""`minigpt bench generate` and `minigpt bench serve`.

generate: new tokens per second of one model recipe (random weights: speed does not depend on them), the same
prompts and lengths on each side, every row producing exactly `new_tokens` tokens (no end token): transformers'
`generate` on the exported folder, our KV-cache `generate`, and the serving engine with the batch's rows as
concurrent requests.

serve: N concurrent streaming requests to `minigpt serve` on loopback (the app in this process, uvicorn on a
free port), each generating exactly `max_tokens` tokens (`ignore_eos`), with continuous batching and, side by
side, with one request decoded at a time (a server without batching): completed requests, latency to the last token (p50, p99), time to the first token, tokens per second.
"""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

GENERATE_COLUMNS = ("impl", "batch", "prompt", "new_tokens", "seconds", "tokens_per_s", "vs_hf")
SERVE_COLUMNS = ("server", "requests", "completed", "p50_s", "p99_s", "p50_first_token_s", "tokens", "tokens_per_s",
                 "wall_s")


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")


# ------------------------------------------------------------------------------------------------ generate
def run_generate_bench(model_cfg, device: str, dtype: torch.dtype, batches: list[int], prompt: int,
                       new_tokens: int, repeats: int = 2) -> list[dict]:
    from transformers import AutoModelForCausalLM

    from minigpt_assets.models import build_model
    from minigpt_assets.models.interop import export_hf
    from minigpt_assets.models.transformer import generate
    from minigpt_assets.serve.engine import Engine, Params, Request

    torch.manual_seed(0)
    ours = build_model(model_cfg, device="cpu").eval()
    with tempfile.TemporaryDirectory() as tmp:
        export_hf(ours, Path(tmp) / "hf")
        hf = AutoModelForCausalLM.from_pretrained(Path(tmp) / "hf", dtype=dtype).to(device).eval()
    ours = ours.to(device=device, dtype=dtype)
    vocab = model_cfg.vocab_size
    rows = []

    def timed(fn) -> float:
        fn()  # warm-up (allocations, kernels)
        best = float("inf")
        for _ in range(repeats):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        return best

    for b in batches:
        ids = torch.randint(1, vocab, (b, prompt), generator=torch.Generator().manual_seed(b)).to(device)

        def run_hf():
            with torch.no_grad():
                out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                  min_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
            assert out.shape[1] == prompt + new_tokens

        def run_ours():
            out = generate(ours, ids, new_tokens, 0.0, eos_token_id=None)
            assert out.shape[1] == prompt + new_tokens

        class _Nothing:
            def decode(self, _ids):
                return ""

        engine = Engine(ours, _Nothing(), set(), max_batch=b, device=device).start()

        def run_engine():
            done = threading.Semaphore(0)
            engine.submit_all([Request(row, Params(max_tokens=new_tokens, temperature=0.0),
                                       lambda k, _p: done.release() if k in ("done", "error") else None)
                               for row in ids.tolist()])  # the batch's rows arrive together
            for _ in range(b):
                done.acquire()

        times = {"hf": timed(run_hf), "ours": timed(run_ours), "ours-engine": timed(run_engine)}
        engine.close()
        for impl, s in times.items():
            rows.append({"impl": impl, "batch": b, "prompt": prompt, "new_tokens": new_tokens, "seconds": round(s, 3),
                         "tokens_per_s": round(b * new_tokens / s, 1), "vs_hf": round(times["hf"] / s, 2)})
    return rows


# ------------------------------------------------------------------------------------------------ serve
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _load(url: str, model: str, n: int, max_tokens: int, timeout: float) -> list[dict]:
    import httpx

    async def one(client, i):
        body = {"model": model, "stream": True, "max_tokens": max_tokens, "temperature": 1.0, "seed": i,
                "ignore_eos": True,
                "messages": [{"role": "user", "content": f"Tell me about the number {i}."}]}
        t0 = time.perf_counter()
        first, tokens, ok = None, 0, False
        try:
            async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line[6:]
                    if data == "[DONE]":
                        ok = True
                        break
                    j = json.loads(data)
                    if j.get("usage"):
                        tokens = j["usage"]["completion_tokens"]
                    if first is None and any(c.get("delta", {}).get("content") for c in j.get("choices", [])):
                        first = time.perf_counter() - t0
        except Exception:  # noqa: BLE001 - counted as not completed
            ok = False
        return {"ok": ok, "latency": time.perf_counter() - t0, "first": first, "tokens": tokens}

    limits = httpx.Limits(max_connections=n + 4)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        return await asyncio.gather(*(one(client, i) for i in range(n)))


def run_serve_bench(model_dir: Path, name: str, concurrency: int, max_tokens: int, device: str,
                    timeout: float = 600) -> list[dict]:
    import uvicorn

    from minigpt_assets.serve.api import create_app
    from minigpt_assets.serve.engine import load_engine

    rows = []
    for label, batch in ((f"batched ({concurrency})", concurrency), ("one at a time", 1)):
        engine, tok = load_engine(model_dir, device, batch)
        app = create_app(engine.start(), tok, name, max_tokens_limit=max(max_tokens, 1))
        port = _free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        t0 = time.perf_counter()
        out = asyncio.run(_load(f"http://127.0.0.1:{port}", name, concurrency, max_tokens, timeout))
        wall = time.perf_counter() - t0
        server.should_exit = True
        thread.join(timeout=30)
        engine.close()
        done = [o for o in out if o["ok"]]
        lat = [o["latency"] for o in done]
        firsts = [o["first"] for o in done if o["first"] is not None]
        tokens = sum(o["tokens"] for o in done)
        rows.append({"server": label, "requests": concurrency, "completed": len(done),
                     "p50_s": round(statistics.median(lat), 3) if lat else None,
                     "p99_s": round(_quantile(lat, 0.99), 3) if lat else None,
                     "p50_first_token_s": round(statistics.median(firsts), 3) if firsts else None,
                     "tokens": tokens, "tokens_per_s": round(tokens / wall, 1), "wall_s": round(wall, 2)})
    return rows
