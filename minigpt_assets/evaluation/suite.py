"""Run eval recipes on one model: per-example rows `(task, metric, example, value, weight)` and a summary.

The model is any folder `from_pretrained` reads (our checkpoint or an HF export) with its tokenizer files. Each
row's aggregate is `sum(value) / sum(weight)`: accuracy (value 0/1, weight 1), pass@k (the per-problem
estimate, weight 1), bits per byte (value = bits of a document, weight = its UTF-8 bytes, so the aggregate is
the corpus-level BPB), nats_per_token (value = nats of a document, weight = its tokens: perplexity is its exp),
nll (nats of a LAMBADA continuation, weight 1).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch

from minigpt_assets.evaluation import tasks as T
from minigpt_assets.evaluation.bpb import score_documents
from minigpt_assets.evaluation.config import (BitsPerByteEval, ChatTaskEval, CodeEval, HeldOutChoiceEval,
                                              MultipleChoiceEval)
from minigpt_assets.evaluation.held_out import continuation_rows, next_line_rows
from minigpt_assets.recipes import expand_location

HeldOut = Callable[[str, int | None, int | None], list[tuple[str, str]]]  # (source, max docs, max bytes) -> docs


class Evaluator:
    """One loaded model and tokenizer, scoring eval recipes."""

    def __init__(self, model_dir: Path, device: str = "cpu", dtype: torch.dtype = torch.float32):
        from tokenizers import Tokenizer

        from minigpt_assets.data.tokenizer import eos_id
        from minigpt_assets.models import from_pretrained

        self.model_dir = Path(model_dir)
        self.model = from_pretrained(self.model_dir).to(device).eval()
        self.cfg = self.model.config
        self.tok = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        self.eos = eos_id(self.model_dir)
        self.device, self.dtype = device, dtype

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids  # the tokenizer's own special tokens, as lm-eval's HF model encodes

    def max_len(self, recipe) -> int:
        return min(recipe.max_len or self.cfg.max_seq_len, self.cfg.max_seq_len)

    # ------------------------------------------------------------------------------------------- kinds
    def bits_per_byte(self, name: str, recipe: BitsPerByteEval, sources: list[str], held_out: HeldOut) -> list[dict]:
        rows = []
        for src in sources:
            docs = held_out(src, recipe.max_documents, recipe.max_bytes)
            enc = [(i, self.tok.encode(t, add_special_tokens=False).ids, len(t.encode("utf-8", "surrogatepass")))
                   for i, t in docs]
            scores = score_documents(self.model, [(i, ids, b) for i, ids, b in enc if ids], self.eos,
                                     self.max_len(recipe), recipe.batch_size, self.device, self.dtype)
            for s in scores:  # perplexity = exp(nats_per_token): tokenizer-dependent, unlike bits per byte
                rows += [{"task": f"{name}/{src}", "metric": "bits_per_byte", "example": s.id,
                          "value": s.nll / math.log(2), "weight": float(s.bytes)},
                         {"task": f"{name}/{src}", "metric": "nats_per_token", "example": s.id,
                          "value": s.nll, "weight": float(s.tokens)}]
        return rows

    def _choice_rows(self, task: str, fmt: str, docs: list[T.Doc], recipe, metrics: list[str],
                     fewshot: list[T.Doc] | None = None, num_fewshot: int = 0, sampler: str = "random",
                     seed: int = 1234) -> list[dict]:
        results = T.evaluate_task(self.model, self.encode, fmt, docs, self.max_len(recipe), num_fewshot, fewshot,
                                  sampler, seed, prefix_id=self.eos, batch_size=recipe.batch_size,
                                  device=self.device, dtype=self.dtype, mutual_info="acc_mutual_info" in metrics)
        return [{"task": task, "metric": m, "example": r.id, "value": r.metrics[m], "weight": 1.0}
                for r in results for m in metrics]

    def held_out_choice(self, name: str, recipe: HeldOutChoiceEval, sources: list[str],
                        held_out: HeldOut) -> list[dict]:
        rows = []
        for src in sources:
            docs = held_out(src, None, None)
            if recipe.unit == "lines":
                made = next_line_rows(docs, recipe.context, recipe.choices, recipe.examples, recipe.seed)
            else:
                made = continuation_rows(docs, recipe.context, recipe.continuation, recipe.choices, recipe.examples,
                                         recipe.seed)
            if not made:
                continue
            task_docs = [T.to_doc("choice", r, i) for i, r in enumerate(made)]
            rows += self._choice_rows(f"{name}/{src}", "choice", task_docs, recipe, list(recipe.metrics))
        return rows

    def multiple_choice(self, name: str, recipe: MultipleChoiceEval) -> list[dict]:
        docs = T.load_docs(recipe.format, expand_location(recipe.path), recipe.limit)
        fewshot = T.load_docs(recipe.format, expand_location(recipe.fewshot_path)) if recipe.fewshot_path else None
        return self._choice_rows(name, recipe.format, docs, recipe, recipe.metric_names(), fewshot,
                                 recipe.num_fewshot, recipe.sampler(), recipe.fewshot_seed)

    def code(self, name: str, recipe: CodeEval) -> list[dict]:
        from minigpt_assets.evaluation.code_exec import evaluate_samples, load_humaneval

        problems = load_humaneval(expand_location(recipe.path))[:recipe.limit]
        samples = {p.task_id: self.complete(p.prompt, recipe) for p in problems}
        per_problem, _ = evaluate_samples(problems, samples, ks=tuple(recipe.ks), timeout_s=recipe.timeout_s,
                                          memory_mb=recipe.memory_mb)
        return [{"task": name, "metric": f"pass@{k}", "example": r["task_id"], "value": float(r[f"pass@{k}"]),
                 "weight": 1.0} for r in per_problem for k in recipe.ks if f"pass@{k}" in r]

    def chat_task(self, name: str, recipe: ChatTaskEval) -> list[dict]:
        """Greedy answers to the held-out prompts, a batch of equal-length prompts at a time, scored by the rule."""
        import contextlib

        from minigpt_assets.data.chat import PromptTasks
        from minigpt_assets.training.objectives.rollouts import rule_rewards, sample
        from minigpt_assets.training.run import split_rows, task_rows

        train, val = split_rows(task_rows(recipe.chat), recipe.chat.validation_fraction)
        rows = (val if recipe.split == "validation" else train)[:recipe.limit]
        data = PromptTasks(self.model_dir, rows, self.max_len(recipe) - recipe.max_new_tokens)
        autocast = (contextlib.nullcontext if self.dtype == torch.float32 else
                    lambda: torch.autocast(torch.device(self.device).type, dtype=self.dtype))
        out = []
        for lo in range(0, len(rows), recipe.batch_size):
            idx = range(lo, min(len(rows), lo + recipe.batch_size))
            ro = sample(self.model, data, idx, 1, recipe.max_new_tokens, 0.0, None, name, True, autocast)
            out += [{"task": name, "metric": recipe.reward, "example": rows[i]["messages"][-1]["content"],
                     "value": r, "weight": 1.0} for i, r in zip(idx, rule_rewards(recipe.reward, data, ro))]
        return out

    @torch.no_grad()
    def complete(self, prompt: str, recipe: CodeEval) -> list[str]:
        """`samples` completions of a prompt (one batch, KV cache), each cut at the first stop sequence."""
        from minigpt_assets.models.transformer import generate

        ids = self.encode(prompt)[-(self.cfg.max_seq_len - recipe.max_new_tokens):]
        n = 1 if recipe.temperature == 0 else recipe.samples
        x = torch.tensor([ids] * n, device=self.device)
        seed = recipe.seed + sum(map(ord, prompt)) % 100_003  # per prompt, reproducible
        out = generate(self.model, x, recipe.max_new_tokens, recipe.temperature, None, recipe.top_p, self.eos, seed)
        texts = []
        for row in out[:, len(ids):].tolist():
            row = row[:row.index(self.eos)] if self.eos in row else row
            text = self.tok.decode(row)
            cut = min([text.index(s) for s in recipe.stop if s in text] + [len(text)])
            texts.append(text[:cut])
        return texts * (recipe.samples if n == 1 else 1)


def evaluate(model_dir: Path, evals: dict[str, object], eval_sources: dict[str, list[str]], held_out: HeldOut,
             device: str = "cpu", log: Callable[[str], None] = lambda s: None,
             dtype: torch.dtype = torch.float32) -> list[dict]:
    """Every eval recipe on one model; rows as in the module docstring (`dtype`: autocast compute dtype)."""
    ev = Evaluator(model_dir, device, dtype)
    rows: list[dict] = []
    for name, recipe in evals.items():
        if isinstance(recipe, BitsPerByteEval):
            got = ev.bits_per_byte(name, recipe, eval_sources[name], held_out)
        elif isinstance(recipe, HeldOutChoiceEval):
            got = ev.held_out_choice(name, recipe, eval_sources[name], held_out)
        elif isinstance(recipe, MultipleChoiceEval):
            got = ev.multiple_choice(name, recipe)
        elif isinstance(recipe, CodeEval):
            got = ev.code(name, recipe)
        elif isinstance(recipe, ChatTaskEval):
            got = ev.chat_task(name, recipe)
        else:
            raise ValueError(f"unknown eval kind for {name!r}")
        log(f"{name}: {len({r['example'] for r in got})} examples")
        rows += got
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """(task, metric, value, n) per task and metric: value = sum(value) / sum(weight)."""
    acc: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        a = acc.setdefault((r["task"], r["metric"]), [0.0, 0.0, 0])
        a[0] += r["value"]
        a[1] += r["weight"]
        a[2] += 1
    return [{"task": t, "metric": m, "value": v / w if w else float("nan"), "n": n}
            for (t, m), (v, w, n) in sorted(acc.items())]
