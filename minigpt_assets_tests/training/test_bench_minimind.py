"""`minigpt bench minimind` against a stand-in MiniMind checkout (no network, no MiniMind code): a folder with the
interface its trainer/train_pretrain.py has (its flags, `dataset.lm_dataset.PretrainDataset` padding to max
length with the tokenizer's pad id, `model.model_minimind`, tokenizer files in model/, a loop over DataLoader)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from minigpt_assets.cli import main
from minigpt_assets.defs.runner import materialize_graph
from minigpt_assets.settings import Settings
from minigpt_assets.store import ArtifactStore
from minigpt_assets_tests.conftest import write

DATA = {"source_documents", "filtered_documents", "quality_classifier", "dedup_index", "deduplicated_documents",
        "tokenizer", "token_shards", "mixture"}

TRAINER = """
import argparse
import os
import sys

sys.path.append(os.path.abspath(os.path.join(os.path.dirname(__file__), '..')))
import torch
from torch.utils.data import DataLoader
from transformers import AutoTokenizer

from dataset.lm_dataset import PretrainDataset
from model.model_minimind import MiniMindConfig, MiniMindForCausalLM

if __name__ == "__main__":
    p = argparse.ArgumentParser()
    for name, kind, default in [("save_dir", str, "../out"), ("epochs", int, 1), ("batch_size", int, 32),
                                ("learning_rate", float, 5e-4), ("device", str, "cpu"), ("dtype", str, "bfloat16"),
                                ("num_workers", int, 8), ("accumulation_steps", int, 8), ("log_interval", int, 100),
                                ("save_interval", int, 1000), ("hidden_size", int, 512), ("num_hidden_layers", int, 8),
                                ("max_seq_len", int, 340), ("data_path", str, "../dataset/pretrain_hq.jsonl"),
                                ("use_compile", int, 0)]:
        p.add_argument("--" + name, type=kind, default=default)
    args = p.parse_args()
    torch.manual_seed(42)
    tokenizer = AutoTokenizer.from_pretrained("../model")  # relative to the working directory, as MiniMind does
    model = MiniMindForCausalLM(MiniMindConfig(hidden_size=args.hidden_size,
                                               num_hidden_layers=args.num_hidden_layers)).to(args.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate)
    ds = PretrainDataset(args.data_path, tokenizer, max_length=args.max_seq_len)
    log = open(os.environ["STANDIN_LOG"] + "." + os.path.basename(args.data_path), "a")
    for epoch in range(args.epochs):
        loader = DataLoader(ds, batch_size=args.batch_size, shuffle=True, num_workers=args.num_workers)
        for step, (input_ids, labels) in enumerate(loader, start=1):
            res = model(input_ids.to(args.device), labels=labels.to(args.device))
            ((res.loss + res.aux_loss) / args.accumulation_steps).backward()
            if (step + 1) % args.accumulation_steps == 0:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            print(int((input_ids != tokenizer.pad_token_id).sum()), input_ids.numel(), file=log, flush=True)
"""

DATASET = """
import json

from torch.utils.data import Dataset


class PretrainDataset(Dataset):
    def __init__(self, data_path, tokenizer, max_length=512):
        self.tokenizer, self.max_length = tokenizer, max_length
        with open(data_path, encoding="utf-8") as f:
            self.samples = [json.loads(line) for line in f if line.strip()]

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        enc = self.tokenizer(str(self.samples[index]["text"]), max_length=self.max_length, padding="max_length",
                             truncation=True, return_tensors="pt")
        input_ids = enc.input_ids.squeeze()
        labels = input_ids.clone()
        labels[input_ids == self.tokenizer.pad_token_id] = -100
        return input_ids, labels
"""

MODEL = """
from types import SimpleNamespace

import torch
from torch import nn


class MiniMindConfig:
    def __init__(self, hidden_size=512, num_hidden_layers=8, vocab_size=512, **kw):
        self.hidden_size, self.num_hidden_layers, self.vocab_size = hidden_size, num_hidden_layers, vocab_size


class MiniMindForCausalLM(nn.Module):
    def __init__(self, config):
        super().__init__()
        d = config.hidden_size
        self.embed = nn.Embedding(config.vocab_size, d)
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(d, d), nn.GELU()) for _ in range(config.num_hidden_layers))
        self.head = nn.Linear(d, config.vocab_size, bias=False)

    def forward(self, input_ids, labels=None):
        h = self.embed(input_ids)
        for layer in self.layers:
            h = h + layer(h)
        logits = self.head(h)
        loss = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        return SimpleNamespace(logits=logits, loss=loss, aux_loss=torch.zeros(()))
