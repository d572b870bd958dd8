"""Log-likelihood benchmark tasks in the formats the field uses, scored as lm-evaluation-harness scores them.

A task reads rows of a local file (jsonl, json or parquet: the rows of the Hugging Face dataset the user
downloaded once) in one of the standard formats and turns each into requests `(context, continuation)`:

| format      | rows (as on the Hub)                                   | requests                                  |
|-------------|--------------------------------------------------------|-------------------------------------------|
| arc         | question, choices{text,label}, answerKey               | "Question: q\\nAnswer:" + " " + choice     |
| hellaswag   | activity_label, ctx_a, ctx_b, endings, label           | preprocessed ctx + " " + ending            |
| piqa        | goal, sol1, sol2, label                                | "Question: goal\\nAnswer:" + " " + sol     |
| mmlu        | question, subject, choices, answer                     | question + lettered choices + " A".." D"  |
| winogrande  | sentence, option1, option2, answer                     | sentence up to "_" with each option + rest|
| lambada     | text                                                   | text but the last word + " " + last word  |
| choice      | context, choices, gold[, delimiter] (our own format)   | context + delimiter (" ") + choice        |

Everything that decides a number follows lm-evaluation-harness 0.4 exactly, so the scores equal its scores on the
same exported model and the same rows (a test runs both): the prompt templates and HellaSwag's preprocessing;
the few-shot context (description, then `q + " " + a + "\\n\\n"` per example; examples drawn by
`random.Random(seed).sample` over the few-shot pool in document order, or the first n, as its samplers do);
tokenization (the whole string is encoded and the context's tokens are cut off, trailing spaces of the context
move to the continuation, the tokenizer's own special tokens kept); left truncation to the model's length;
`acc` = argmax of the summed log-likelihoods, `acc_norm` = argmax of log-likelihood / character length of the
choice; `acc_mutual_info` = argmax of log P(choice | context) - log P(choice | prefix token); for LAMBADA
`acc` = the continuation is the greedy one.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

FORMATS = ("arc", "hellaswag", "piqa", "mmlu", "winogrande", "lambada", "choice")


# ---------------------------------------------------------------------------------------------- reading rows
def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a .jsonl(.gz) / .json / .parquet file; one clear error (file:line: problem) on a malformed one."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    name = path.name.lower()
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if name.endswith(".json"):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
            data = next(iter(data.values()))  # {"data": [...]}
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of rows")
        return data
    from minigpt_assets.evaluation.jsonl import iter_jsonl

    return [row for _, row in iter_jsonl(path)]


# ---------------------------------------------------------------------------------------------- formats
def _hellaswag_text(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


@dataclass(frozen=True)
class Doc:
    """One row as lm-eval's task sees it: `text` (or one text per choice for winogrande), the choices whose
    lengths normalize acc_norm, the gold index, and the target string used when it serves as a few-shot example."""
    id: str
    text: str | list[str]
    choices: list[str]
    gold: int
    target: str
    description: str = ""
    group: str = ""  # mmlu subject: few-shot examples come from the same subject
    delimiter: str = " "  # between context and choice (lm-eval's target_delimiter; "\n" for next-line tasks)


def _gold_index(value: Any, n: int, what: str) -> int:
    try:
        i = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: expected an answer index, got {value!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"{what}: answer index {i} outside 0..{n - 1}")
    return i


def to_doc(fmt: str, row: dict[str, Any], idx: int, where: str = "") -> Doc:
    """One row of a file in `fmt` as a Doc; a KeyError or bad answer becomes one line naming the field."""
    what = f"{where}row {idx + 1}"
    try:
        rid = str(row.get("id", row.get("ind", row.get("task_id", idx))))
        if fmt == "arc":
            labels, texts = list(row["choices"]["label"]), list(row["choices"]["text"])
            if row["answerKey"] not in labels:
                raise ValueError(f"{what}: answerKey {row['answerKey']!r} is not one of {labels}")
            gold = labels.index(row["answerKey"])
            return Doc(rid, f"Question: {row['question']}\nAnswer:", texts, gold, texts[gold])
        if fmt == "hellaswag":
            ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
            choices = [_hellaswag_text(e) for e in row["endings"]]
            gold = _gold_index(row["label"], len(choices), what)
            return Doc(rid, _hellaswag_text(row["activity_label"] + ": " + ctx), choices, gold, choices[gold])
        if fmt == "piqa":
            choices = [row["sol1"], row["sol2"]]
            gold = _gold_index(row["label"], 2, what)
            return Doc(rid, f"Question: {row['goal']}\nAnswer:", choices, gold, choices[gold])
        if fmt == "mmlu":
            c = list(row["choices"])
            if len(c) != 4:
                raise ValueError(f"{what}: mmlu rows have 4 choices, got {len(c)}")
            subject = str(row.get("subject", ""))
            text = (f"{row['question'].strip()}\nA. {c[0]}\nB. {c[1]}\nC. {c[2]}\nD. {c[3]}\nAnswer:")
            gold = _gold_index(row["answer"], 4, what)
            desc = (f"The following are multiple choice questions (with answers) about "
                    f"{' '.join(subject.split('_'))}.\n\n") if subject else ""
            return Doc(rid, text, ["A", "B", "C", "D"], gold, "ABCD"[gold], desc, subject)
        if fmt == "winogrande":
            s = row["sentence"]
            if "_" not in s:
                raise ValueError(f"{what}: sentence has no '_' blank")
            i = s.index("_")
            contexts = [s[:i] + row["option1"], s[:i] + row["option2"]]
            gold = {"1": 0, "2": 1}.get(str(row["answer"]))
            if gold is None:
                raise ValueError(f"{what}: answer must be '1' or '2', got {row['answer']!r}")
            return Doc(rid, contexts, contexts, gold, s[i + 1:].strip())
        if fmt == "lambada":
            words = row["text"].split(" ")
            return Doc(rid, " ".join(words[:-1]), [" " + words[-1]], 0, " " + words[-1])
        if fmt == "choice":
            choices = [str(c) for c in row["choices"]]
            gold = _gold_index(row["gold"], len(choices), what)
            return Doc(rid, str(row["context"]), choices, gold, choices[gold], delimiter=str(row.get("delimiter", " ")))
    except KeyError as e:
        raise ValueError(f"{what}: missing field {e.args[0]!r} expected by the {fmt} format") from None
    raise ValueError(f"unknown task format {fmt!r} (known: {', '.join(FORMATS)})")


def load_docs(fmt: str, path: str | Path, limit: int | None = None) -> list[Doc]:
    rows = read_rows(path)
    return [to_doc(fmt, r, i, f"{path}: ") for i, r in enumerate(rows[:limit] if limit else rows)]


# ---------------------------------------------------------------------------------------------- requests
@dataclass
class Example:
    doc: Doc
    requests: list[tuple[str, str]]  # (context, continuation) per choice, then ("", continuation) per choice
    kind: str  # "multiple_choice" | "loglikelihood"
    unconditional: bool = False  # the second half of requests scores each choice without context


def fewshot_prefix(shots: Sequence[Doc], winogrande: bool) -> str:
    """`q + " " + a + "\\n\\n"` per few-shot example (winogrande: q is the sentence completed with the gold
    option, a the rest of the sentence)."""
    out = []
    for d in shots:
        q = d.text[d.gold] if winogrande else d.text
        out.append(f"{q}{d.delimiter}{d.target}\n\n")
    return "".join(out)


# lm-eval samples `n + 1` and drops the evaluated document when the task's few-shot split equals its test split,
# (for these formats that holds because neither is set; their few-shot pool is the training split). For lambada,
# whose only split is test, it draws from the test split without excluding the document, as kept here for equal
# numbers: give lambada a separate few-shot file (or use it zero-shot, as usual) to avoid that.
SAMPLE_N_PLUS_ONE = ("hellaswag", "piqa", "winogrande", "choice")


def build_examples(fmt: str, docs: list[Doc], num_fewshot: int = 0, fewshot_docs: list[Doc] | None = None,
                   sampler: str = "random", seed: int = 1234, mutual_info: bool = False) -> list[Example]:
    """The requests of every doc, few-shot examples drawn as lm-evaluation-harness draws them: one
    `random.Random(seed)` for the task, `sample(pool, n)` per document in order (`sample(pool, n + 1)` minus the
    document itself for the formats above, or when the pool is the evaluated split), or the first n of the pool
    (`first_n`). Few-shot examples of mmlu come from the same subject. `mutual_info` adds lm-eval's
    unconditional requests `("", delimiter + choice)` for `acc_mutual_info`."""
    pool = docs if fewshot_docs is None else fewshot_docs
    drop_self = (fewshot_docs is None and fmt != "lambada") or fmt in SAMPLE_N_PLUS_ONE
    rnd = random.Random(seed)
    out = []
    for d in docs:
        shots: list[Doc] = []
        if num_fewshot:
            sub = [p for p in pool if p.group == d.group] if fmt == "mmlu" else pool
            if sampler == "first_n":
                shots = ([p for p in sub if p != d] if drop_self else sub)[:num_fewshot]
            elif not drop_self:
                shots = rnd.sample(sub, num_fewshot)
            else:
                shots = [p for p in rnd.sample(sub, num_fewshot + 1) if p != d][:num_fewshot]
                if len(shots) < num_fewshot:
                    shots = rnd.sample([p for p in sub if p != d], num_fewshot)
        prefix = d.description + fewshot_prefix(shots, fmt == "winogrande")
        if fmt == "winogrande":
            reqs = [(prefix + c, " " + d.target) for c in d.text]
        elif fmt == "lambada":
            reqs = [(prefix + d.text, d.target)]
        else:
            reqs = [(prefix + d.text, d.delimiter + c) for c in d.choices]
        mi = mutual_info and fmt not in ("lambada", "winogrande")
        if mi:
            reqs += [("", c) for _, c in reqs]
        out.append(Example(d, reqs, "loglikelihood" if fmt == "lambada" else "multiple_choice", mi))
    return out


# ---------------------------------------------------------------------------------------------- scoring
def encode_pair(encode: Callable[[str], list[int]], context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's split of a request into tokens: trailing spaces of the context move to the continuation; the
    whole string is encoded and the context's token count is cut off (so merges across the seam count)."""
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    whole = encode(context + continuation)
    ctx = encode(context)
    return ctx, whole[len(ctx):]


