"""`minigpt bench minimind`: MiniMind's own pretraining script as an anchor next to `minigpt bench train`.

What it measures. `trainer/train_pretrain.py` of a user's MiniMind checkout (`--minimind DIR`, e.g. `git archive
c090b69` of jingyaogong/minimind, the last MiniMind2 revision) runs unmodified, in its own process, its defaults
kept except the shape, the data, the batch, the sequence length and the device. It is timed from outside: before
its script runs (runpy), `torch.utils.data.DataLoader` is replaced by a subclass that watches the batches its loop
takes from its `PretrainDataset`. After `warmup` batches it synchronizes the device and starts the clock, counts
the real (non-pad) tokens of the next `steps` batches, and when the loop asks for one more it synchronizes, stops
the clock and ends the run. The time covers exactly `steps` bodies of its loop (waiting for data, the copy to the
device, forward, backward, its optimizer step every `accumulation_steps`, its logging), not start-up, dataset
loading or the start of its DataLoader workers. Next to it, our `bench train` variants (`--impls`) run on the same
shape (our `minimind2-small` recipe; MiniMind is given its hidden_size and num_layers), batch and sequence length.

The same documents: the train plan of a materialized mixture, exported as MiniMind's pretrain jsonl
(`{"text": ...}`). Variants of its side: `docs` (one document per line), `chunks` (documents first cut into pieces
of at most `seq` MiniMind tokens, the way its own pretrain data is prepared), `+compile` (its `--use_compile 1`).
Ours trains on the mixture's token stream: the same documents packed, each followed by its end-of-document token.

Fair and unfair:
- The tokenizers differ (MiniMind's against the mixture's), so a token is not the same amount of text. The table
  gives tokens/s in each side's own tokens and MB of text/s (the UTF-8 bytes of the text each side trained on),
  and the ratio to MiniMind in both; bytes/s is the comparison that does not depend on the tokenizer.
- MiniMind truncates every line to `seq` tokens and pads the rest: the truncated text is not trained on, and pad
  slots are computed but not counted (pad share). Ours packs documents and pads nothing.
- Its gradient accumulation (an optimizer step every 8 micro-batches by default), its blocking copies to the device
  and its logging syncs are kept as MiniMind has them: that is the trainer a user runs. A "step" is one body of
  each side's loop with `batch` rows, so MiniMind takes one optimizer step where ours takes eight.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from minigpt_assets.isolated import spawn, worker

VARIANTS = ("docs", "chunks", "docs+compile", "chunks+compile")
NEEDS = ("trainer/train_pretrain.py", "model/tokenizer.json", "dataset/lm_dataset.py")
MODULE = "minigpt_assets.training.bench_minimind"


def missing(checkout: Path) -> str | None:
    """What a MiniMind checkout lacks for the bench, in words (None: nothing)."""
    if not checkout.is_dir():
        return "no such folder"
    lack = [p for p in NEEDS if not (checkout / p).is_file()]
    return f"no {', '.join(lack)} (expected a checkout of jingyaogong/minimind)" if lack else None


# --------------------------------------------------------------------------------------------- the documents


def plan_texts(store, mixture: str) -> tuple[list[str], dict]:
    """One text per segment of the mixture's train plan, in plan order (a segment the plan cuts is our tokens
    decoded), and our stream's size: tokens (each document's eos included) and text bytes."""
    import pyarrow.parquet as pq

    from minigpt_assets.data.loader import open_mixture
    from minigpt_assets.data.tokenizer import eos_id, load_tokenizer

    mix = store.require("mixture", mixture)
    meta = json.loads((mix.path / "mixture.json").read_text())
    tok_name = mix.manifest["meta"]["tokenizer"]
    tok_dir = store.require("tokenizer", tok_name).path
    ours, eos = load_tokenizer(tok_dir), eos_id(tok_dir)
    stream = open_mixture(mix.path, "train")  # the plan and the token arrays, as training reads them
    plan, arrays = stream.plan, stream.arrays
    index, by_id = {}, {}
    for src, s in meta["sources"].items():
        rows = pq.read_table(Path(s["path"]) / "index.parquet", filters=[("split", "=", "train")]).to_pylist()
        index[src] = {r["id"]: r for r in rows}
        want = sorted({i for i, p in zip(plan.ids, plan.sources) if p == src})
        for f in sorted(store.require("deduplicated_documents", src).path.glob("*.parquet")):
            for r in pq.read_table(f, columns=["id", "text"], filters=[("id", "in", want)]).to_pylist():
                by_id[r["id"]] = r["text"]
    texts, tokens, nbytes, cut = [], 0, 0.0, 0
    for src, doc, start, length, offset in zip(plan.sources, plan.ids, plan.start.tolist(), plan.length.tolist(),
                                               plan.doc_offset.tolist()):
        ix = index[src][doc]
        whole = length == ix["length"] and offset == 0
        text = by_id.get(doc) if whole else None
        if text is None:  # byte-level BPE: decoding our tokens gives the text back
            lo = start + offset
            text = ours.decode([int(t) for t in arrays[src][lo: lo + length] if t != eos])
            cut += not whole
        texts.append(text)
        tokens += length
        nbytes += ix["bytes"] * length / ix["length"]
    return texts, {"mixture": mixture, "our_tokenizer": tok_name, "plan_segments": len(plan.ids), "cut_segments": cut,
                   "ours_stream_tokens": int(tokens), "ours_bytes_per_token": nbytes / max(1, tokens)}


def _write_jsonl(path: Path, texts: list[str], min_lines: int) -> int:
    reps = -(-min_lines // max(1, len(texts)))
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(reps):
            f.writelines(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts)
    return reps * len(texts)


def export_documents(store, mixture: str, out: Path, min_lines: int, seq: int, mm_tokenizer: Path) -> dict:
    """The plan's texts as MiniMind jsonl in `out` (docs.jsonl; chunks.jsonl: cut into pieces of <= `seq` of its
    tokens), each repeated to at least `min_lines` lines (its DataLoader must not run out within the timed
    steps), and the numbers the table needs."""
    import numpy as np
    from tokenizers import Tokenizer

    texts, stats = plan_texts(store, mixture)
    if not texts:
        raise ValueError(f"mixture {mixture} has an empty train plan")
    mm = Tokenizer.from_file(str(mm_tokenizer))
    lens, chunks = [], []
    for e in mm.encode_batch(texts, add_special_tokens=False):
        lens.append(len(e.ids))
        pieces = mm.decode_batch([e.ids[lo: lo + seq] for lo in range(0, len(e.ids), seq)])
        chunks += [p for p in pieces if p.strip()]
    out.mkdir(parents=True, exist_ok=True)
    lens = np.array(lens)
    return {**stats, "docs_lines": _write_jsonl(out / "docs.jsonl", texts, min_lines),
            "chunks_lines": _write_jsonl(out / "chunks.jsonl", chunks, min_lines), "chunk_pieces": len(chunks),
            "minimind_vocab": mm.get_vocab_size(), "minimind_tokens_per_doc_median": float(np.median(lens)),
            "minimind_docs_over_seq": float((lens > seq).mean())}


# ------------------------------------------------------------------------------- MiniMind's side, timed from outside


class _Done(BaseException):  # not an Exception: nothing in its script catches it
    pass


def _datasets_stand_in() -> None:
    """Its dataset reads the jsonl with `datasets.load_dataset('json')`; without `datasets`, a list of dicts."""
    try:
        import datasets  # noqa: F401
    except ImportError:
        import types

        def load_dataset(kind, data_files=None, split=None, **_):
            with open(data_files, encoding="utf-8") as f:
                return [json.loads(line) for line in f if line.strip()]

        m = types.ModuleType("datasets")
        m.load_dataset = load_dataset
        sys.modules["datasets"] = m


def time_minimind(job: dict) -> dict:
    """In the worker process: run its script (runpy, as __main__) in `job['cwd']` with `job['args']`, and time
    `job['steps']` bodies of its loop after `job['warmup']`."""
    import runpy

    import torch
    import torch.utils.data as tud

    warmup, steps, root = job["warmup"], job["steps"], job["root"]
    gpu = job["device"].startswith("cuda")
    st = {"taken": 0, "rows": [], "real": 0, "wait": 0.0, "t0": 0.0, "t1": 0.0, "pad": None}

    def sync():
        if gpu:
            torch.cuda.synchronize()

    class TimedLoader(tud.DataLoader):
        def __iter__(self):
            it = super().__iter__()
            if type(self.dataset).__name__ != "PretrainDataset":
                return it
            st["pad"] = pad = self.dataset.tokenizer.pad_token_id

            def batches():
                while True:
                    k = st["taken"]
                    if k == warmup:
                        sync()
                        st["t0"] = time.perf_counter()
                    if k == warmup + steps:
                        sync()
                        st["t1"] = time.perf_counter()
                        raise _Done
                    t = time.perf_counter()
                    try:
                        batch = next(it)
                    except StopIteration:
                        return  # an epoch ended; the next epoch's loader goes on counting
                    if k >= warmup:
                        st["wait"] += time.perf_counter() - t
                        st["real"] += int((batch[0] != pad).sum())
                        st["rows"].append(batch[0].clone())
                    st["taken"] = k + 1
                    yield batch

            return batches()

    _datasets_stand_in()
    tud.DataLoader = TimedLoader
    script = os.path.join(root, "trainer", "train_pretrain.py")
    sys.argv = [script, *job["args"]]
    sys.path.insert(0, root)  # its packages (model, dataset, trainer) before anything else of those names
    sys.dont_write_bytecode = True  # leave no __pycache__ in the user's checkout
    os.chdir(job["cwd"])
    try:
        runpy.run_path(script, run_name="__main__")
    except _Done:
        pass
    else:
        raise RuntimeError(f"its loop ended after {st['taken']} batches, before {warmup + steps} "
                           f"(too few lines in its jsonl?)")
    return {"side": f"minimind {job['variant']}", **count(st["rows"], st["pad"], os.path.join(root, "model"),
                                                         st["t1"] - st["t0"], steps),
            "real_tokens": st["real"], "data_wait": st["wait"] / (st["t1"] - st["t0"]),
            "params_M": _params(job["args"]), "device": torch.cuda.get_device_name() if gpu else "cpu"}


def count(rows: list, pad: int, model_dir: str, elapsed: float, steps: int) -> dict:
    """Tokens and text bytes of the timed batches (`rows`: input_ids tensors): real = not pad; the text is its
    tokens decoded (byte-level BPE: the document up to the truncation point)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    real = slots = nbytes = 0
    for x in rows:
        ids = [[int(t) for t in r if t != pad] for r in x.tolist()]
        real += sum(map(len, ids))
        slots += x.numel()
        nbytes += sum(len(s.encode("utf-8")) for s in tok.decode_batch(ids, skip_special_tokens=True))
    return {"batch": rows[0].shape[0], "seq": rows[0].shape[1], "steps": steps, "step_ms": elapsed / steps * 1e3,
            "tokens_per_s": real / elapsed, "pad_share": 1 - real / slots, "bytes_per_token": nbytes / max(1, real),
            "bytes_per_s": nbytes / elapsed}


