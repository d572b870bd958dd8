"""Statistics for comparing training runs (experiment x mixture) on evaluation tasks: scores with intervals,
paired tests between runs, multiple-comparison corrections and a verdict per (task, metric). NumPy/SciPy only.

Input rows have the columns `mixture, experiment, task, metric, example, value, weight` (a list of dicts, a
dict of columns or a pyarrow Table). Statistical choices:

* Score: the ratio of sums R = sum(value) / sum(weight) over a run's examples: accuracy (0/1, weight 1),
  pass@k (per-problem estimate, weight 1), corpus-level bits per byte (bits of a document, weight its bytes).
* Standard error: delta method (linearization) for a ratio estimator, with residuals e_i = v_i - R w_i:
  se = sqrt(sum e_i^2 / (n (n - 1))) / mean(w). With unit weights it is the sample std (ddof=1) / sqrt(n),
  lm-evaluation-harness's `mean_stderr`.
* Interval: percentile bootstrap over examples (1000 resamples, fixed seed), the ratio recomputed each time.
* Paired test of two runs on the same examples (`align` first). When each example has the same weight in both
  runs (the normal case: a document's bytes and the unit weight of accuracy do not depend on the model), the
  difference of scores is sum(d) / sum(w) with d_i = v_a,i - v_b,i; sum(w) is fixed, so we test sum(d) with a
  sign-flip randomization test (H0: each d_i is symmetric about 0), valid for 0/1 and continuous values. It is
  exact when all nonzero |d_i| are equal (0/1 metrics: it *is* the exact McNemar test, a binomial test on the
  discordant pairs), exact by enumerating all 2^m sign vectors when m <= 16 differences are nonzero, and
  otherwise Monte Carlo with 10000 sign vectors, p = (1 + #{|T*| >= |T|}) / (B + 1). When the weights differ
  between the runs, the p-value comes from a paired bootstrap of the difference of ratios shifted to the null:
  p = (1 + #{|D* - D| >= |D|}) / (B + 1). The interval for the difference is a paired percentile bootstrap.
* Multiple comparisons: Holm (family-wise error, the default) or Benjamini-Hochberg (false discovery rate),
  applied across ALL tests of one comparison (every task, metric and pair of runs together).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Mapping

import numpy as np
from scipy import stats as sps

COLUMNS = ("mixture", "experiment", "task", "metric", "example", "value", "weight")
HIGHER_IS_BETTER: dict[str, bool] = {
    "acc": True, "acc_norm": True, "pass@1": True, "pass@10": True, "pass@100": True, "exact_match": True,
    "f1": True, "bleu": True, "rouge": True,
    "bits_per_byte": False, "byte_perplexity": False, "word_perplexity": False, "perplexity": False,
    "loss": False, "nll": False, "nats_per_token": False,
}
LOWER_IS_BETTER_KEYS = ("bits_per_byte", "perplexity", "loss", "nll", "nats_per_token")
EXACT_MAX = 16            # enumerate all sign vectors up to this many nonzero differences
_CELLS = 2_000_000        # resample-matrix cells per chunk (bounds memory for large n)


def higher_is_better(metric: str, overrides: Mapping[str, bool] | None = None) -> bool:
    """True unless the metric is known or named as lower-is-better (bits_per_byte, perplexity, loss, nll)."""
    table = {**HIGHER_IS_BETTER, **(overrides or {})}
    if metric in table:
        return bool(table[metric])
    return not any(key in metric.lower() for key in LOWER_IS_BETTER_KEYS)


def run_label(experiment: str, mixture: str) -> str:
    return f"{experiment}/{mixture}"


def _columns(rows: Any, need: tuple[str, ...] = COLUMNS) -> dict[str, np.ndarray]:
    """Rows (list of dicts, dict of columns, pyarrow Table) as NumPy columns; `weight` defaults to 1."""
    if hasattr(rows, "to_pydict") and hasattr(rows, "column_names"):
        rows = rows.to_pydict()
    if isinstance(rows, Mapping):
        cols = rows
    else:
        rows = list(rows)
        cols = {c: [r[c] for r in rows] for c in need if not rows or c in rows[0]}
    out: dict[str, np.ndarray] = {}
    for c in need:
        if c in cols:
            out[c] = np.asarray(cols[c], dtype=float if c in ("value", "weight") else object)
        elif c != "weight":
            raise KeyError(f"evaluation rows lack the column {c!r}")
    if "weight" in need and "weight" not in out:
        out["weight"] = np.ones(len(out["value"]))
    return out


def _groups(cols: dict[str, np.ndarray], keys: tuple[str, ...]) -> dict[tuple, np.ndarray]:
    groups: dict[tuple, list[int]] = {}
    for i, key in enumerate(zip(*(cols[k] for k in keys))):
        groups.setdefault(key, []).append(i)
    return {k: np.asarray(v) for k, v in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0])))}


def _resample_sums(arrays: list[np.ndarray], n_boot: int, seed: int) -> np.ndarray:
    """Sums of each array over `n_boot` bootstrap resamples of the shared examples: (len(arrays), n_boot).
    Each resample is a vector of counts per example (a bincount of n draws), so the sums are one matmul."""
    n = len(arrays[0])
    rng = np.random.default_rng(seed)
    x = np.stack([np.asarray(a, float) for a in arrays], axis=1)
    out = np.empty((len(arrays), n_boot))
    step = max(1, _CELLS // max(n, 1))
    for s in range(0, n_boot, step):
        b = min(step, n_boot - s)
        idx = rng.integers(0, n, size=(b, n)) + (np.arange(b) * n)[:, None]
        counts = np.bincount(idx.ravel(), minlength=b * n).reshape(b, n).astype(float)
        out[:, s:s + b] = (counts @ x).T
    return out


def _quantiles(x: np.ndarray, confidence: float) -> tuple[float, float]:
    x = x[np.isfinite(x)]
    if not len(x):
        return math.nan, math.nan
    lo, hi = np.quantile(x, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(lo), float(hi)


def ratio_stderr(values, weights) -> float:
    """Delta-method standard error of sum(values) / sum(weights); = std(ddof=1) / sqrt(n) for unit weights."""
    v, w = np.asarray(values, float), np.asarray(weights, float)
    n = len(v)
    if n < 2 or w.sum() == 0:
        return math.nan
    e = v - (v.sum() / w.sum()) * w
    return float(math.sqrt(e @ e / (n * (n - 1))) / w.mean())


def bootstrap_ci(values, weights, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0
                 ) -> tuple[float, float]:
    """Percentile bootstrap interval of sum(values) / sum(weights), resampling examples."""
    v, w = np.asarray(values, float), np.asarray(weights, float)
    if len(v) == 0:
        return math.nan, math.nan
    sv, sw = _resample_sums([v, w], n_boot, seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        return _quantiles(sv / sw, confidence)


def aggregate(rows, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0,
              overrides: Mapping[str, bool] | None = None) -> list[dict]:
    """One dict per (mixture, experiment, task, metric): value (ratio of sums), stderr (delta method), n,
    ci_low / ci_high (percentile bootstrap), higher_is_better. Sorted by task, metric, experiment, mixture."""
    cols = _columns(rows, ("mixture", "experiment", "task", "metric", "value", "weight"))
    out = []
    for (task, metric, exp, mix), idx in _groups(cols, ("task", "metric", "experiment", "mixture")).items():
        v, w = cols["value"][idx], cols["weight"][idx]
        lo, hi = bootstrap_ci(v, w, n_boot, confidence, seed)
        out.append({"task": task, "metric": metric, "experiment": exp, "mixture": mix,
                    "run": run_label(exp, mix), "value": float(v.sum() / w.sum()) if w.sum() else math.nan,
                    "stderr": ratio_stderr(v, w), "n": int(len(v)), "ci_low": lo, "ci_high": hi,
                    "higher_is_better": higher_is_better(metric, overrides)})
    return out


def with_perplexity(scores: list[dict]) -> list[dict]:
    """`scores` plus a `perplexity` row for each `nats_per_token` row: exp of the value and of the interval's ends
    (a percentile interval survives a monotone map), stderr by the delta method. Derived, so it is reported but
    never tested on its own: its paired test would repeat the nats_per_token one."""
    out = list(scores)
    for s in scores:
        if s["metric"] == "nats_per_token":
            v = math.exp(s["value"]) if math.isfinite(s["value"]) else math.nan
            out.append({**s, "metric": "perplexity", "value": v, "stderr": v * s["stderr"],
                        "ci_low": math.exp(s["ci_low"]), "ci_high": math.exp(s["ci_high"]),
                        "higher_is_better": False})
    return out


@dataclass(frozen=True)
class Aligned:
    """Two runs' per-example values and weights on their shared examples (sorted by example id)."""
    examples: list
    a_values: np.ndarray
    a_weights: np.ndarray
    b_values: np.ndarray
    b_weights: np.ndarray
    dropped_a: int   # examples only run a has
    dropped_b: int   # examples only run b has

    @property
    def dropped(self) -> int:
        return self.dropped_a + self.dropped_b

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self.a_values, self.a_weights, self.b_values, self.b_weights