"""


def standin_minimind(root: Path, tokenizer_dir: Path) -> Path:
    write(root / "trainer/train_pretrain.py", TRAINER)
    write(root / "dataset/lm_dataset.py", DATASET)
    write(root / "model/model_minimind.py", MODEL)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / f, root / "model" / f)
    return root


def test_bench_minimind_times_its_trainer_next_to_ours(tiny_training_recipes, tmp_path, capsys, monkeypatch):
    home = tmp_path / "home"
    base = ["--home", str(home), "--recipes", str(tiny_training_recipes), "bench", "minimind"]
    # one line naming what is missing, before anything runs
    (tmp_path / "empty").mkdir()
    for argv, says in (([], "give --minimind DIR"),
                       (["--minimind", str(tmp_path / "nowhere")], "no such folder"),
                       (["--minimind", str(tmp_path / "empty")], "no trainer/train_pretrain.py, model/tokenizer.json"),
                       ):
        assert main(base + argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err
    write(tmp_path / "mm/trainer/train_pretrain.py", TRAINER)
    write(tmp_path / "mm/dataset/lm_dataset.py", DATASET)
    write(tmp_path / "mm/model/tokenizer.json", "{}")
    mm = tmp_path / "mm"
    for argv, says in ((["--models", "nope"], "--models: nope is not a model recipe"),
                       (["--impls", "hf,ours"], "--impls: unknown hf"),
                       (["--variants", "docs,bpe"], "--variants: unknown bpe"),
                       (["--mixture", "mix"], "--mixture: mix is not materialized")):
        assert main(base + ["--minimind", str(mm), "--models", "tiny", *argv]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err

    materialize_graph(Settings(home=home, recipes=tiny_training_recipes, workers=1), select=DATA,
                      log=lambda _: None)
    standin_minimind(mm, ArtifactStore(home).require("tokenizer", "tiny").path)
    monkeypatch.setenv("STANDIN_LOG", str(tmp_path / "steps"))
    warmup, steps, batch, seq = 2, 3, 2, 128
    out = tmp_path / "rows.json"
    assert main(base + ["--minimind", str(mm), "--models", "tiny", "--mixture", "mix", "--batch", str(batch),
                        "--seq", str(seq), "--steps", str(steps), "--warmup", str(warmup), "--impls", "ours",
                        "--variants", "docs,chunks", "--device", "cpu", "--workers", "0", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "x MiniMind (bytes/s)" in printed and "minimind chunks" in printed
    res = json.loads(out.read_text())
    rows = {r["side"]: r for r in res["rows"]}
    assert list(rows) == ["minimind docs", "ours", "minimind chunks"] and not any("error" in r for r in rows.values())
    for variant in ("docs", "chunks"):
        r = rows[f"minimind {variant}"]
        # its loop ran exactly warmup + steps bodies; the timed ones' real tokens are what it saw as non-pad
        seen = [tuple(map(int, line.split())) for line in (tmp_path / f"steps.{variant}.jsonl").read_text().split("\n")
                if line]
        assert len(seen) == warmup + steps
        assert r["real_tokens"] == sum(real for real, _ in seen[warmup:])
        assert r["pad_share"] == 1 - r["real_tokens"] / sum(slots for _, slots in seen[warmup:])
        assert (r["batch"], r["seq"], r["steps"]) == (batch, seq, steps) and r["step_ms"] > 0
        assert r["params_M"] > 0 and 0 <= r["data_wait"] < 1
    ours, ref = rows["ours"], rows["minimind docs"]
    assert ours["pad_share"] == 0 and (ours["batch"], ours["seq"]) == (batch, seq) and ours["tokens_per_s"] > 0
    # the stand-in uses the mixture's own tokenizer, so both sides' text per token agree (ours counts each eos)
    assert abs(ref["bytes_per_token"] / ours["bytes_per_token"] - 1) < 0.25
    assert ref["x_minimind_bytes"] == ref["x_minimind_tokens"] == 1.0
    assert ours["x_minimind_bytes"] == ours["bytes_per_s"] / ref["bytes_per_s"] > 0
    ex = res["export"]
    assert ex["docs_lines"] >= (warmup + steps + 2) * batch and ex["chunk_pieces"] > ex["plan_segments"]