def _logits_at(model: torch.nn.Module, ids: torch.Tensor, rows: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Logits at the (row, position) pairs only: the LM head (a large share of the compute with a big vocabulary)
    runs on the continuation positions, not on every context position."""
    if hasattr(model, "hidden_states") and hasattr(model, "lm_head"):
        return model.lm_head(model.hidden_states(ids)[rows, pos])
    return model(ids)[rows, pos]


@torch.no_grad()
def loglikelihoods(model: torch.nn.Module, encode: Callable[[str], list[int]], requests: list[tuple[str, str]],
                   max_len: int, prefix_id: int | None = None, batch_size: int = 16,
                   device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> list[tuple[float, bool]]:
    """(sum of log-probabilities of the continuation, whether it is the greedy continuation) per request.

    Requests whose inputs (every token but the last) are equal share one row of the batch, so the choices of a
    question with one-token answers (MMLU's " A" .. " D") cost one forward pass, as lm-eval's context grouping
    does; `batch_size` counts such rows. Rows are sorted by length so that similar lengths share a batch."""
    model.eval()
    device = torch.device(device)
    toks: list[tuple[list[int], int]] = []  # (input ids, number of continuation tokens)
    for ctx, cont in requests:
        if ctx == "":
            c = encode(cont)
            cenc, contenc = ([prefix_id], c) if prefix_id is not None and c[:1] != [prefix_id] else (c[:1], c[1:])
        else:
            cenc, contenc = encode_pair(encode, ctx, cont)
        if not contenc:
            raise ValueError(f"empty continuation after tokenization: {cont!r}")
        whole = (cenc + contenc)[-(max_len + 1):]
        toks.append((whole, len(contenc)))
    shared: dict[tuple[int, ...], list[int]] = {}  # input ids -> the requests that feed them
    for i, (whole, _) in enumerate(toks):
        shared.setdefault(tuple(whole[:-1]), []).append(i)
    inputs = sorted(shared, key=len, reverse=True)
    results: list[tuple[float, bool]] = [(0.0, False)] * len(toks)
    for b in range(0, len(inputs), batch_size):
        batch = inputs[b:b + batch_size]
        ids = torch.zeros(len(batch), len(batch[0]), dtype=torch.long)
        pairs: dict[tuple[int, int], int] = {}  # (row, position) -> index among the positions scored
        entries: list[tuple[int, int, int]] = []  # (request, position index, target token) per continuation token
        for r, key in enumerate(batch):
            ids[r, :len(key)] = torch.tensor(key)
            for i in shared[key]:
                whole, n = toks[i]
                for t in range(len(key) - n, len(key)):
                    entries.append((i, pairs.setdefault((r, t), len(pairs)), whole[t + 1]))
        rows, pos = (torch.tensor(x, device=device) for x in zip(*pairs))
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            logits = _logits_at(model, ids.to(device), rows, pos)
        logp = torch.log_softmax(logits.float(), dim=-1)  # (positions, vocab); only per-token results leave
        at = torch.tensor([e[1] for e in entries], device=device)
        target = torch.tensor([e[2] for e in entries], device=device)
        tok = logp[at, target].double().cpu().tolist()
        hit = (logp.argmax(-1)[at] == target).cpu().tolist()
        sums: dict[int, list] = {}
        for (i, _, _), lp, h in zip(entries, tok, hit):
            acc = sums.setdefault(i, [0.0, True])
            acc[0] += lp
            acc[1] = acc[1] and bool(h)
        for i, (lp, h) in sums.items():
            results[i] = (float(lp), h)
    return results


@dataclass
class ExampleResult:
    id: str
    gold: int
    lls: list[float]
    greedy: list[bool]
    metrics: dict[str, float] = field(default_factory=dict)
    pred: int = -1


def _argmax(xs: Sequence[float]) -> int:
    best = 0
    for i, x in enumerate(xs):
        if x > xs[best]:
            best = i
    return best  # the first maximum, as np.argmax


def score_examples(examples: list[Example], lls: list[tuple[float, bool]]) -> list[ExampleResult]:
    """acc / acc_norm (multiple choice) or acc / nll (loglikelihood tasks) per example, as lm-eval computes them."""
    out, k = [], 0
    for ex in examples:
        res = lls[k:k + len(ex.requests)]
        k += len(ex.requests)
        ll = [r[0] for r in res]
        greedy = [r[1] for r in res]
        if ex.kind == "loglikelihood":
            out.append(ExampleResult(ex.doc.id, 0, ll, greedy, {"acc": float(greedy[0]), "nll": -ll[0]}, 0))
            continue
        metrics = {}
        if ex.unconditional:  # acc_mutual_info: argmax of log P(choice | context) - log P(choice)
            half = len(ll) // 2
            ll, unc, greedy = ll[:half], ll[half:], greedy[:half]
            metrics["acc_mutual_info"] = float(_argmax([a - b for a, b in zip(ll, unc)]) == ex.doc.gold)
        pred = _argmax(ll)
        norm = _argmax([x / float(len(c)) for x, c in zip(ll, ex.doc.choices)])
        metrics.update({"acc": float(pred == ex.doc.gold), "acc_norm": float(norm == ex.doc.gold)})
        out.append(ExampleResult(ex.doc.id, ex.doc.gold, ll, greedy, metrics, pred))
    return out


def evaluate_task(model: torch.nn.Module, encode: Callable[[str], list[int]], fmt: str, docs: list[Doc],
                  max_len: int, num_fewshot: int = 0, fewshot_docs: list[Doc] | None = None,
                  sampler: str = "random", seed: int = 1234, prefix_id: int | None = None, batch_size: int = 16,
                  device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                  mutual_info: bool = False) -> list[ExampleResult]:
    examples = build_examples(fmt, docs, num_fewshot, fewshot_docs, sampler, seed, mutual_info)
    reqs = [r for ex in examples for r in ex.requests]
    return score_examples(examples, loglikelihoods(model, encode, reqs, max_len, prefix_id, batch_size,
                                                   device, dtype))