def _params(args: list[str]) -> float | None:
    """Its model's size, built on the meta device the way its script builds it (None where that fails)."""
    import torch

    try:
        from model.model_minimind import MiniMindConfig, MiniMindForCausalLM

        flag = {a: int(args[i + 1]) for i, a in enumerate(args[:-1]) if a in ("--hidden_size", "--num_hidden_layers")}
        with torch.device("meta"):
            m = MiniMindForCausalLM(MiniMindConfig(hidden_size=flag.get("--hidden_size", 512),
                                                   num_hidden_layers=flag.get("--num_hidden_layers", 8)))
        return sum(p.numel() for p in m.parameters()) / 1e6
    except Exception:  # noqa: BLE001 - the size is a note, not the measurement
        return None


def minimind_args(data: Path, model: dict, batch: int, seq: int, device: str, workers: int, save: Path,
                  variant: str) -> list[str]:
    """Its command line: the shape, the data and the batch; no checkpoint within the run."""
    args = ["--data_path", str(data / f"{variant.split('+')[0]}.jsonl"), "--hidden_size", str(model["hidden_size"]),
            "--num_hidden_layers", str(model["num_layers"]), "--max_seq_len", str(seq), "--batch_size", str(batch),
            "--device", "cuda:0" if device.startswith("cuda") else "cpu", "--dtype", "bfloat16",
            "--num_workers", str(workers), "--epochs", "1", "--save_dir", str(save), "--save_interval", str(10**9)]
    return args + (["--use_compile", "1"] if variant.endswith("+compile") else [])


