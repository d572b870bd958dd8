"""`minigpt bench eval`: scoring log-likelihood benchmarks, ours next to lm-evaluation-harness (the scorer a user
would otherwise run) on the same model and the same rows, in one run.

For each model recipe: a randomly initialized model (seed 0) with a BPE tokenizer trained on the stdlib's
English sentences, saved in our format and exported to HF. Task rows in the Hub formats of hellaswag, arc_easy,
mmlu and lambada_openai are made from the same sentences (so lengths are those of real prose). Ours is
`tasks.evaluate_task` on our module, as `minigpt evaluate` runs it; lm-eval is `simple_evaluate` with its own
task configs on its `HFLM` over the export (`lm_eval_ref`). Both get the same device, dtype and batch size,
and a warm-up on 4 examples first. Timings cover building requests, tokenizing, the forward passes and the
metrics; model loading is a separate column. Agreement: the largest difference between the two per-request
log-likelihoods, and the fraction of examples whose acc / acc_norm decisions are equal. `tokens_per_s` counts
the tokens of every request (context and continuation, as if each ran on its own) per second.
"""

from __future__ import annotations

import gc
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Callable

TASKS = ("hellaswag", "arc_easy", "mmlu", "lambada_openai")
CPU_MODELS = ("proxy-10m",)
GPU_MODELS = ("proxy-125m", "qwen2-0.5b", "llama-3.2-1b")
MMLU_SUBJECT = "high_school_biology"


def make_rows(task: str, n: int, seed: int = 0) -> list[dict]:
    """`n` rows of lm-eval task `task` in its Hub format, made of real English sentences."""
    from minigpt_assets.data.builtin_corpora import english_sentences

    sents = english_sentences()
    r = random.Random(seed)

    def sent() -> str:
        return r.choice(sents)

    def phrase(lo: int, hi: int) -> str:
        words = sent().rstrip(".!?").split()
        k = r.randint(lo, min(hi, len(words)))
        start = r.randrange(len(words) - k + 1)
        return " ".join(words[start:start + k])

    rows = []
    for i in range(n):
        if task == "hellaswag":
            nxt = sent().split()
            rows.append({"ind": i, "activity_label": " ".join(sent().split()[:2]).strip(",.;:"),
                         "ctx_a": sent() + " " + sent(), "ctx_b": " ".join(nxt[:4]).lower(), "ctx": "",
                         "endings": [sent() for _ in range(4)], "source_id": f"bench{i}", "split": "val",
                         "split_type": "indomain", "label": str(r.randrange(4))})
        elif task == "arc_easy":
            rows.append({"id": f"bench{i}", "question": sent().rstrip(".!?") + "?",
                         "choices": {"text": [phrase(1, 8) for _ in range(4)], "label": list("ABCD")},
                         "answerKey": r.choice("ABCD")})
        elif task == "mmlu":
            rows.append({"question": sent().rstrip(".!?") + "?", "subject": MMLU_SUBJECT,
                         "choices": [phrase(2, 10) for _ in range(4)], "answer": r.randrange(4)})
        elif task == "lambada_openai":
            rows.append({"text": " ".join(sent() for _ in range(3)).rstrip(".!?")})
        else:
            raise ValueError(f"bench eval: unknown task {task!r} (known: {', '.join(TASKS)})")
    return rows


