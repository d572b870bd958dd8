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


def python_qa_preferences(limit: int = 4000, seed: int = 0) -> list[dict]:
    """Offline DPO demo set: the python_qa question, its docstring answer as `chosen`, and the answer to a
    different question as `rejected` (a fluent but wrong answer)."""
    convs = python_qa(limit, seed)
    out = []
    for i, c in enumerate(convs):
        other = convs[(i + 1 + len(convs) // 2) % len(convs)]
        if other[2]["content"] != c[2]["content"]:
            out.append({"messages": c[:2], "chosen": c[2]["content"], "rejected": other[2]["content"]})
    return out


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