# ---------------------------------------------------------------------------------------------- both sides


def run_minimind_bench(checkout: Path, store, mixture: str, model_name: str, model: dict, device: str, batch: int,
                       seq: int, steps: int, warmup: int, impls: list[str], variants: list[str], workers: int,
                       budget_s: float, out: Path | None = None) -> list[dict]:
    """Export the documents, run MiniMind's variants and ours (its first variant, ours, then its others), each in
    its own process and within what is left of `budget_s`, and print the table."""
    from minigpt_assets.tables import format_table
    from minigpt_assets.training.bench import TrainJob

    checkout, t0 = Path(checkout).resolve(), time.monotonic()
    with tempfile.TemporaryDirectory(prefix="minigpt-minimind-") as tmp:
        work = Path(tmp)
        ex = export_documents(store, mixture, work / "data", (warmup + steps + 2) * batch, seq,
                              checkout / "model" / "tokenizer.json")
        print(f"bench minimind: {steps} timed steps after {warmup}, batch {batch} x seq {seq}, on {device}; "
              f"mixture {mixture}: {ex['plan_segments']} documents ({ex['docs_lines']} lines, {ex['chunks_lines']} "
              f"in chunks), ours {ex['ours_bytes_per_token']:.3f} bytes/token", flush=True)
        for d in ("trainer", "out"):
            (work / "mm" / d).mkdir(parents=True)
        (work / "mm" / "model").symlink_to(checkout / "model")  # it loads its tokenizer from ../model
        raw = []
        for side, name in [("mm", variants[0]), *(("ours", i) for i in impls), *(("mm", v) for v in variants[1:])]:
            ident = {"side": f"minimind {name}" if side == "mm" else name}
            left = budget_s - (time.monotonic() - t0)
            if left < 5:
                raw.append({**ident, "error": "not run: the --timeout budget is spent"})
            elif side == "mm":
                job = {"root": str(checkout), "cwd": str(work / "mm" / "trainer"), "variant": name, "device": device,
                       "warmup": warmup, "steps": steps, "args": minimind_args(work / "data", model, batch, seq,
                                                                              device, workers, work / "mm" / "out",
                                                                              name)}
                raw.append(spawn(MODULE, job, ident, timeout=left))
            else:
                job = TrainJob(model_name, model, name, device, batch, seq, steps, warmup,
                               mixture=str(store.require("mixture", mixture).path))
                raw.append({**spawn("minigpt_assets.training.bench", asdict(job), ident, timeout=left), **ident})
            r = raw[-1]
            done = r["error"][:120] if "error" in r else f"{r['step_ms']:.1f} ms/step, {r['tokens_per_s']:,.0f} tokens/s"
            print(f"  {r['side']:<22} {done}", flush=True)
    rows = summarize(raw, ex)
    ref = _reference(rows)
    print()
    print(format_table(*table(rows)))
    print(f"\nMiniMind's tokenizer: median {ex['minimind_tokens_per_doc_median']:.0f} tokens a document, "
          f"{ex['minimind_docs_over_seq']:.0%} longer than {seq} (truncated); 'docs': one document a line, truncated "
          f"and padded by its dataset; 'chunks': cut into pieces of <= {seq} of its tokens first. A MiniMind step is "
          f"one micro-batch (its optimizer steps every 8). Ratios are to "
          f"{repr(ref['side']) if ref else 'none (none ran)'}.")
    if out:
        out.write_text(json.dumps({"rows": rows, "export": ex}, indent=2) + "\n")
    return rows


