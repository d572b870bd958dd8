"""Statistics for comparing runs: stderr and ratio scores, bootstrap coverage, paired tests (power, null
calibration, agreement with McNemar and the paired t-test), Holm/BH by hand, verdicts and the report."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats as sps

from minigpt_assets.evaluation.report import render_report
from minigpt_assets.evaluation.stats import (aggregate, align, benjamini_hochberg, bootstrap_ci, compare,
                                             higher_is_better, holm, paired_test, ratio_stderr,
                                             sign_flip_test, with_perplexity)


def _rows(run: tuple[str, str], task: str, metric: str, values, weights=None, ids=None):
    weights = np.ones(len(values)) if weights is None else weights
    ids = range(len(values)) if ids is None else ids
    return [{"experiment": run[0], "mixture": run[1], "task": task, "metric": metric, "example": f"ex{i}",
             "value": float(v), "weight": float(w)} for i, v, w in zip(ids, values, weights)]


def test_higher_is_better():
    assert higher_is_better("acc") and higher_is_better("pass@10") and higher_is_better("some_new_score")
    assert not higher_is_better("bits_per_byte") and not higher_is_better("word_perplexity")
    assert not higher_is_better("val_loss") and higher_is_better("val_loss", {"val_loss": True})


def test_aggregate_binary_matches_sample_std():
    rng = np.random.default_rng(0)
    x = (rng.random(300) < 0.62).astype(float)
    (s,) = aggregate(_rows(("e", "m"), "arc", "acc", x))
    assert s["n"] == 300 and s["value"] == pytest.approx(x.mean())
    assert s["stderr"] == pytest.approx(np.std(x, ddof=1) / math.sqrt(300), rel=1e-12)
    assert s["ci_low"] < s["value"] < s["ci_high"]
    assert s["ci_high"] - s["ci_low"] == pytest.approx(2 * 1.96 * s["stderr"], rel=0.15)
    assert aggregate(_rows(("e", "m"), "arc", "acc", x)) == [s]          # fixed seed: reproducible


def test_aggregate_ratio_for_bits_per_byte_and_arrow_input():
    bits = np.array([100.0, 30.0, 250.0])
    nbytes = np.array([80.0, 40.0, 100.0])
    table = pa.Table.from_pylist(_rows(("e", "m"), "code", "bits_per_byte", bits, nbytes))
    (s,) = aggregate(table)
    assert s["value"] == pytest.approx(380 / 220) and not s["higher_is_better"]
    r = 380 / 220
    e = bits - r * nbytes
    assert s["stderr"] == pytest.approx(math.sqrt((e @ e) / 6) / nbytes.mean())
    assert ratio_stderr(bits, nbytes) == pytest.approx(s["stderr"])


def test_perplexity_is_exp_of_nats_per_token_with_its_interval():
    nats = np.array([300.0, 120.0, 800.0, 410.0])
    tokens = np.array([60.0, 30.0, 150.0, 90.0])
    scores = with_perplexity(aggregate(_rows(("e", "m"), "web", "nats_per_token", nats, tokens)))
    (npt,), (ppl,) = ([s for s in scores if s["metric"] == m] for m in ("nats_per_token", "perplexity"))
    assert ppl["value"] == pytest.approx(math.exp(nats.sum() / tokens.sum())) and not ppl["higher_is_better"]
    assert (ppl["ci_low"], ppl["ci_high"]) == pytest.approx((math.exp(npt["ci_low"]), math.exp(npt["ci_high"])))
    assert ppl["stderr"] == pytest.approx(ppl["value"] * npt["stderr"]) and ppl["n"] == 4
    assert with_perplexity(aggregate(_rows(("e", "m"), "arc", "acc", [1.0, 0.0]))) == aggregate(
        _rows(("e", "m"), "arc", "acc", [1.0, 0.0]))  # nothing derived from other metrics


def test_bootstrap_ci_coverage():
    rng = np.random.default_rng(1)
    covered_acc = covered_bpb = 0
    for i in range(200):
        x = (rng.random(150) < 0.3).astype(float)
        lo, hi = bootstrap_ci(x, np.ones(150), n_boot=500, seed=i)
        covered_acc += lo <= 0.3 <= hi
        w = rng.lognormal(6, 1, 150)                        # document bytes
        v = w * rng.gamma(4, 0.25, 150)                     # bits, true ratio 1.0
        lo, hi = bootstrap_ci(v, w, n_boot=500, seed=i)
        covered_bpb += lo <= 1.0 <= hi
    assert 0.88 <= covered_acc / 200 <= 0.99
    assert 0.85 <= covered_bpb / 200 <= 0.99        # heavy-tailed weights: the percentile bootstrap runs low


def test_paired_test_detects_real_difference():
    rng = np.random.default_rng(2)
    base = rng.normal(1.0, 0.3, 500)
    res = paired_test(base + rng.normal(0.03, 0.1, 500), np.ones(500), base, np.ones(500))   # shift 0.03
    assert res["p_value"] < 0.01 and res["ci_low"] > 0
    acc_a = (rng.random(500) < 0.75).astype(float)
    acc_b = np.where(rng.random(500) < 0.7, acc_a, 0.0)     # b loses ~30% of a's correct answers
    res = paired_test(acc_a, np.ones(500), acc_b, np.ones(500))
    assert res["p_value"] < 0.01 and res["diff"] > 0


def test_paired_test_null_calibration():
    rng = np.random.default_rng(3)
    ps = []
    for i in range(200):
        base = rng.normal(0, 1, 100)
        ps.append(paired_test(base + rng.normal(0, 0.5, 100), np.ones(100), base + rng.normal(0, 0.5, 100),
                              np.ones(100), n_boot=50, n_resamples=1000, seed=i)["p_value"])
    ps = np.array(ps)
    assert 0.01 <= np.mean(ps < 0.05) <= 0.10
    assert 0.35 <= np.mean(ps < 0.5) <= 0.65                  # roughly uniform


def test_binary_paired_test_is_exact_mcnemar():
    rng = np.random.default_rng(4)
    for n, pa_, pb in [(40, 0.6, 0.5), (200, 0.7, 0.65), (1000, 0.5, 0.47)]:
        a = (rng.random(n) < pa_).astype(float)
        b = np.where(rng.random(n) < 0.7, a, (rng.random(n) < pb).astype(float))
        k, m = int(((a == 1) & (b == 0)).sum()), int((a != b).sum())
        exact = sps.binomtest(k, m, 0.5).pvalue
        assert paired_test(a, np.ones(n), b, np.ones(n))["p_value"] == pytest.approx(exact, rel=1e-9)
        # the general sign-flip path (forced by a jitter below its tie tolerance, so |d| are not all equal)
        # agrees: exactly by enumeration for few discordant pairs, within simulation error by Monte Carlo
        d = (a - b) * (1 + 1e-11 * rng.random(n))
        p_flip, method = sign_flip_test(d, n_resamples=20000, seed=0)
        assert method == ("exact sign-flip" if m <= 16 else "sign-flip randomization")
        assert abs(p_flip - exact) < (1e-9 if m <= 16 else 0.01)


def test_sign_flip_agrees_with_ttest_and_wilcoxon_in_large_samples():
    rng = np.random.default_rng(5)
    for shift in (0.05, 0.1, 0.15):
        x = rng.normal(0, 1, 800)
        y = x - shift + rng.normal(0, 1, 800)
        p = paired_test(x, np.ones(800), y, np.ones(800), n_boot=100, n_resamples=20000)["p_value"]
        p_t = sps.ttest_rel(x, y).pvalue
        assert abs(p - p_t) < 0.02 + 0.1 * p_t
        assert abs(math.log(p / sps.wilcoxon(x, y).pvalue)) < 1.5     # same order of magnitude


def test_small_sample_enumeration_is_exact():
    d = np.array([0.5, 1.2, -0.3, 2.0, 0.7, 0.0])
    p, method = sign_flip_test(d)
    signs = np.array([[1 - 2 * ((k >> j) & 1) for j in range(5)] for k in range(32)])
    t = signs @ np.abs(d[d != 0])
    assert method == "exact sign-flip" and p == pytest.approx(np.mean(np.abs(t) >= d.sum() - 1e-12))
    assert p == pytest.approx(4 / 32)


def test_unequal_weights_use_paired_bootstrap():
    rng = np.random.default_rng(6)
    w = rng.integers(50, 500, 300).astype(float)
    a = w * rng.normal(1.0, 0.1, 300)
    res = paired_test(a, w, a * 1.1, w * 1.05, n_resamples=2000)
    assert res["method"] == "paired bootstrap"
    assert res["diff"] == pytest.approx(a.sum() / w.sum() - 1.1 / 1.05 * a.sum() / w.sum())
    assert res["p_value"] < 0.01 and res["ci_high"] < 0


def test_align_reports_dropped_examples():
    a = _rows(("e", "a"), "t", "acc", [1, 0, 1, 1], ids=[0, 1, 2, 3])
    b = _rows(("e", "b"), "t", "acc", [0, 0, 1], ids=[1, 2, 9])
    al = align(a, b)
    assert al.examples == ["ex1", "ex2"] and (al.dropped_a, al.dropped_b, al.dropped) == (2, 1, 3)
    assert list(al.a_values) == [0, 1] and list(al.b_values) == [0, 0]
    with pytest.raises(ValueError, match="more than once"):
        align(a + a[:1], b)


def test_holm_and_bh_on_hand_values():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> running max 0.06
    np.testing.assert_allclose(holm(p), [0.03, 0.06, 0.06, 0.02])
    # sorted 0.005*4/1=0.02, 0.01*4/2=0.02, 0.03*4/3=0.04, 0.04*4/4=0.04 -> running min from the top
    np.testing.assert_allclose(benjamini_hochberg(p), [0.02, 0.04, 0.04, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.6, float("nan")]), [1.0, 1.0, float("nan")])
    assert len(holm([])) == 0


def _three_runs(rng, n=600):
    rows = []
    for mix, p in (("mix_a", 0.55), ("mix_b", 0.62), ("mix_c", 0.75)):
        rows += _rows(("exp", mix), "arc", "acc", rng.random(n) < p)
    return rows


def test_compare_picks_winner_among_three_runs():
    cmp = compare(_three_runs(np.random.default_rng(7)))
    (v,) = cmp.verdicts
    assert v["verdict"] == "winner" and v["winner"] == "exp/mix_c" and v["runner_up"] == "exp/mix_b"
    assert len(cmp.tests) == 3 and all(t["correction"] == "holm" for t in cmp.tests)
    assert [s["rank"] for s in sorted(cmp.scores, key=lambda s: s["run"])] == [3, 2, 1]
    rows = cmp.to_rows()
    assert set(rows) == {"eval_scores", "eval_tests", "eval_verdicts"} and len(rows["eval_tests"]) == 3
    assert cmp.to_arrow()["eval_tests"].num_rows == 3


def test_compare_no_difference_lower_is_better_and_single_run():
    rng = np.random.default_rng(8)
    rows = _rows(("exp", "a"), "arc", "acc", rng.random(400) < 0.6)
    rows += _rows(("exp", "b"), "arc", "acc", rng.random(400) < 0.6)
    nbytes = rng.integers(200, 2000, 400).astype(float)
    bpb = rng.gamma(20, 0.05, 400)                                  # ~1.0 bits per byte per document
    rows += _rows(("exp", "a"), "code", "bits_per_byte", nbytes * bpb, nbytes)
    rows += _rows(("exp", "b"), "code", "bits_per_byte", nbytes * (bpb + 0.08), nbytes)
    rows += _rows(("exp", "a"), "solo", "acc", [1, 0, 1])
    cmp = compare(rows)
    v = {x["task"]: x for x in cmp.verdicts}
    assert v["arc"]["verdict"] == "no significant difference" and v["arc"]["p_adjusted"] > 0.05
    assert {v["arc"]["best"], v["arc"]["runner_up"]} == {"exp/a", "exp/b"}
    assert v["code"]["verdict"] == "winner" and v["code"]["winner"] == "exp/a" and v["code"]["diff"] < 0
    assert v["solo"]["verdict"] == "single run" and len(cmp.tests) == 2
    assert v["code"]["best_value"] < v["code"]["runner_up_value"]


def test_render_report(tmp_path):
    rng = np.random.default_rng(9)
    rows = _three_runs(rng, 300)
    nbytes = rng.integers(200, 2000, 300).astype(float)
    bpb = rng.gamma(20, 0.05, 300)
    rows += _rows(("exp", "mix_a"), "code", "bits_per_byte", nbytes * bpb, nbytes)
    rows += _rows(("exp", "mix_b"), "code", "bits_per_byte", nbytes * (bpb + 0.1), nbytes)
    cmp = compare(rows)
    curves = [{"experiment": "exp", "mixture": m, "stage": "pretrain", "step": s, "loss": 4 - s / 50 + i,
               "val_loss": (4.1 - s / 50 + i) if s % 20 == 0 else None}
              for i, m in enumerate(("mix_a", "mix_b")) for s in range(0, 101, 10)]
    path = render_report(cmp, tmp_path / "r", "Mixture comparison", loss_curves=curves, notes=["toy data"])
    md = path.read_text()
    assert (tmp_path / "r" / "scores.png").stat().st_size > 0
    assert (tmp_path / "r" / "loss_curves.png").stat().st_size > 0
    assert "](scores.png)" in md and "](loss_curves.png)" in md and "toy data" in md
    assert "**arc/acc**: `exp/mix_c` wins (higher is better)" in md
    assert "**code/bits_per_byte**: `exp/mix_a` wins (lower is better)" in md and "Holm-adjusted" in md
    assert "across all 4 tests" in md
    first = (tmp_path / "r" / "scores.png").read_bytes()
    render_report(cmp, tmp_path / "r", "Mixture comparison", loss_curves=curves, notes=["toy data"])
    assert path.read_text() == md and (tmp_path / "r" / "scores.png").read_bytes() == first
