"""fastText quality classifier: learns prose vs spam, is deterministic, and drives the quality filter rule."""

from __future__ import annotations

import ast
import random
import re
import sysconfig
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from minigpt_assets.data import quality
from minigpt_assets.data.documents import ShardWriter, document, iter_documents
from minigpt_assets.data.filters import DocumentFilter, filter_shards
from minigpt_assets.data.quality import QualityScorer, auc, normalize, train_classifier
from minigpt_assets.recipes import ClassifierRecipe, FilterProfile

STDLIB_MODULES = ["argparse.py", "collections/__init__.py", "dataclasses.py", "difflib.py", "functools.py",
                  "heapq.py", "inspect.py", "json/__init__.py", "logging/__init__.py", "pathlib.py", "shutil.py",
                  "subprocess.py", "tarfile.py", "textwrap.py", "threading.py", "typing.py", "unittest/case.py",
                  "zipfile.py", "random.py", "statistics.py"]


@lru_cache(maxsize=1)
def stdlib_sentences() -> tuple[str, ...]:
    """English sentences from docstrings of a few stdlib modules (parsed with ast; prose only)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out: list[str] = []
    for rel in STDLIB_MODULES:
        path = root / rel
        if not path.exists():
            continue
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        nodes = [tree] + [n for n in ast.walk(tree)
                          if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
        for node in nodes:
            doc = ast.get_docstring(node) or ""
            for para in re.split(r"\n\s*\n", doc):
                para = " ".join(para.split())
                if ">>>" in para:
                    continue
                for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", para):
                    words = s.split()
                    if 8 <= len(words) <= 40 and s.endswith(".") and \
                            sum(w.strip(".,;:()'\"").isalpha() for w in words) / len(words) > 0.75:
                        out.append(s)
    return tuple(dict.fromkeys(out))


PROMO = ["cheap", "free", "bonus", "casino", "winner", "prize", "click", "buy", "now", "deal", "offer", "discount",
         "limited", "exclusive", "guaranteed", "cash", "loans", "pills", "viagra", "crypto", "jackpot", "sale"]
PRODUCTS = ["watches", "sneakers", "phones", "supplements", "handbags", "followers", "gift cards", "tokens"]


def clean_doc(rng: random.Random) -> str:
    sents = stdlib_sentences()
    return " ".join(rng.sample(sents, rng.randint(4, 8)))


def spam_doc(rng: random.Random) -> str:
    """Keyword stuffing, repeated promo lines, or both."""
    kind = rng.randrange(3)
    stuffing = " ".join(rng.choice(PROMO) for _ in range(rng.randint(30, 90)))
    line = (f"BEST {rng.choice(PRODUCTS).upper()} DEALS!!! Get {rng.randint(10, 90)}% off {rng.choice(PRODUCTS)} "
            f"today, free shipping, {rng.choice(PROMO)} {rng.choice(PROMO)}. Click here now!")
    lines = "\n".join([line] * rng.randint(3, 8))
    return [stuffing, lines, lines + "\n" + stuffing][kind]


def _write(tmp: Path, name: str, texts: list[str], per_shard: int = 150) -> list[Path]:
    w = ShardWriter(tmp / name, max_documents=per_shard)
    for i, t in enumerate(texts):
        w.write(document(f"{name}/{i:04d}", t, name, "x", str(i)))
    return [s.path for s in w.close()]


RECIPE = ClassifierRecipe(positive=("good",), negative=("bad",), max_documents_per_class=300, epochs=10)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("q")
    rng = random.Random(0)
    assert len(stdlib_sentences()) > 300
    good = _write(tmp, "good", [clean_doc(rng) for _ in range(400)])
    bad = _write(tmp, "bad", [spam_doc(rng) for _ in range(400)])
    out = tmp / "model"
    metrics = train_classifier(good, bad, RECIPE, out)
    return tmp, good, bad, out / "model.bin", metrics


def test_train_metrics(trained):
    _, _, _, model, m = trained
    assert model.is_file()
    # at most max_documents_per_class per class, balanced, about validation_fraction held out
    assert m["train_documents"] + m["validation_documents"] == 600
    assert 30 <= m["validation_documents"] <= 95
    assert m["validation_accuracy"] > 0.9 and m["validation_auc"] > 0.95
    assert m["validation_precision"] > 0.9 and m["validation_recall"] > 0.9
    assert {"train_documents", "validation_documents", "validation_accuracy", "validation_precision",
            "validation_recall", "validation_auc"} <= set(m)


def test_scores_on_unseen_documents(trained):
    *_, model, _ = trained
    scorer = QualityScorer(model)
    rng = random.Random(99)
    s_good = scorer.score([clean_doc(rng) for _ in range(40)])
    s_bad = scorer.score([spam_doc(rng) for _ in range(40)])
    assert all(0.0 <= s <= 1.0 for s in s_good + s_bad)
    assert np.mean(s_good) > 0.8 and np.mean(s_bad) < 0.2
    assert scorer.score([]) == []
    # text with newlines and tabs is one fastText line after normalization
    assert scorer.score(["Return the value.\n\tIt is\n\nnever None."]) == scorer.score(["return the value. it is never none."])


def test_training_is_deterministic(trained, tmp_path):
    _, good, bad, model, m1 = trained
    m2 = train_classifier(good, bad, RECIPE, tmp_path)
    assert m2 == m1
    texts = [clean_doc(random.Random(5)), spam_doc(random.Random(5))]
    assert QualityScorer(tmp_path / "model.bin").score(texts) == QualityScorer(model).score(texts)


def test_sampling_caps_and_balances(trained, tmp_path):
    tmp, good, bad, _, _ = trained
    few_bad = _write(tmp_path, "few", [spam_doc(random.Random(i)) for i in range(60)])
    r = RECIPE.model_copy(update={"max_documents_per_class": 100, "epochs": 2})
    m = train_classifier(good, few_bad, r, tmp_path / "a")
    assert m["train_documents"] + m["validation_documents"] == 120  # 60 per class
    m = train_classifier(good, bad, r, tmp_path / "b")
    assert m["train_documents"] + m["validation_documents"] == 200
    with pytest.raises(ValueError, match="too few documents"):
        train_classifier(good, few_bad[:0], r, tmp_path / "c")


def test_quality_rule_drops_spam(trained, tmp_path, monkeypatch):
    *_, model, _ = trained
    profile = FilterProfile.model_validate({"quality": {"classifier": "c", "min_score": 0.5}})
    f = DocumentFilter(profile, model)
    rng = random.Random(7)
    assert f.rule_names == ["quality"]
    assert f.reasons([spam_doc(rng), clean_doc(rng), spam_doc(rng)]) == ["quality", None, "quality"]
    lenient = DocumentFilter(FilterProfile.model_validate({"quality": {"classifier": "c", "min_score": 0.0}}), model)
    assert lenient.reason(spam_doc(rng)) is None

    # filter_shards loads the model once in-process, however many shards
    loads = []
    real_init = quality.QualityScorer.__init__
    monkeypatch.setattr(quality.QualityScorer, "__init__", lambda self, p: (loads.append(p), real_init(self, p))[1])
    texts = [clean_doc(rng) if i % 3 else spam_doc(rng) for i in range(30)]
    shards = _write(tmp_path, "mixed", texts, per_shard=7)
    res = filter_shards(shards, tmp_path / "out", profile, model, workers=1)
    assert len(loads) == 1 and len(shards) == 5
    assert res.removed == {"quality": 10} and res.documents == 20
    assert all(d["text"] in texts[1::3] + texts[2::3] for d in iter_documents([s.path for s in res.shards]))
    with pytest.raises(FileNotFoundError):
        DocumentFilter(profile, tmp_path / "missing.bin")


def test_normalize():
    assert normalize("Hello,\n\tWorld!  Foo") == "hello, world! foo"
    assert len(normalize("word " * 5000).split()) == quality.MAX_WORDS


def test_auc_rank_formula():
    y = np.array([1, 1, 0, 0])
    assert auc(y, np.array([0.9, 0.8, 0.1, 0.2])) == 1.0
    assert auc(y, np.array([0.1, 0.2, 0.9, 0.8])) == 0.0
    assert auc(y, np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
    assert np.isnan(auc(np.array([1, 1]), np.array([0.2, 0.3])))
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = rng.integers(0, 10, 300) / 10  # many ties
    pos, neg = s[y == 1], s[y == 0]
    pairwise = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
    assert auc(y, s) == pytest.approx(pairwise)
