"""Batched generation for serving (continuous batching): one thread owns the model; a request is prefilled when
it arrives (with the others that arrived with the same prompt length), then joins the running batch, which takes one decode step for all its rows at a time; a row
leaves as soon as it ends (end token, stop string, `max_tokens`, or the context is full) and the next waiting
request takes its place. So N clients share each forward pass instead of queueing behind each other.

The cache keeps the live rows packed in slots 0..n-1 (a leaving row's slot takes the last row), so each decode
step reads contiguous views of the keys and values up to the longest row, with a mask for the shorter ones.
Pure PyTorch; the HTTP layer is `serve/api.py`.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from minigpt_assets.models.layers import KVCache
from minigpt_assets.models.transformer import sample_next


class SlotCache:
    """Keys and values of up to `slots` rows of different lengths, the live ones packed in slots 0..n-1."""

    def __init__(self, cfg, slots: int, max_len: int, device, dtype):
        shape = (slots, cfg.kv_heads, max_len, cfg.dim_head)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_layers)]
        self.lengths = torch.zeros(slots, dtype=torch.long, device=device)
        self.host = [0] * slots  # the same lengths on the host: reading them never waits for the device
        self.slots, self.max_len, self.n = slots, max_len, 0
        self.mask: torch.Tensor | None = None
        self._width = 0
        self._rows = torch.arange(slots, device=device)
        self._pos = torch.arange(max_len + 1, device=device)

    # the model reads `length` (positions before the new token: an int when the rows have one length, as a plain
    # cache's) once per layer, and adds the token each row ran after the last layer
    @property
    def length(self) -> torch.Tensor | int:
        return self.host[0] if self.mask is None else self.lengths[:self.n]

    @length.setter
    def length(self, value: torch.Tensor | int) -> None:
        """After a decode step (`length += 1`): one more token in every row. With a mask the model's `+=` has
        already added it in place to the view the getter returned; the host copy follows without reading it."""
        self.lengths[:self.n] = value
        self.host[:self.n] = [value] * self.n if isinstance(value, int) else [x + 1 for x in self.host[:self.n]]

    def add(self, prefill: KVCache, tokens: int, row: int = 0) -> int:
        """Copy row `row` of a prefilled cache into the next free slot; returns the slot."""
        s = self.n
        for layer in range(len(self.k)):
            self.k[layer][s, :, :tokens] = prefill.k[layer][row, :, :tokens]
            self.v[layer][s, :, :tokens] = prefill.v[layer][row, :, :tokens]
        self.lengths[s] = tokens
        self.host[s] = tokens
        self.n += 1
        return s

    def remove(self, slot: int) -> int | None:
        """Free `slot`; the last live row moves into it. Returns the slot that moved (None when none did)."""
        last = self.n - 1
        moved = None
        if slot != last:
            n = self.host[last]
            for layer in range(len(self.k)):
                self.k[layer][slot, :, :n] = self.k[layer][last, :, :n]
                self.v[layer][slot, :, :n] = self.v[layer][last, :, :n]
            self.lengths[slot] = self.lengths[last]
            self.host[slot] = self.host[last]
            moved = last
        self.n -= 1
        return moved

    def begin_step(self) -> None:
        """Before a decode step of one token per live row: the mask over keys up to the longest row."""
        lo, hi = min(self.host[:self.n]), max(self.host[:self.n])
        self._width = hi + 1
        if lo == hi:  # rows of one length (admitted together): every key is real, no mask needed
            self.mask = None
            return
        lengths = self.lengths[:self.n]
        self.mask = (self._pos[None, :self._width] <= lengths[:, None])[:, None, None]  # [n, 1, 1, width]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.n
        if self.mask is None:  # one length: a slice write
            at = self.host[0]
            self.k[layer][:n, :, at] = k[:, :, 0]
            self.v[layer][:n, :, at] = v[:, :, 0]
        else:
            rows, pos = self._rows[:n], self.lengths[:n]
            self.k[layer][rows, :, pos] = k[:, :, 0]
            self.v[layer][rows, :, pos] = v[:, :, 0]
        return self.k[layer][:n, :, :self._width], self.v[layer][:n, :, :self._width]


@dataclass
class Params:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    ignore_eos: bool = False  # generate max_tokens whatever the model says (load tests; vLLM's field)


@dataclass
class Request:
    """One generation. `emit(kind, payload)` is called from the engine thread: ("delta", text) as text is final,
    then ("done", {"finish_reason", "prompt_tokens", "completion_tokens", "text"}), or ("error", message)."""

    prompt_ids: list[int]
    params: Params
    emit: Callable[[str, object], None]
    ids: list[int] = field(default_factory=list)
    text: str = ""  # the answer's settled text (the tokens before `read_at`)
    prefix_at: int = 0  # incremental detokenization: text up to here is settled and never decoded again,
    read_at: int = 0  # and ids[prefix_at:read_at] are decoded once more as the context of the next tokens
    sent: int = 0  # characters of text already emitted
    seed: int = 0  # of the generator a sampled request draws from (made at its first sampled token)
    generator: torch.Generator | None = None
    slot: int = -1
    t0: float = field(default_factory=time.perf_counter)
    cancelled: bool = False  # set by the HTTP side when the client went away: the row leaves at its next token


class Engine:
    """The model, its tokenizer and the batching loop (a daemon thread started by `start`)."""

    def __init__(self, model, tokenizer, eos_ids: set[int], max_batch: int = 64, device: str = "cpu"):
        self.model = model.to(device).eval()
        self.tok = tokenizer
        self.eos_ids = set(eos_ids)
        self.max_batch = max_batch
        self.device = torch.device(device)
        self.context = model.config.max_seq_len
        w = model.lm_head.weight
        self.cache = SlotCache(model.config, max_batch, self.context, self.device, w.dtype)
        self.live: list[Request | None] = [None] * max_batch
        self.waiting: queue.Queue[Request] = queue.Queue()
        self._queue_lock = threading.Lock()  # held while a group is queued and while waiting requests are taken
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.steps = 0  # decode steps taken (the batching shows in tokens per step)
        self.tokens = 0

    # -- control
    def start(self) -> "Engine":
        self._thread = threading.Thread(target=self._loop, name="minigpt-engine", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def submit(self, req: Request) -> None:
        self.submit_all([req])

    def submit_all(self, reqs: list[Request]) -> None:
        """Queue requests; those given together are admitted together (as far as free slots allow), so rows that
        arrive as one batch decode as one, without a mask when their prompts have one length."""
        for req in reqs:
            if len(req.prompt_ids) + 1 > self.context:
                raise ValueError(f"the prompt is {len(req.prompt_ids)} tokens; the model's context is {self.context}")
            req.seed = req.params.seed if req.params.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
        with self._queue_lock:
            for req in reqs:
                self.waiting.put(req)

    # -- the loop
    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while not self._stop.is_set():
            try:
                self._admit(block=self.cache.n == 0)
                if self.cache.n:
                    self._decode()
            except Exception as e:  # noqa: BLE001 - a failing step ends its requests, never the server
                for r in [r for r in self.live if r is not None]:
                    try:
                        self._finish(r, None, error=f"generation failed: {type(e).__name__}: {e}")
                    except Exception:  # noqa: BLE001 - the row is dropped all the same
                        self.live[r.slot] = None
                self.cache.n = 0
                self.live = [None] * self.max_batch

    def _admit(self, block: bool) -> None:
        """Take waiting requests into the free slots; prompts of the same length are prefilled as one batch."""
        new: list[Request] = []
        if block:  # nothing running: wait a little for a first request
            try:
                new.append(self.waiting.get(timeout=0.05))
            except queue.Empty:
                return
        with self._queue_lock:  # a group being queued is taken whole
            while self.cache.n + len(new) < self.max_batch:
                try:
                    new.append(self.waiting.get_nowait())
                except queue.Empty:
                    break
        groups: dict[int, list[Request]] = {}
        for req in new:
            groups.setdefault(len(req.prompt_ids), []).append(req)
        for length, reqs in groups.items():
            for r in [r for r in reqs if r.cancelled]:  # its client left while it waited: no prefill
                self._finish(r, "cancelled")
            reqs = [r for r in reqs if not r.cancelled]
            if not reqs:
                continue
            try:
                ids = torch.tensor([r.prompt_ids for r in reqs], device=self.device)
                prefill = self.model.new_cache(len(reqs), length)
                logits = self.model(ids, cache=prefill)[:, -1]
            except Exception as e:  # noqa: BLE001 - these requests fail; the running batch goes on
                for r in reqs:
                    r.emit("error", f"prefill failed: {type(e).__name__}: {e}")
                continue
            for i, req in enumerate(reqs):
                req.slot = self.cache.add(prefill, length, row=i)
                self.live[req.slot] = req
            for req, row in zip(reqs, logits):
                self._take(req, row)

    def _decode(self) -> None:
        n = self.cache.n
        rows = [self.live[s] for s in range(n)]
        last = torch.tensor([[r.ids[-1]] for r in rows], device=self.device)
        self.cache.begin_step()
        logits = self.model(last, position_ids=self.cache.lengths[:n, None].clone(), cache=self.cache)[:, -1]
        self.steps += 1
        greedy = logits.argmax(-1).tolist()  # one op for every row; sampled rows draw below
        for r, row, g in zip(rows, logits, greedy):
            self._take(r, row, g)

    def _take(self, req: Request, logits: torch.Tensor, greedy: int | None = None) -> None:
        """Sample the request's next token, emit the text that is final, and end the request if it is done."""
        p = req.params
        if req.cancelled:
            return self._finish(req, "cancelled")
        if p.temperature <= 0:
            tok = greedy if greedy is not None else int(logits.argmax())
        else:
            if req.generator is None:
                req.generator = torch.Generator(device=self.device).manual_seed(req.seed)
            tok = int(sample_next(logits[None], p.temperature, None, p.top_p if p.top_p < 1 else None,
                                  req.generator))
        self.tokens += 1
        if tok in self.eos_ids and not p.ignore_eos:
            return self._finish(req, "stop")
        req.ids.append(tok)
        old = len(req.text)
        text = self._settle(req)
        # only the new text, and a stop string's length before it, can hold a stop string not seen before
        cut = min((i for i in (text.find(s, max(0, old - len(s) + 1)) for s in p.stop if s) if i >= 0), default=-1)
        if cut >= 0:
            return self._finish(req, "stop", text[:cut])
        if len(req.ids) >= p.max_tokens or len(req.prompt_ids) + len(req.ids) >= self.context:
            return self._finish(req, "length")
        final = len(text)
        for s in p.stop:  # hold back what may be the start of a stop string
            for k in range(min(len(s) - 1, final), 0, -1):
                if text.endswith(s[:k], 0, final):
                    final -= k
                    break
        if final > req.sent:
            req.emit("delta", text[req.sent:final])
            req.sent = final

    def _settle(self, req: Request) -> str:
        """The answer's text, decoding only the tokens since the last settled point (linear in the answer's
        length, not quadratic): new tokens are decoded with a few tokens before them as context, and become
        settled text unless they end inside a character split across tokens (then they wait for the rest)."""
        before = self.tok.decode(req.ids[req.prefix_at:req.read_at])
        now = self.tok.decode(req.ids[req.prefix_at:])
        if len(now) > len(before) and not now.endswith("\ufffd"):
            req.text += now[len(before):]
            req.prefix_at, req.read_at = req.read_at, len(req.ids)
        return req.text

    def _finish(self, req: Request, reason: str | None, text: str | None = None, error: str | None = None) -> None:
        if text is None:
            text = self.tok.decode(req.ids)
        if req.slot >= 0:
            moved = self.cache.remove(req.slot)
            if moved is not None:
                self.live[req.slot] = self.live[moved]
                self.live[req.slot].slot = req.slot
                self.live[moved] = None
            else:
                self.live[req.slot] = None
            req.slot = -1
        if error is not None:
            req.emit("error", error)
            return
        if len(text) > req.sent:
            req.emit("delta", text[req.sent:])
            req.sent = len(text)
        req.emit("done", {"finish_reason": reason, "prompt_tokens": len(req.prompt_ids),
                          "completion_tokens": len(req.ids), "text": text})




def load_engine(model_dir: Path, device: str = "cpu", max_batch: int = 64) -> tuple[Engine, object]:
    """(engine, HF tokenizer) for a model folder with its tokenizer files; the end tokens are the tokenizer's
    end-of-text and the chat template's end of turn."""
    from minigpt_assets.data.chat import _hf_tokenizer
    from minigpt_assets.models.interop import from_pretrained

    model = from_pretrained(model_dir)
    hf = _hf_tokenizer(str(model_dir))
    eos = {i for i in (hf.eos_token_id, model.config.eos_token_id) if isinstance(i, int)}
    end = hf.convert_tokens_to_ids("<|im_end|>")
    if isinstance(end, int) and end != hf.unk_token_id:
        eos.add(end)

    class _Decode:
        def decode(self, ids):
            return hf.decode(ids, skip_special_tokens=True)

    return Engine(model, _Decode(), eos, max_batch, device), hf
