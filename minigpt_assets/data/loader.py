"""The training loader: packed `seq_len + 1` windows over a mixture plan, deterministic, sharded and resumable.

The mixture's token stream (plan segments read from memory-mapped token arrays) is cut into consecutive
windows of `seq_len + 1` tokens. The order of windows is a seeded permutation per epoch that does not depend on
the number of ranks: global batch `b` is windows `order[b*B:(b+1)*B]`, and rank `r` of `W` takes every W-th of
them. A state dict `{epoch, step}` therefore resumes the same global stream on any world size that divides B.
Each window carries document boundaries (position ids restart at 0, and a document index per token) for
document-aware attention masks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import xxhash

from minigpt_assets.data.mixture import Plan


class PackedTokens:
    """Random access to window i of the plan's token stream, with document boundaries."""

    def __init__(self, plan: Plan, arrays: dict[str, np.ndarray], seq_len: int):
        self.plan, self.arrays, self.seq_len = plan, arrays, seq_len
        self.window = seq_len + 1
        self.num_windows = plan.total // self.window
        missing = set(plan.sources) - set(arrays)
        if missing:
            raise KeyError(f"no token array for source(s) {sorted(missing)} of the plan")

    def __len__(self) -> int:
        return self.num_windows

    def window_tokens(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens [seq_len+1], document index per token starting at 0) of window i."""
        lo, hi = i * self.window, (i + 1) * self.window
        p = self.plan
        seg = int(np.searchsorted(p.ends, lo, side="right"))
        toks = np.empty(self.window, dtype=np.int64)
        docs = np.empty(self.window, dtype=np.int64)
        pos, d = lo, 0
        while pos < hi:
            seg_start = int(p.ends[seg] - p.length[seg])
            a = pos - seg_start
            b = min(hi, int(p.ends[seg])) - seg_start
            src = self.arrays[p.sources[seg]]
            s0 = int(p.start[seg]) + int(p.doc_offset[seg])
            toks[pos - lo: pos - lo + (b - a)] = src[s0 + a: s0 + b]
            docs[pos - lo: pos - lo + (b - a)] = d
            pos = seg_start + b
            seg += 1
            d += 1
        return toks, docs


def _positions(docs: np.ndarray) -> np.ndarray:
    """Position ids that restart at 0 at every document boundary."""
    starts = np.r_[0, np.flatnonzero(np.diff(docs)) + 1]
    pos = np.arange(len(docs))
    return pos - np.repeat(starts, np.diff(np.r_[starts, len(docs)]))


@dataclass
class LoaderState:
    epoch: int = 0
    step: int = 0  # global batches consumed in this epoch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step}


@dataclass
class PackedLoader:
    """Batches of `batch_size` (global) windows; this rank gets `batch_size // world_size` of each."""

    data: PackedTokens
    batch_size: int
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    worker_id: int = 0
    num_workers: int = 1
    state: LoaderState = field(default_factory=LoaderState)
    _order: tuple[int, np.ndarray] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.batch_size % self.world_size:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by world_size {self.world_size}")
        if len(self.data) < self.batch_size:
            raise ValueError(f"the plan has {len(self.data)} windows, fewer than one batch of {self.batch_size}")

    @property
    def steps_per_epoch(self) -> int:
        return len(self.data) // self.batch_size

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's window order: a function of (seed, epoch) only, never of rank or world size."""
        if self._order is None or self._order[0] != epoch:
            rng = np.random.default_rng(xxhash.xxh64_intdigest(f"loader:{self.seed}:{epoch}".encode()))
            self._order = (epoch, rng.permutation(len(self.data)))
        return self._order[1]

    def global_batch_indices(self, epoch: int, step: int) -> np.ndarray:
        return self.order(epoch)[step * self.batch_size:(step + 1) * self.batch_size]

    def batch(self, epoch: int, step: int) -> dict[str, np.ndarray]:
        idx = self.global_batch_indices(epoch, step)[self.rank::self.world_size]
        return make_batch(self.data, idx)

    def provenance(self, epoch: int, step: int) -> list[list[dict]]:
        """For each window of global batch (epoch, step): the documents (source, id, offset) its tokens came from."""
        w = self.data.window
        return [self.data.plan.provenance(int(i) * w, (int(i) + 1) * w)
                for i in self.global_batch_indices(epoch, step)]

    def schedule(self, state: LoaderState) -> Iterator[tuple[int, int, LoaderState]]:
        """(epoch, step, the state after it) of every batch from `state` on that this worker makes; DataLoader
        worker w of k takes the steps with step % k == w."""
        while True:
            if state.step >= self.steps_per_epoch:
                state = LoaderState(state.epoch + 1, 0)
            epoch, step = state.epoch, state.step
            state = LoaderState(epoch, step + 1)
            if step % self.num_workers == self.worker_id:
                yield epoch, step, state

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        """Endless batches from the current state."""
        for epoch, step, after in self.schedule(self.state):
            self.state = after
            yield self.batch(epoch, step)

    def state_dict(self) -> dict:
        return self.state.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.state = LoaderState(int(state["epoch"]), int(state["step"]))