def summarize(raw: list[dict], ex: dict) -> list[dict]:
    """Rows in one vocabulary: ours in our tokens (no pad; text bytes from the stream's bytes per token); the
    ratios are to the first MiniMind row that ran."""
    rows = []
    for r in raw:
        if "error" in r:
            rows.append({"side": r["side"], "error": r["error"]})
        elif r["side"].startswith("minimind"):
            rows.append({**r, "tokenizer": f"MiniMind ({ex['minimind_vocab']})"})
        else:
            bpt = ex["ours_bytes_per_token"]
            rows.append({"side": r["side"], "tokenizer": f"ours: {ex['our_tokenizer']}", "batch": r["batch"],
                         "seq": r["seq"], "step_ms": r["step_ms"],
                         "tokens_per_s": r["tokens_per_s"], "pad_share": 0.0, "bytes_per_token": bpt,
                         "bytes_per_s": r["tokens_per_s"] * bpt, "data_wait": r["data_wait"],
                         "params_M": r["params_M"], "device": r["device"], "last_loss": r["last_loss"]})
    ref = _reference(rows)
    for r in rows:
        if ref and "error" not in r:
            r["x_minimind_bytes"] = r["bytes_per_s"] / ref["bytes_per_s"]
            r["x_minimind_tokens"] = r["tokens_per_s"] / ref["tokens_per_s"]
    return rows


def _reference(rows: list[dict]) -> dict | None:
    """The row the ratios are to: the first MiniMind run that did not fail."""
    return next((r for r in rows if r["side"].startswith("minimind") and "error" not in r), None)


def table(rows: list[dict]) -> tuple[list[str], list[tuple]]:
    cols = ["side", "tokenizer", "batch x seq", "step ms", "tokens/s (real, own tokenizer)", "pad share",
            "bytes/token", "text MB/s", "x MiniMind (bytes/s)", "x MiniMind (tokens/s)"]
    out = []
    for r in rows:
        if "error" in r:
            out.append((r["side"], r["error"][:100], *[""] * 8))
            continue
        ratio = [f"{r[k]:.2f}x" if k in r else "" for k in ("x_minimind_bytes", "x_minimind_tokens")]
        out.append((r["side"], r["tokenizer"], f"{r['batch']}x{r['seq']}", f"{r['step_ms']:.1f}",
                    f"{r['tokens_per_s']:,.0f}", f"{r['pad_share']:.1%}", f"{r['bytes_per_token']:.3f}",
                    f"{r['bytes_per_s'] / 1e6:.3f}", *ratio))
    return cols, out


if __name__ == "__main__":
    sys.exit(worker(time_minimind, sys.argv[1:], lambda job: {"side": f"minimind {job['variant']}"}))