def _bench_tokenizer(folder: Path, vocab_size: int, pre_tokenizer: str = "bytelevel") -> None:
    from minigpt_assets.data.builtin_corpora import english_sentences
    from minigpt_assets.data.tokenizer import train_bpe
    from minigpt_assets.recipes import TokenizerRecipe

    train_bpe(list(english_sentences()), TokenizerRecipe(vocab_size=vocab_size, pre_tokenizer=pre_tokenizer), folder)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _free(device: str) -> None:
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_mb(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None


def _ours(folder: Path, files: dict[str, Path], device: str, dtype: str, batch: int, num_fewshot: int,
          max_len: int) -> tuple[float, dict[str, tuple[float, list]], dict[str, int]]:
    """(load seconds, {task: (seconds, results)}, tokens per task summed) for our scorer."""
    import torch

    from minigpt_assets.evaluation.lm_eval_ref import FORMAT_OF_TASK
    from minigpt_assets.evaluation.tasks import build_examples, encode_pair, evaluate_task, load_docs
    from minigpt_assets.evaluation.suite import Evaluator

    t0 = time.perf_counter()
    ev = Evaluator(folder, device, getattr(torch, dtype))
    _sync(device)
    load_s = time.perf_counter() - t0
    out, tokens = {}, {}
    for k, (task, path) in enumerate(files.items()):
        fmt = FORMAT_OF_TASK[task]
        docs = load_docs(fmt, path)
        pool = None if task == "lambada_openai" else docs  # lm-eval's few-shot split: the same file
        sampler = "first_n" if fmt == "mmlu" else "random"

        def run(d):
            return evaluate_task(ev.model, ev.encode, fmt, d, max_len, num_fewshot, pool, sampler,
                                 prefix_id=ev.eos, batch_size=batch, device=device, dtype=ev.dtype)

        if k == 0:
            run(docs[:4])  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        res = run(docs)
        _sync(device)
        out[task] = (time.perf_counter() - t0, res)
        reqs = [q for ex in build_examples(fmt, docs, num_fewshot, pool, sampler) for q in ex.requests]
        tokens[task] = sum(min(max_len + 1, sum(map(len, encode_pair(ev.encode, c, x)))) for c, x in reqs)
    return load_s, out, tokens  # the model is freed with this frame


def _theirs(hf: Path, files: dict[str, Path], device: str, dtype: str, batch: int, num_fewshot: int,
            work: Path) -> tuple[float, dict[str, tuple[float, list]]]:
    import contextlib
    import io
    import logging

    from minigpt_assets.evaluation.lm_eval_ref import lm_eval_samples, load_lm

    for name in ("lm_eval", "datasets"):  # its per-task notices and progress bars would bury the table
        logging.getLogger(name).setLevel(logging.ERROR)
    with contextlib.redirect_stderr(io.StringIO()):
        t0 = time.perf_counter()
        lm = load_lm(hf, device, batch, dtype)
        _sync(device)
        load_s = time.perf_counter() - t0
        first = next(iter(files))
        lm_eval_samples(lm, {first: files[first]}, num_fewshot, work, limit=4)  # warm-up
        out = {}
        for task, path in files.items():
            samples, secs = lm_eval_samples(lm, {task: path}, num_fewshot, work)
            out[task] = (secs, samples[task])
    return load_s, out


def _agreement(ours: list, theirs: list) -> tuple[float, float]:
    """(max |ll ours - ll lm-eval| over requests, fraction of examples with equal acc/acc_norm decisions)."""
    from minigpt_assets.evaluation.lm_eval_ref import sample_lls

    worst, same = 0.0, 0
    for o, t in zip(ours, theirs, strict=True):
        worst = max([worst] + [abs(a - b) for a, b in zip(o.lls, sample_lls(t), strict=True)])
        same += all(o.metrics[m] == t[m] for m in ("acc", "acc_norm") if m in t)
    return worst, same / max(1, len(ours))


def run_eval_bench(recipes_dir: Path, models: list[str] | None = None, device: str | None = None,
                   dtype: str | None = None, batch: int | None = None, examples: int = 200,
                   tasks: list[str] | None = None, num_fewshot: int = 0, impls: tuple[str, ...] = ("ours", "lm-eval"),
                   log: Callable[[str], None] = print) -> list[dict]:
    """One row per (model, implementation, task) and a `total` row per (model, implementation)."""
    import torch

    from minigpt_assets.models import build_model, export_hf, save_model
    from minigpt_assets.models.interop import hf_config
    from minigpt_assets.recipes import Catalog

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.startswith("cuda")
    models = list(models or (GPU_MODELS if gpu else CPU_MODELS))
    dtype = dtype or ("bfloat16" if gpu else "float32")
    batch = batch or (32 if gpu else 8)
    tasks = list(tasks or TASKS)
    cat = Catalog.load_or_raise(recipes_dir, check_files=False)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="minigpt-bench-eval-") as tmp:
        work = Path(tmp)
        files = {}
        for task in tasks:
            files[task] = work / f"{task}.jsonl"
            files[task].write_text("".join(json.dumps(x) + "\n" for x in make_rows(task, examples)))
        toks: dict[tuple[int, str], Path] = {}
        for name in models:
            cfg = cat.models[name]
            # a qwen2 export gets its tokenizer rebuilt by transformers with Qwen2's split (see TokenizerRecipe)
            key = (min(cfg.vocab_size, 8192), "qwen2" if hf_config(cfg)["model_type"] == "qwen2" else "bytelevel")
            if key not in toks:
                toks[key] = work / f"tok{key[0]}-{key[1]}"
                _bench_tokenizer(toks[key], *key)
            torch.manual_seed(0)
            model = build_model(cfg)
            params = sum(p.numel() for p in model.parameters())
            save_model(model, work / name / "ours", tokenizer=toks[key])
            export_hf(model, work / name / "hf", dtype=dtype, tokenizer=toks[key])
            del model
            results: dict[str, tuple[float, dict, float | None]] = {}
            tokens: dict[str, int] = {}
            for impl in impls:
                _free(device)
                log(f"  {name:<14} {impl:<8} {', '.join(tasks)} ({examples} examples each, {num_fewshot}-shot)")
                if impl == "ours":
                    load_s, got, tokens = _ours(work / name / "ours", files, device, dtype, batch, num_fewshot,
                                                cfg.max_seq_len)
                else:
                    load_s, got = _theirs(work / name / "hf", files, device, dtype, batch, num_fewshot, work)
                results[impl] = (load_s, got, _peak_mb(device))
            _free(device)
            for impl, (load_s, got, peak) in results.items():
                for task in [*tasks, "total"]:
                    secs = sum(got[t][0] for t in tasks) if task == "total" else got[task][0]
                    n = examples * (len(tasks) if task == "total" else 1)
                    tok = sum(tokens.values()) if task == "total" else tokens.get(task)
                    row = {"model": name, "params_M": params / 1e6, "impl": impl, "task": task, "examples": n,
                           "seconds": secs, "examples_per_s": n / secs, "tokens_per_s": tok / secs if tok else None,
                           "load_s": load_s if task == "total" else None, "peak_MB": peak if task == "total" else None,
                           "dtype": dtype, "batch": batch, "device": device, "num_fewshot": num_fewshot}
                    if impl == "ours" and "lm-eval" in results:
                        ref = results["lm-eval"][1]
                        ref_s = sum(ref[t][0] for t in tasks) if task == "total" else ref[task][0]
                        row["vs_lm_eval"] = ref_s / secs
                        pairs = [(got[t][1], ref[t][1]) for t in (tasks if task == "total" else [task])]
                        agree = [_agreement(o, t) for o, t in pairs]
                        row["max_abs_dll"] = max(a for a, _ in agree)
                        row["same_decisions"] = sum(b for _, b in agree) / len(agree)
                    rows.append(row)
    return rows


COLUMNS = ("model", "params_M", "impl", "task", "examples", "seconds", "examples_per_s", "tokens_per_s",
           "vs_lm_eval", "max_abs_dll", "same_decisions", "load_s", "peak_MB")