def make_batch(data, idx) -> dict[str, np.ndarray]:
    """Inputs, next-token labels, document ids and restarted positions of windows `idx`. Data with a
    `window_mask` (chat) trains only where the mask is 1: other labels are -100 (ignored by the loss)."""
    if hasattr(data, "make_batch"):  # rows that are not packed windows (preference pairs)
        return data.make_batch(idx)
    toks, docs = zip(*(data.window_tokens(int(i)) for i in idx))
    t, d = np.stack(toks), np.stack(docs)
    labels = t[:, 1:].copy()
    if hasattr(data, "window_mask"):
        mask = np.stack([data.window_mask(int(i)) for i in idx])
        labels[mask[:, 1:] == 0] = -100
    return {"input_ids": t[:, :-1], "labels": labels, "doc_ids": d[:, :-1],
            "position_ids": np.stack([_positions(x) for x in d[:, :-1]]), "windows": np.asarray(idx)}


def open_mixture(folder: Path, split: str = "train") -> PackedTokens:
    """PackedTokens of a materialized `mixture` artifact (its mixture.json names the token arrays)."""
    import json

    from minigpt_assets.data.tokens import open_tokens

    meta = json.loads((Path(folder) / "mixture.json").read_text())
    plan = Plan(Path(folder) / f"plan_{split}.parquet")
    arrays = {s: open_tokens(Path(v["path"]), split, v["dtype"]) for s, v in meta["sources"].items()}
    return PackedTokens(plan, arrays, meta["seq_len"])


class ArrayTokens:
    """Windows over one flat token array in which `eos` ends every document: the same interface as
    `PackedTokens` (len, window, window_tokens) for tests and quick experiments without a mixture artifact."""

    def __init__(self, tokens: np.ndarray, seq_len: int, eos: int):
        self.tokens, self.seq_len, self.eos = np.asarray(tokens), seq_len, eos
        self.window = seq_len + 1
        self.num_windows = len(self.tokens) // self.window
        ends = np.asarray(self.tokens == eos, dtype=np.int64)
        self._doc = np.concatenate([[0], np.cumsum(ends)[:-1]])  # a document ends after its eos token

    def __len__(self) -> int:
        return self.num_windows

    def window_tokens(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = i * self.window, (i + 1) * self.window
        docs = self._doc[lo:hi]
        return self.tokens[lo:hi].astype(np.int64), docs - docs[0]


PINNED = ("input_ids", "labels", "doc_ids", "position_ids")


class Prefetcher:
    """The loader's batches, made `depth` ahead by a background thread, so the training step never waits for
    them; with `pin`, the token arrays come as pinned tensors, which copy to a GPU without blocking. The
    loader's state advances only as each batch is taken, so a checkpoint resumes after the last batch trained."""

    def __init__(self, loader: PackedLoader, depth: int = 2, pin: bool = False):
        import queue
        import threading

        self.loader, self.pin = loader, pin
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._produce, args=(loader.state,), daemon=True,
                                        name="minigpt-prefetch")
        self._thread.start()

    def _put(self, item) -> bool:
        """Queue `item` unless the consumer closed us first (False then)."""
        import queue

        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, state: LoaderState) -> None:
        try:
            for epoch, step, after in self.loader.schedule(state):
                if not self._put((after, self._pinned(self.loader.batch(epoch, step)))):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            self._put((None, e))

    def _pinned(self, batch: dict) -> dict:
        if not self.pin:
            return batch
        import torch

        return {k: torch.from_numpy(np.ascontiguousarray(v)).pin_memory() if k in PINNED else v
                for k, v in batch.items()}

    def __iter__(self) -> "Prefetcher":
        return self

    def __next__(self) -> dict:
        if self._error is not None:  # the producer has stopped: every later call raises the same error
            raise self._error
        state, batch = self._queue.get()
        if state is None:
            self._error = batch
            raise batch
        self.loader.state = state
        return batch

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
