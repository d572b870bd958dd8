"""Chat data for supervised fine-tuning: conversations rendered with the tokenizer's own chat template, a loss
mask that is 1 exactly on assistant tokens, and packing into training windows.

The mask comes from rendering growing prefixes of the conversation: for assistant turn i, the text between
`render(messages[:i], add_generation_prompt=True)` and `render(messages[:i+1])` is the answer (content and
end-of-turn token); everything else — system and user turns, the `<|im_start|>assistant` header — is context.
Each piece is tokenized on its own, so the mask lines up with the ids exactly.
"""

from __future__ import annotations

import hashlib
import inspect
import importlib
import json
from functools import lru_cache
from pathlib import Path

import numpy as np

IGNORE = -100


@lru_cache(maxsize=4)
def _hf_tokenizer(folder: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def render(tokenizer_dir: Path, messages: list[dict], add_generation_prompt: bool = False) -> str:
    tok = _hf_tokenizer(str(tokenizer_dir))
    if not getattr(tok, "chat_template", None):
        raise ValueError(f"{tokenizer_dir}: the tokenizer has no chat template")
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def encode_conversation(tokenizer_dir: Path, messages: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(token ids, loss mask) of one conversation; mask is 1 on the tokens of assistant answers."""
    tok = _hf_tokenizer(str(tokenizer_dir))
    pieces: list[tuple[str, int]] = []
    done = ""
    for i, msg in enumerate(messages):
        if msg["role"] == "assistant":
            prompt = render(tokenizer_dir, messages[:i], add_generation_prompt=True)
            full = render(tokenizer_dir, messages[:i + 1])
            if not (prompt.startswith(done) and full.startswith(prompt)):
                raise ValueError("the chat template does not render conversations prefix by prefix")
            pieces += [(prompt[len(done):], 0), (full[len(prompt):], 1)]
        else:
            full = render(tokenizer_dir, messages[:i + 1])
            if not full.startswith(done):
                raise ValueError("the chat template does not render conversations prefix by prefix")
            pieces.append((full[len(done):], 0))
        done = full
    ids, mask = [], []
    for text, trained in pieces:
        if text:
            t = tok(text, add_special_tokens=False)["input_ids"]
            ids += t
            mask += [trained] * len(t)
    return np.asarray(ids, dtype=np.int64), np.asarray(mask, dtype=np.int8)


class PackedChat:
    """Conversations packed greedily into windows of `seq_len + 1` tokens (a conversation longer than a window
    is cut), each conversation its own document; same interface as `PackedTokens` plus `window_mask`."""

    def __init__(self, examples: list[tuple[np.ndarray, np.ndarray]], seq_len: int, pad_id: int):
        self.seq_len, self.window = seq_len, seq_len + 1
        toks, docs, masks = [], [], []
        cur_t, cur_d, cur_m, d = [], [], [], 0
        for ids, mask in examples:
            ids, mask = ids[: self.window], mask[: self.window]
            if len(cur_t) + len(ids) > self.window:
                toks.append(cur_t), docs.append(cur_d), masks.append(cur_m)
                cur_t, cur_d, cur_m, d = [], [], [], 0
            cur_t += ids.tolist()
            cur_d += [d] * len(ids)
            cur_m += mask.tolist()
            d += 1
        if cur_t:
            toks.append(cur_t), docs.append(cur_d), masks.append(cur_m)
        n = len(toks)
        self.tokens = np.full((n, self.window), pad_id, dtype=np.int64)
        self.docs = np.zeros((n, self.window), dtype=np.int64)
        self.masks = np.zeros((n, self.window), dtype=np.int8)
        for i, (t, dd, m) in enumerate(zip(toks, docs, masks)):
            self.tokens[i, :len(t)] = t
            self.docs[i, :len(t)] = dd
            self.docs[i, len(t):] = (dd[-1] + 1) if dd else 0  # padding is its own document, never trained
            self.masks[i, :len(m)] = m

    def __len__(self) -> int:
        return len(self.tokens)

    def window_tokens(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.tokens[i], self.docs[i]

    def window_mask(self, i: int) -> np.ndarray:
        return self.masks[i]


def load_conversations(path: Path) -> list[list[dict]]:
    """A jsonl file with one `{"messages": [{"role": ..., "content": ...}, ...]}` per line."""
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        msgs = row.get("messages") if isinstance(row, dict) else None
        if not isinstance(msgs, list) or not all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in msgs):
            raise ValueError(f"{path}:{n}: expected {{\"messages\": [{{\"role\": ..., \"content\": ...}}, ...]}}")
        out.append(msgs)
    return out


# ------------------------------------------------------------------------------------------------ demo set
QA_MODULES = ("json", "os.path", "re", "math", "statistics", "string", "textwrap", "itertools", "functools",
              "collections", "heapq", "bisect", "random", "shutil", "pathlib", "datetime", "calendar", "fractions",
              "decimal", "difflib", "html", "base64", "hashlib", "zlib", "gzip", "csv", "argparse", "logging",
              "unicodedata", "operator", "copy", "pprint", "enum", "glob", "fnmatch", "tempfile", "uuid", "urllib.parse")


def _first_sentence(doc: str) -> str | None:
    text = " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())
    if len(text) < 20 or len(text) > 300 or not text[0].isupper():
        return None
    return text if text.endswith(".") else text + "."


def python_qa(limit: int = 4000, seed: int = 0) -> list[list[dict]]:
    """Offline SFT demo set: "What does `module.function` do?" answered by the first sentence of its docstring,
    from the standard library of this Python; deterministic for a given Python version."""
    convs = []
    for modname in QA_MODULES:
        try:
            mod = importlib.import_module(modname)
        except ImportError:
            continue
        for name, obj in sorted(vars(mod).items()):
            if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isbuiltin(obj) or inspect.isclass(obj)):
                continue
            ans = _first_sentence(inspect.getdoc(obj) or "")
            if ans is None:
                continue
            kind = "class" if inspect.isclass(obj) else "function"
            convs.append([{"role": "system", "content": "You are a concise Python assistant."},
                          {"role": "user", "content": f"What does the Python {kind} `{modname}.{name}` do?"},
                          {"role": "assistant", "content": ans}])
    convs.sort(key=lambda c: hashlib.sha256(f"{seed}:{c[1]['content']}".encode()).hexdigest())
    return convs[:limit]


# ------------------------------------------------------------------------------------------------ preferences
class PreferencePairs:
    """(prompt, chosen, rejected) as right-padded rows of `seq_len` tokens: for each side the input ids and the
    next-token labels, -100 outside the answer. `make_batch(idx)` is what the loader calls."""

    def __init__(self, pairs: list[tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]],
                 seq_len: int, pad_id: int):
        self.seq_len, self.window = seq_len, seq_len + 1
        n = len(pairs)
        self.ids = np.full((2, n, seq_len), pad_id, dtype=np.int64)
        self.labels = np.full((2, n, seq_len), IGNORE, dtype=np.int64)
        for i, sides in enumerate(pairs):
            for s, (ids, mask) in enumerate(sides):
                ids, mask = ids[: self.window], mask[: self.window]
                t = len(ids) - 1
                self.ids[s, i, :t] = ids[:-1]
                lab = ids[1:].copy()
                lab[mask[1:] == 0] = IGNORE
                self.labels[s, i, :t] = lab

    def __len__(self) -> int:
        return self.ids.shape[1]

    def make_batch(self, idx) -> dict[str, np.ndarray]:
        idx = np.asarray(idx)
        return {"chosen_ids": self.ids[0, idx], "chosen_labels": self.labels[0, idx],
                "rejected_ids": self.ids[1, idx], "rejected_labels": self.labels[1, idx], "windows": idx}


def python_qa_preferences(limit: int = 4000, seed: int = 0, rejected: str = "other_answer") -> list[dict]:
    """Offline DPO demo set: the python_qa question and its docstring answer as `chosen`. `rejected` is the
    answer to a different question (`other_answer`: fluent but wrong, so the model must read the question), or
    the right answer degenerating into a loop (`repetition`: the failure small models are most prone to)."""
    convs = python_qa(limit, seed)
    out = []
    for i, c in enumerate(convs):
        answer = c[2]["content"]
        if rejected == "repetition":
            words = answer.rstrip(".").split()
            head = " ".join(words[: max(2, len(words) // 2)])
            out.append({"messages": c[:2], "chosen": answer, "rejected": " ".join([head] * 3) + "."})
            continue
        other = convs[(i + 1 + len(convs) // 2) % len(convs)]
        if other[2]["content"] != answer:
            out.append({"messages": c[:2], "chosen": answer, "rejected": other[2]["content"]})
    return out


# ------------------------------------------------------------------------------------------------ arithmetic
ARITHMETIC_SYSTEM = "You are a careful calculator."


def arithmetic(limit: int = 4000, seed: int = 0, max_operand: int = 49) -> list[dict]:
    """Offline demo tasks with checkable answers: every `a + b` and `a - b` (a >= b) with operands up to
    `max_operand`, in a seeded order. Each row is `{"messages": [system, user], "answer": "71",
    "solution": "23 + 48 = 71."}`: SFT trains on the solution, GRPO rewards the answer, DPO prefers the
    solution to one with a wrong result."""
    rows = []
    for a in range(max_operand + 1):
        for b in range(max_operand + 1):
            for op in ("+", "-"):
                if op == "-" and a < b:
                    continue
                c = a + b if op == "+" else a - b
                rows.append({"messages": [{"role": "system", "content": ARITHMETIC_SYSTEM},
                                          {"role": "user", "content": f"What is {a} {op} {b}?"}],
                             "answer": str(c), "solution": f"{a} {op} {b} = {c}."})
    rows.sort(key=lambda r: hashlib.sha256(f"{seed}:{r['solution']}".encode()).hexdigest())
    return rows[:limit]


def arithmetic_conversations(limit: int = 4000, seed: int = 0, max_operand: int = 49) -> list[list[dict]]:
    return [r["messages"] + [{"role": "assistant", "content": r["solution"]}]
            for r in arithmetic(limit, seed, max_operand)]


def arithmetic_preferences(limit: int = 4000, seed: int = 0, max_operand: int = 49) -> list[dict]:
    """The worked solution against the same sum with a result off by one to ten."""
    out = []
    for r in arithmetic(limit, seed, max_operand):
        c = int(r["answer"])
        off = 1 + int(hashlib.sha256(r["solution"].encode()).hexdigest()[:4], 16) % 10
        wrong = r["solution"].rsplit("=", 1)[0] + f"= {c + off if c < off or off % 2 else c - off}."
        out.append({"messages": r["messages"], "chosen": r["solution"], "rejected": wrong})
    return out


# ------------------------------------------------------------------------------------------------ tasks (grpo)
def load_tasks(path: Path, answers: bool = True) -> list[dict]:
    """A jsonl file with one `{"messages": [...prompt...], "answer": str}` per line (`answers=False`: prompts
    whose answer a reward model judges; `answer` may be absent)."""
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        ok = isinstance(row, dict) and isinstance(row.get("messages"), list)
        if answers and not (ok and isinstance(row.get("answer"), (str, int, float))):
            raise ValueError(f"{path}:{n}: expected {{\"messages\": [...], \"answer\": str}}")
        if not ok:
            raise ValueError(f"{path}:{n}: expected {{\"messages\": [...prompt...]}}")
        out.append({"messages": row["messages"], "answer": str(row.get("answer", ""))})
    return out


class PromptTasks:
    """Prompts rendered for generation (the chat template with the assistant header) and their answers, for
    online RL: the loader hands out prompt indices, the trainer samples completions and scores them."""

    def __init__(self, tokenizer_dir: Path, rows: list[dict], max_prompt_len: int):
        tok = _hf_tokenizer(str(tokenizer_dir))
        self.tokenizer_dir = Path(tokenizer_dir)
        self.prompts = [np.asarray(tok(render(tokenizer_dir, r["messages"], add_generation_prompt=True),
                                       add_special_tokens=False)["input_ids"][-max_prompt_len:], dtype=np.int64)
                        for r in rows]
        self.answers = [r["answer"] for r in rows]
        end = tok.convert_tokens_to_ids("<|im_end|>")
        self.eos_id = end if isinstance(end, int) and end != tok.unk_token_id else tok.eos_token_id
        self.window = max_prompt_len + 1

    def __len__(self) -> int:
        return len(self.prompts)

    def make_batch(self, idx) -> dict[str, np.ndarray]:
        return {"windows": np.asarray(idx)}

    def decode(self, ids) -> str:
        return _hf_tokenizer(str(self.tokenizer_dir)).decode(list(ids), skip_special_tokens=True)


def load_preferences(path: Path) -> list[dict]:
    """A jsonl file with one `{"messages": [...prompt...], "chosen": str, "rejected": str}` per line."""
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not (isinstance(row, dict) and isinstance(row.get("messages"), list)
                and isinstance(row.get("chosen"), str) and isinstance(row.get("rejected"), str)):
            raise ValueError(f"{path}:{n}: expected {{\"messages\": [...], \"chosen\": str, \"rejected\": str}}")
        out.append(row)
    return out


def encode_preference(tokenizer_dir: Path, row: dict) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    return tuple(encode_conversation(tokenizer_dir, row["messages"] + [{"role": "assistant", "content": row[k]}])
                 for k in ("chosen", "rejected"))
