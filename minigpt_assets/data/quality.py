"""DCLM-style fastText quality classifier: train on positive vs negative documents, score P(high quality)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from minigpt_assets.data.documents import sample_documents
from minigpt_assets.recipes import ClassifierRecipe

HQ, LQ = "__label__hq", "__label__lq"
MAX_WORDS = 1000  # fastText sees at most this many words of a document
PREDICT_BATCH = 4096
# Hash buckets for word n-grams (wordNgrams > 1). fastText's default, 2M, makes a 512 MB model at dim 64;
# 2**18 keeps it at 64 MB, plenty for a few thousand documents per class (collisions only add noise).
NGRAM_BUCKETS = 1 << 18


def normalize(text: str) -> str:
    """fastText input: lowercase, one line, whitespace collapsed, at most MAX_WORDS words."""
    words = text.lower().split()
    return " ".join(words[:MAX_WORDS])


def _hash(doc_id: str, seed: int) -> int:
    return xxhash.xxh64_intdigest(doc_id.encode("utf-8", "surrogatepass"), seed=seed)


def _is_validation(doc_id: str, fraction: float, seed: int) -> bool:
    """Hashed-id split, independent of the sampling hash (different seed)."""
    return _hash(doc_id, seed + 0x5EED) % 1_000_000 < fraction * 1_000_000


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney U) formula, ties sharing their average rank; nan if one class."""
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)  # 1-based rank of the last member of each tie group
    avg_rank = upper - (counts - 1) / 2.0
    ranks = avg_rank[inverse]
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _sample(paths: list[Path], n: int, seed: int) -> list[tuple[int, str, str]]:
    """(hash, id, text) of a deterministic streaming sample of at most n documents, largest hash first."""
    docs = sample_documents(paths, n, seed)
    rows = [(_hash(d["id"], seed), d["id"], d["text"] or "") for d in docs]
    rows.sort(key=lambda r: (-r[0], r[1]))
    return rows


def _predict(model: Any, texts: list[str]) -> list[float]:
    """P(__label__hq) per text, predicted in batches with k=2."""
    out: list[float] = []
    for i in range(0, len(texts), PREDICT_BATCH):
        labels, probs = model.predict([normalize(t) for t in texts[i:i + PREDICT_BATCH]], k=2)
        for labs, ps in zip(labels, probs):
            d = dict(zip(labs, (float(p) for p in ps)))
            p = d[HQ] if HQ in d else 1.0 - d.get(LQ, 0.0)
            out.append(min(1.0, max(0.0, p)))
    return out


def _split_metrics(prefix: str, y: np.ndarray, s: np.ndarray) -> dict[str, float]:
    if len(y) == 0:
        return {f"{prefix}_{k}": float("nan") for k in ("accuracy", "precision", "recall", "auc")}
    pred = s >= 0.5
    tp = int((pred & (y == 1)).sum())
    return {
        f"{prefix}_accuracy": float((pred == (y == 1)).mean()),
        f"{prefix}_precision": tp / int(pred.sum()) if pred.any() else 0.0,
        f"{prefix}_recall": tp / int((y == 1).sum()) if (y == 1).any() else float("nan"),
        f"{prefix}_auc": auc(y, s),
    }


def train_classifier(positive: list[Path], negative: list[Path], recipe: ClassifierRecipe,
                     out_dir: Path) -> dict[str, float]:
    """Train on balanced samples of both classes with a hashed-id validation split; write out_dir/model.bin.

    Returns train/validation document counts and validation accuracy, precision, recall and AUC (plus train
    accuracy and AUC, to spot overfitting). Deterministic for a given recipe and input.
    """
    import fasttext

    n = recipe.max_documents_per_class
    pos = _sample(positive, n, recipe.seed)
    neg = _sample(negative, n, recipe.seed)
    k = min(len(pos), len(neg))
    if k < 2:
        raise ValueError(f"too few documents to train a classifier: {len(pos)} positive, {len(neg)} negative")
    rows = [(HQ, i, t) for _, i, t in pos[:k]] + [(LQ, i, t) for _, i, t in neg[:k]]
    is_val = [_is_validation(i, recipe.validation_fraction, recipe.seed) for _, i, _ in rows]
    train = [r for r, v in zip(rows, is_val) if not v]
    val = [r for r, v in zip(rows, is_val) if v]
    order = np.random.default_rng(recipe.seed).permutation(len(train))
    train = [train[i] for i in order]

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".train-") as tmp:
        train_file = Path(tmp) / "train.txt"
        with open(train_file, "w", encoding="utf-8") as f:
            for label, _, text in train:
                f.write(f"{label} {normalize(text)}\n")
        model = fasttext.train_supervised(
            input=str(train_file), epoch=recipe.epochs, lr=recipe.lr, wordNgrams=recipe.word_ngrams,
            dim=recipe.dim, minCount=recipe.min_count, bucket=NGRAM_BUCKETS, thread=1, seed=recipe.seed,
            verbose=0)
    model.save_model(str(out_dir / "model.bin"))

    metrics: dict[str, float] = {"train_documents": len(train), "validation_documents": len(val)}
    for prefix, data in (("validation", val), ("train", train)):
        y = np.array([1 if lab == HQ else 0 for lab, _, _ in data], dtype=np.int64)
        s = np.array(_predict(model, [t for _, _, t in data]), dtype=np.float64)
        m = _split_metrics(prefix, y, s)
        if prefix == "train":
            m = {key: m[key] for key in ("train_accuracy", "train_auc")}
        metrics.update(m)
    return metrics


class QualityScorer:
    """A trained model, loaded once; `score(texts)` gives P(high quality) per text."""

    def __init__(self, model_path: Path):
        import fasttext

        model_path = Path(model_path)
        if not model_path.is_file():
            raise FileNotFoundError(f"quality classifier model not found: {model_path}")
        self.model = fasttext.load_model(str(model_path))

    def score(self, texts: list[str]) -> list[float]:
        return _predict(self.model, texts) if texts else []
