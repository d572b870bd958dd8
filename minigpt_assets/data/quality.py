"""DCLM-style fastText quality classifier: train on positive vs negative documents, score P(high quality)."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np
import xxhash

from minigpt_assets.data.documents import sample_documents
from minigpt_assets.recipes import ClassifierRecipe

HQ, LQ = "__label__hq", "__label__lq"
MAX_WORDS = 1000


def normalize(text: str) -> str:
    """fastText input: lowercase, one line, collapsed whitespace, at most MAX_WORDS words."""
    return " ".join(re.sub(r"\s+", " ", text.lower()).split()[:MAX_WORDS])


def _is_validation(doc_id: str, fraction: float, seed: int) -> bool:
    return xxhash.xxh64_intdigest(doc_id.encode(), seed=seed + 1) % 10_000 < fraction * 10_000


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) formula, ties averaged."""
    from scipy.stats import rankdata

    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def train_classifier(positive: list[Path], negative: list[Path], recipe: ClassifierRecipe,
                     out_dir: Path) -> dict[str, float]:
    """Train on balanced samples of both classes, hold out a hashed-id validation split, save model.bin."""
    import fasttext

    n = recipe.max_documents_per_class
    pos = [(d["id"], d["text"]) for d in sample_documents(positive, n, recipe.seed)]
    neg = [(d["id"], d["text"]) for d in sample_documents(negative, n, recipe.seed)]
    k = min(len(pos), len(neg))
    if k < 2:
        raise ValueError(f"too few documents to train a classifier: {len(pos)} positive, {len(neg)} negative")
    rows = [(HQ, i, t) for i, t in pos[:k]] + [(LQ, i, t) for i, t in neg[:k]]
    train = [r for r in rows if not _is_validation(r[1], recipe.validation_fraction, recipe.seed)]
    val = [r for r in rows if _is_validation(r[1], recipe.validation_fraction, recipe.seed)]
    rng = np.random.default_rng(recipe.seed)
    train = [train[i] for i in rng.permutation(len(train))]
    out_dir = Path(out_dir)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
        for label, _, text in train:
            f.write(f"{label} {normalize(text)}\n")
        train_file = f.name
    try:
        model = fasttext.train_supervised(
            input=train_file, epoch=recipe.epochs, lr=recipe.lr, wordNgrams=recipe.word_ngrams, dim=recipe.dim,
            minCount=recipe.min_count, thread=1, seed=recipe.seed, verbose=0)
    finally:
        Path(train_file).unlink(missing_ok=True)
    model.save_model(str(out_dir / "model.bin"))
    metrics: dict[str, float] = {"train_documents": len(train), "validation_documents": len(val)}
    for split, data in (("train", train), ("validation", val)):
        if not data:
            continue
        y = np.array([1 if lab == HQ else 0 for lab, _, _ in data])
        s = np.array(_scores(model, [t for _, _, t in data]))
        pred = s >= 0.5
        tp = int((pred & (y == 1)).sum())
        metrics[f"{split}_accuracy"] = float((pred == (y == 1)).mean())
        metrics[f"{split}_precision"] = tp / max(1, int(pred.sum()))
        metrics[f"{split}_recall"] = tp / max(1, int((y == 1).sum()))
        metrics[f"{split}_auc"] = auc(y, s)
    return metrics


def _scores(model, texts: list[str]) -> list[float]:
    labels, probs = model.predict([normalize(t) for t in texts], k=2)
    out = []
    for lab, pr in zip(labels, probs):
        d = dict(zip(lab, pr))
        out.append(float(min(1.0, d.get(HQ, 1.0 - d.get(LQ, 0.0)))))
    return out


class QualityScorer:
    """Loads a trained model once; `score(texts)` gives P(high quality) per text."""

    def __init__(self, model_path: Path):
        import fasttext

        if not Path(model_path).exists():
            raise FileNotFoundError(f"quality classifier model not found: {model_path}")
        self.model = fasttext.load_model(str(model_path))

    def score(self, texts: list[str]) -> list[float]:
        return _scores(self.model, texts) if texts else []
