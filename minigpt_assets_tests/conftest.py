"""Shared fixtures: a throwaway artifact root and a small recipe set that runs in seconds."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from minigpt_assets.settings import quiet_openmp

quiet_openmp()  # both xdist workers train on 2 cores (before any test imports torch; subprocesses inherit it)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """Never read or write the user's ./.minigpt or ~/.dagster from tests."""
    monkeypatch.setenv("MINIGPT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


PROSE = [
    "The quick analysis of the data shows that the method is sound and that the results hold across every split "
    "we tried. We describe the setup, the measurements and the limits of the approach in the sections below, "
    "and we note where the evidence is weak and where it is strong.",
    "A recipe names a source, the filters that apply to it and the group in which its documents are deduplicated. "
    "The pipeline reads the recipe, streams the records into shards and reports what it removed and why, so that "
    "a user can trust the numbers that reach the training run.",
    "Documents that appear in two sources are kept once, in the source with the higher priority, and the others "
    "are counted as duplicates. The index is built from signatures computed per shard, so the work spreads over "
    "many processes and only the final join is global.",
]


VOCAB = sorted({w.strip(".,").lower() for p in PROSE for w in p.split()})


def prose_doc(seed: int, words: int = 80) -> str:
    """Distinct English-looking text (no two seeds are near duplicates), deterministic per seed."""
    import random

    rng = random.Random(seed)
    sents = []
    for _ in range(words // 10):
        ws = [rng.choice(VOCAB) for _ in range(10)]
        sents.append(" ".join(ws).capitalize() + ".")
    return " ".join(sents)


@pytest.fixture
def tiny_recipes(tmp_path) -> Path:
    """Two jsonl sources sharing documents, one spam source, a classifier, a dedup group and profiles."""
    return make_tiny_recipes(tmp_path)


@pytest.fixture
def tiny_training_recipes(tiny_recipes) -> Path:
    """tiny_recipes plus a ~50k-parameter model and a 6-step pretraining experiment."""
    return add_tiny_training(tiny_recipes)


def make_tiny_recipes(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    docs_a = [{"id": f"a{i}", "text": prose_doc(i)} for i in range(12)]
    a1_words = docs_a[1]["text"].split(" ")
    a1_words[30] = "zebra"
    docs_b = [{"id": "b0", "text": docs_a[0]["text"]},          # exact cross-source dup of a0
              {"id": "b1", "text": " ".join(a1_words)},         # near dup of a1 (one word changed)
              {"id": "b2", "text": "buy now cheap pills " * 30}]  # spam, filtered out
    docs_b += [{"id": f"b{i}", "text": prose_doc(100 + i)} for i in range(3, 10)]
    spam = [{"text": f"BEST DEAL {i}!!! buy cheap click here win prize free money " * 8} for i in range(40)]
    for name, rows in (("a", docs_a), ("b", docs_b), ("spam", spam)):
        (data / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    root = tmp_path / "recipes"
    write(root / "sources/alpha.yaml", f"""
        kind: jsonl
        location: {data / 'a.jsonl'}
        id_field: id
        domain: prose
        filters: prose
        dedup: {{group: main, priority: 10}}
        shard_documents: 5
        validation_fraction: 0.3
        """)
    write(root / "sources/beta.yaml", f"""
        kind: jsonl
        location: {data / 'b.jsonl'}
        id_field: id
        domain: web
        filters: web
        dedup: {{group: main, priority: 1}}
        validation_fraction: 0.3
        """)
    write(root / "sources/spam.yaml", f"""
        kind: jsonl
        location: {data / 'spam.jsonl'}
        domain: spam
        dedup: {{group: null}}
        """)
    write(root / "filters/prose.yaml", """
        length: {min_chars: 100}
        gopher_repetition: {}
        """)
    write(root / "filters/web.yaml", """
        length: {min_chars: 100}
        gopher_repetition: {}
        quality: {classifier: clf, min_score: 0.5}
        """)
    write(root / "classifiers/clf.yaml", """
        positive: [alpha]
        negative: [spam]
        epochs: 10
        """)
    write(root / "tokenizers/tiny.yaml", """
        vocab_size: 300
        sources: [alpha, beta]
        """)
    write(root / "mixtures/mix.yaml", """
        sources: {alpha: 0.6, beta: 0.4}
        tokenizer: tiny
        total_tokens: 3000
        validation_tokens: 300
        seq_len: 32
        max_epochs: 10
        """)
    write(root / "dedup/main.yaml", """
        threshold: 0.7
        num_perm: 64
        shingle_size: 3
        """)
    return root


def add_second_mixture(root: Path) -> Path:
    """mix2: the tiny sources at 0.9 / 0.1 instead of mix's 0.6 / 0.4."""
    return write(root / "mixtures/mix2.yaml", """
        sources: {alpha: 0.9, beta: 0.1}
        tokenizer: tiny
        total_tokens: 3000
        validation_tokens: 300
        seq_len: 32
        max_epochs: 10
        """)


def add_tiny_training(tiny_recipes: Path) -> Path:
    write(tiny_recipes / "models/tiny.yaml", """
        family: minimind
        vocab_size: 320
        hidden_size: 32
        num_layers: 2
        num_heads: 4
        num_kv_heads: 2
        max_seq_len: 256
        """)
    write(tiny_recipes / "experiments/exp.yaml", """
        model: tiny
        stages:
          - kind: pretrain
            max_steps: 6
            batch_size: 8
            micro_batch_size: 4
            optim: {lr: 0.01, warmup_steps: 1}
            checkpoint_every: 3
            eval_every: 3
            eval_batches: 2
        """)
    return tiny_recipes


@pytest.fixture(scope="session")
def chat_tokenizer(tmp_path_factory) -> Path:
    """A small byte-level BPE with the chat template, trained on the offline chat sets."""
    from minigpt_assets.data.chat import arithmetic_conversations, python_qa
    from minigpt_assets.data.tokenizer import train_bpe
    from minigpt_assets.recipes import TokenizerRecipe

    out = tmp_path_factory.mktemp("tokenizer")
    texts = [m["content"] for c in python_qa(300) + arithmetic_conversations(300, max_operand=9) for m in c]
    train_bpe(texts, TokenizerRecipe.model_validate({"vocab_size": 380}), out)
    return out


def pytest_collection_modifyitems(config, items):
    """The demo end to end is the longest test by far: start it first so that, under `-n 2`, the other worker
    runs everything else meanwhile instead of the demo starting last and running alone."""
    items.sort(key=lambda it: 0 if it.nodeid.startswith("minigpt_assets_tests/test_demo.py") else 1)
