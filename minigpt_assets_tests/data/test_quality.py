"""fastText quality classifier: learns prose vs spam, is deterministic, and drives the quality filter rule."""

from __future__ import annotations

import random

import numpy as np
import pytest

from minigpt_assets.data.documents import ShardWriter, document
from minigpt_assets.data.filters import DocumentFilter
from minigpt_assets.data.quality import QualityScorer, auc, train_classifier
from minigpt_assets.recipes import ClassifierRecipe, FilterProfile


def _sentences() -> list[str]:
    from minigpt_assets.data.builtin_corpora import _sentences

    return list(_sentences())


def _spam(rng: random.Random) -> str:
    words = ["cheap", "free", "bonus", "casino", "winner", "prize", "click", "buy", "now", "deal", "offer"]
    return " ".join(rng.choice(words) for _ in range(rng.randint(40, 120)))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("q")
    rng = random.Random(0)
    sents = _sentences()
    good = [" ".join(rng.sample(sents, 6)) for _ in range(400)]
    bad = [_spam(rng) for _ in range(400)]
    paths = {}
    for name, texts in (("good", good), ("bad", bad)):
        w = ShardWriter(tmp / name, max_documents=150)
        for i, t in enumerate(texts):
            w.write(document(f"{name}/{i}", t, name, "x", str(i)))
        paths[name] = [s.path for s in w.close()]
    return tmp, paths


def test_train_and_score(corpus):
    tmp, paths = corpus
    r = ClassifierRecipe(positive=("good",), negative=("bad",), max_documents_per_class=300, epochs=10)
    m1 = train_classifier(paths["good"], paths["bad"], r, tmp)
    assert m1["validation_documents"] > 20 and m1["train_documents"] + m1["validation_documents"] == 600
    assert m1["validation_accuracy"] > 0.9 and m1["validation_auc"] > 0.95
    scorer = QualityScorer(tmp / "model.bin")
    rng = random.Random(99)
    sents = _sentences()
    s_good = scorer.score([" ".join(rng.sample(sents, 6)) for _ in range(30)])
    s_bad = scorer.score([_spam(rng) for _ in range(30)])
    assert np.mean(s_good) > 0.8 > 0.2 > np.mean(s_bad)
    # deterministic: the same recipe trains the same model
    out2 = tmp / "again"
    out2.mkdir()
    assert train_classifier(paths["good"], paths["bad"], r, out2) == m1
    # the quality rule uses the model
    f = DocumentFilter(FilterProfile.model_validate({"quality": {"classifier": "c", "min_score": 0.5}}),
                       tmp / "model.bin")
    assert f.reasons([_spam(rng), " ".join(rng.sample(sents, 6))]) == ["quality", None]


def test_auc_rank_formula():
    y = np.array([1, 1, 0, 0])
    assert auc(y, np.array([0.9, 0.8, 0.1, 0.2])) == 1.0
    assert auc(y, np.array([0.1, 0.2, 0.9, 0.8])) == 0.0
    assert auc(y, np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
