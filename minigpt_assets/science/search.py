"""Search for the best data mixture under a fitted mixture model (RegMix: average of the top predicted candidates).

Candidates come from the same Dirichlet sampler as the proxy runs, so the search stays inside the region the
model was fitted on.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._threads import single_blas_thread
from .mixture_models import MixtureModel
from .sampling import sample_mixture_array


@single_blas_thread
def search_mixture(model: MixtureModel, prior: dict[str, float], n_candidates: int, seed: int, top_k: int = 100,
                   lower_is_better: bool = True, **sampler_kwargs: Any) -> dict[str, float]:
    """Sample `n_candidates` mixtures around `prior`, predict each, and return the mean of the `top_k` best.

    The prior's sources must be the model's sources (any order; the result follows the prior's order).
    `sampler_kwargs` go to `sample_mixture_array`; `oversample` defaults to 1 here (candidates need no pool).
    """
    if set(prior) != set(model.sources):
        raise ValueError(f"prior sources {sorted(prior)} differ from the model's {sorted(model.sources)}")
    if int(n_candidates) != n_candidates or n_candidates < 1:
        raise ValueError(f"n_candidates must be a positive integer, got {n_candidates}")
    if int(top_k) != top_k or not 1 <= top_k <= n_candidates:
        raise ValueError(f"top_k must be an integer in [1, n_candidates={n_candidates}], got {top_k}")
    sampler_kwargs.setdefault("oversample", 1)
    keys = list(prior)
    cand = sample_mixture_array(prior, int(n_candidates), seed, **sampler_kwargs)
    cols = [keys.index(s) for s in model.sources]
    pred = np.asarray(model.predict(cand[:, cols]), dtype=float)
    score = pred if lower_is_better else -pred
    score = np.where(np.isfinite(score), score, np.inf)
    k = int(top_k)
    best = np.argpartition(score, k - 1)[:k] if k < len(score) else np.arange(len(score))
    mean = cand[best].mean(axis=0)
    mean = mean / mean.sum()
    return {s: float(v) for s, v in zip(keys, mean)}