def align(rows_a, rows_b) -> Aligned:
    """Join two runs' rows (one task and metric each) on `example`; a repeated example is an error."""
    index = []
    for name, rows in (("a", rows_a), ("b", rows_b)):
        cols = _columns(rows, ("example", "value", "weight"))
        pos: dict = {}
        for i, e in enumerate(cols["example"]):
            if e in pos:
                raise ValueError(f"run {name} has example {e!r} more than once")
            pos[e] = i
        index.append((pos, cols))
    (pa_, ca), (pb, cb) = index
    shared = sorted(pa_.keys() & pb.keys(), key=str)
    ia = np.asarray([pa_[e] for e in shared], dtype=int)
    ib = np.asarray([pb[e] for e in shared], dtype=int)
    return Aligned(shared, ca["value"][ia], ca["weight"][ia], cb["value"][ib], cb["weight"][ib],
                   len(pa_) - len(shared), len(pb) - len(shared))


def sign_flip_test(diffs, n_resamples: int = 10000, seed: int = 0) -> tuple[float, str]:
    """Two-sided sign-flip randomization test of sum(diffs) = 0 (H0: each difference symmetric about 0).
    Returns (p_value, method); exact where feasible (see the module docstring)."""
    d = np.asarray(diffs, float)
    a = np.abs(d[d != 0])
    m, t = len(a), abs(d.sum())
    if m == 0:
        return 1.0, "exact (no differences)"
    if np.allclose(a, a[0], rtol=1e-12, atol=0):
        return float(sps.binomtest(int((d > 0).sum()), m, 0.5).pvalue), "exact binomial (McNemar)"
    tol = 1e-9 * a.sum()
    if m <= EXACT_MAX:
        signs = 1 - 2 * ((np.arange(2**m)[:, None] >> np.arange(m)) & 1)
        return float(np.mean(np.abs(signs @ a) >= t - tol)), "exact sign-flip"
    rng, count, total = np.random.default_rng(seed), 0, a.sum()
    step = max(1, _CELLS // m)
    for s in range(0, n_resamples, step):
        bits = np.unpackbits(rng.integers(0, 256, size=(min(step, n_resamples - s), (m + 7) // 8),
                                          dtype=np.uint8), axis=1, count=m)
        count += int(np.sum(np.abs(2 * (bits.astype(float) @ a) - total) >= t - tol))
    return (1 + count) / (n_resamples + 1), "sign-flip randomization"


def paired_test(a_values, a_weights, b_values, b_weights, n_boot: int = 1000, n_resamples: int = 10000,
                confidence: float = 0.95, seed: int = 0) -> dict:
    """Paired comparison of two runs on the same (aligned) examples: diff = score_a - score_b, p_value
    (sign-flip test for equal weights, paired bootstrap otherwise), ci_low / ci_high (paired percentile
    bootstrap), stderr (delta method), n, method."""
    av, aw, bv, bw = (np.asarray(x, float) for x in (a_values, a_weights, b_values, b_weights))
    n = len(av)
    if not n == len(aw) == len(bv) == len(bw):
        raise ValueError("paired_test needs four arrays of one length (align the runs first)")
    if n == 0:
        return {"diff": math.nan, "p_value": math.nan, "ci_low": math.nan, "ci_high": math.nan,
                "stderr": math.nan, "n": 0, "method": "no shared examples"}
    same = np.allclose(aw, bw, rtol=1e-9, atol=0)
    diff = av.sum() / aw.sum() - bv.sum() / bw.sum()
    e = (av - av.sum() / aw.sum() * aw) / aw.mean() - (bv - bv.sum() / bw.sum() * bw) / bw.mean()
    stderr = math.sqrt(e @ e / (n * (n - 1))) if n > 1 else math.nan
    sums = _resample_sums([av, aw, bv, bw], n_boot if same else max(n_boot, n_resamples), seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        dstar = sums[0] / sums[1] - sums[2] / sums[3]
    lo, hi = _quantiles(dstar, confidence)
    if same:
        p, method = sign_flip_test(av - bv, n_resamples, seed)
    else:
        dev = np.abs(dstar[np.isfinite(dstar)] - diff)
        p, method = (1 + int(np.sum(dev >= abs(diff)))) / (len(dev) + 1), "paired bootstrap"
    return {"diff": float(diff), "p_value": float(p), "ci_low": lo, "ci_high": hi, "stderr": stderr,
            "n": n, "method": method}


def holm(p_values) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1); NaNs stay NaN, uncounted."""
    p = np.asarray(p_values, float)
    out, ok = np.full(p.shape, np.nan), ~np.isnan(p)
    q, m = p[ok], int(ok.sum())
    if m:
        order = np.argsort(q, kind="stable")
        adj = np.empty(m)
        adj[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * q[order]))
        out[ok] = adj
    return out


def benjamini_hochberg(p_values) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (step-up, monotone, capped at 1); NaNs stay NaN, uncounted."""
    p = np.asarray(p_values, float)
    out, ok = np.full(p.shape, np.nan), ~np.isnan(p)
    q, m = p[ok], int(ok.sum())
    if m:
        order = np.argsort(q, kind="stable")
        scaled = q[order] * m / np.arange(1, m + 1)
        adj = np.empty(m)
        adj[order] = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
        out[ok] = adj
    return out


CORRECTIONS = {"holm": holm, "bh": benjamini_hochberg, "benjamini_hochberg": benjamini_hochberg,
               "none": lambda p: np.asarray(p, float)}


@dataclass
class Comparison:
    """Scores per run, pairwise tests and a verdict per (task, metric); plain dicts, ready for tables."""
    scores: list[dict]
    tests: list[dict]
    verdicts: list[dict]
    alpha: float = 0.05
    correction: str = "holm"
    confidence: float = 0.95
    meta: dict = field(default_factory=dict)

    def to_rows(self) -> dict[str, list[dict]]:
        """Flat rows per table: eval_scores, eval_tests, eval_verdicts."""
        return {"eval_scores": [dict(r) for r in self.scores], "eval_tests": [dict(r) for r in self.tests],
                "eval_verdicts": [dict(r) for r in self.verdicts]}

    def to_arrow(self) -> dict:
        import pyarrow as pa
        return {name: pa.Table.from_pylist(rows) for name, rows in self.to_rows().items()}


def _oriented(test: dict, first: str) -> tuple[float, float, float]:
    """(diff, ci_low, ci_high) of a test as `first` minus the other run."""
    if test["run_a"] == first:
        return test["diff"], test["ci_low"], test["ci_high"]
    return -test["diff"], -test["ci_high"], -test["ci_low"]


def compare(rows, alpha: float = 0.05, correction: str = "holm", n_boot: int = 1000, n_resamples: int = 10000,
            confidence: float = 0.95, seed: int = 0, overrides: Mapping[str, bool] | None = None
            ) -> Comparison:
    """Scores, all pairwise paired tests between runs sharing examples (p-values corrected across every test
    of the comparison), and per (task, metric) a verdict: "winner" when the best-scoring run is significantly
    better than every other run, "no significant difference" otherwise, "single run" if nothing to compare."""
    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {sorted(CORRECTIONS)}, not {correction!r}")
    cols = _columns(rows)
    scores = aggregate(cols, n_boot, confidence, seed, overrides)
    tests: list[dict] = []
    for (task, metric), idx in _groups(cols, ("task", "metric")).items():
        sub = {k: v[idx] for k, v in cols.items()}
        runs = {run_label(e, m): {k: sub[k][ridx] for k in ("example", "value", "weight")} | {"key": (e, m)}
                for (e, m), ridx in _groups(sub, ("experiment", "mixture")).items()}
        for ra, rb in combinations(sorted(runs), 2):
            al = align(runs[ra], runs[rb])
            if not al.examples:
                continue
            res = paired_test(*al.arrays(), n_boot=n_boot, n_resamples=n_resamples, confidence=confidence,
                              seed=seed)
            tests.append({"task": task, "metric": metric, "run_a": ra, "run_b": rb,
                          "experiment_a": runs[ra]["key"][0], "mixture_a": runs[ra]["key"][1],
                          "experiment_b": runs[rb]["key"][0], "mixture_b": runs[rb]["key"][1],
                          "value_a": float(al.a_values.sum() / al.a_weights.sum()),
                          "value_b": float(al.b_values.sum() / al.b_weights.sum()), "dropped": al.dropped,
                          **res, "higher_is_better": higher_is_better(metric, overrides)})
    adjusted = CORRECTIONS[correction]([t["p_value"] for t in tests])
    for t, p in zip(tests, adjusted):
        t["p_adjusted"] = float(p)
        t["significant"] = bool(p < alpha)
        t["correction"] = correction
        better = (t["diff"] > 0) == t["higher_is_better"]
        t["better"] = None if not t["diff"] or math.isnan(t["diff"]) else (t["run_a"] if better else t["run_b"])

    verdicts = []
    for task, metric in dict.fromkeys((s["task"], s["metric"]) for s in scores):
        group = [s for s in scores if s["task"] == task and s["metric"] == metric]
        hib = group[0]["higher_is_better"]
        group.sort(key=lambda s: (math.isnan(s["value"]), -s["value"] if hib else s["value"], s["run"]))
        for rank, s in enumerate(group, 1):
            s["rank"] = rank
        best = group[0]
        v = {"task": task, "metric": metric, "higher_is_better": hib, "best": best["run"],
             "best_value": best["value"], "runner_up": None, "runner_up_value": math.nan, "winner": None,
             "diff": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan,
             "p_adjusted": math.nan, "not_beaten": "", "n_runs": len(group)}
        if len(group) == 1:
            verdicts.append(v | {"verdict": "single run"})
            continue
        pair = {frozenset((t["run_a"], t["run_b"])): t for t in tests
                if (t["task"], t["metric"]) == (task, metric)}
        not_beaten = []
        for other in group[1:]:
            t = pair.get(frozenset((best["run"], other["run"])))
            if t is None or not (t["significant"] and t["better"] == best["run"]):
                not_beaten.append(other["run"])
        runner = group[1]
        v |= {"runner_up": runner["run"], "runner_up_value": runner["value"],
              "not_beaten": ", ".join(not_beaten)}
        t = pair.get(frozenset((best["run"], runner["run"])))
        if t is not None:
            d, lo, hi = _oriented(t, best["run"])
            v |= {"diff": d, "ci_low": lo, "ci_high": hi, "p_value": t["p_value"],
                  "p_adjusted": t["p_adjusted"]}
        if not not_beaten:
            v |= {"verdict": "winner", "winner": best["run"]}
        else:
            v["verdict"] = "no significant difference"
        verdicts.append(v)
    return Comparison(scores, tests, verdicts, alpha, correction, confidence,
                      {"n_tests": len(tests), "n_boot": n_boot, "n_resamples": n_resamples, "seed": seed})
