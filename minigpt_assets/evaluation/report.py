"""A plain-English Markdown report of a `stats.Comparison`: verdicts, a score table, the pairwise tests and
PNG plots (scores with bootstrap intervals per task; training and validation loss per run). Deterministic: the
same input gives the same bytes (no timestamp unless `generated` is passed). Matplotlib through the Agg
canvas, no pyplot state."""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from minigpt_assets.evaluation.stats import Comparison

MINUS = "\u2212"
CORRECTION_NAMES = {"holm": "Holm-adjusted", "bh": "Benjamini-Hochberg-adjusted",
                    "benjamini_hochberg": "Benjamini-Hochberg-adjusted", "none": "unadjusted"}


def decimals_for(lo: float, hi: float, least: int = 3, most: int = 6) -> int:
    """Decimals that show an interval's width with two significant digits (at least `least`)."""
    width = abs(hi - lo)
    if not math.isfinite(width) or width <= 1e-9 * max(abs(lo), abs(hi), 1.0):   # degenerate interval
        return least
    return max(least, min(most, 1 - math.floor(math.log10(width))))


def fmt(x: float | None, decimals: int = 3) -> str:
    """A number with sensible precision: fixed decimals in the usual range, 3 significant digits otherwise."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    s = f"{x:.{decimals}f}" if 1e-3 <= abs(x) < 1e4 or x == 0 else f"{x:.3g}"
    return s.replace("-", MINUS)


def fmt_p(p: float | None, prefix: str = "") -> str:
    """'p=0.043', 'p<0.001' (with prefix 'p'); two significant digits."""
    if p is None or math.isnan(p):
        return f"{prefix}{'=' if prefix else ''}n/a"
    if p < 0.001:
        return f"{prefix}<0.001"
    return f"{prefix}{'=' if prefix else ''}{p:.2g}"


def _ci(lo: float, hi: float) -> str:
    d = decimals_for(lo, hi)
    return f"[{fmt(lo, d)}, {fmt(hi, d)}]"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def _direction(hib: bool) -> str:
    return "higher is better" if hib else "lower is better"


def verdict_line(v: dict, correction: str, confidence: float = 0.95) -> str:
    """One sentence per task/metric: who wins, by how much, and how sure we are."""
    name = f"**{v['task']}/{v['metric']}**"
    pct, adj = f"{round(100 * confidence)}%", CORRECTION_NAMES.get(correction, correction)
    d = decimals_for(v["ci_low"], v["ci_high"])
    best, runner = fmt(v["best_value"], d), fmt(v["runner_up_value"], d)
    if v["verdict"] == "single run":
        return f"{name}: single run `{v['best']}` scored {fmt(v['best_value'])}; nothing to compare."
    evidence = (f"difference {fmt(v['diff'], d)} [{pct} CI {fmt(v['ci_low'], d)}, {fmt(v['ci_high'], d)}], "
                f"{fmt_p(v['p_adjusted'], 'p')} ({adj})")
    if math.isnan(v["p_adjusted"]):
        evidence = "no shared examples to test"
    if v["verdict"] == "winner":
        extra = v["n_runs"] - 2
        more = f" (and {extra} other run{'s' if extra > 1 else ''})" if extra > 0 else ""
        return (f"{name}: `{v['best']}` wins ({_direction(v['higher_is_better'])}): {best} vs "
                f"{runner} for `{v['runner_up']}`{more}, {evidence}.")
    not_beaten = [r for r in v["not_beaten"].split(", ") if r]
    if v["runner_up"] in not_beaten:
        return (f"{name}: no significant difference between `{v['best']}` ({best}) and "
                f"`{v['runner_up']}` ({runner}) ({_direction(v['higher_is_better'])}), "
                f"{evidence}; `{v['best']}` has the best score.")
    others = ", ".join(f"`{r}`" for r in not_beaten)
    return (f"{name}: no overall winner: `{v['best']}` has the best score ({best}, "
            f"{_direction(v['higher_is_better'])}) and beats the runner-up `{v['runner_up']}` ({evidence}), "
            f"but not significantly {others}.")


def _score_table(comparison: Comparison) -> list[str]:
    runs = sorted({s["run"] for s in comparison.scores})
    by = {(s["task"], s["metric"], s["run"]): s for s in comparison.scores}
    winners = {(v["task"], v["metric"]): v["winner"] for v in comparison.verdicts}
    pct = f"{round(100 * comparison.confidence)}%"
    lines = [f"Each cell: score [{pct} bootstrap CI], n examples. **Bold**: the significant winner.", "",
             "| Task/metric | Better | " + " | ".join(f"`{_cell(r)}`" for r in runs) + " |",
             "|---|---|" + "---|" * len(runs)]
    for v in comparison.verdicts:
        cells = []
        for r in runs:
            s = by.get((v["task"], v["metric"], r))
            if s is None:
                cells.append("")
                continue
            score = fmt(s["value"], decimals_for(s["ci_low"], s["ci_high"]))
            if winners[(v["task"], v["metric"])] == r:
                score = f"**{score}**"
            cells.append(f"{score} {_ci(s['ci_low'], s['ci_high'])}, n={s['n']}")
        arrow = "higher" if v["higher_is_better"] else "lower"
        lines.append(f"| {_cell(v['task'])}/{_cell(v['metric'])} | {arrow} | " + " | ".join(cells) + " |")
    return lines


def _test_table(comparison: Comparison) -> list[str]:
    if not comparison.tests:
        return ["No pairwise tests (every task has a single run, or the runs share no examples)."]
    pct = f"{round(100 * comparison.confidence)}%"
    adj = CORRECTION_NAMES.get(comparison.correction, comparison.correction)
    lines = [f"| Task/metric | Run A | Run B | n | A {MINUS} B | {pct} CI | p | p ({adj}) | Significant "
             "| Test |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for t in comparison.tests:
        sig = f"yes, `{_cell(t['better'])}`" if t["significant"] and t["better"] else "no"
        dropped = f" ({t['dropped']} unmatched)" if t["dropped"] else ""
        diff = fmt(t["diff"], decimals_for(t["ci_low"], t["ci_high"]))
        lines.append(f"| {_cell(t['task'])}/{_cell(t['metric'])} | `{_cell(t['run_a'])}` "
                     f"| `{_cell(t['run_b'])}` "
                     f"| {t['n']}{dropped} | {diff} | {_ci(t['ci_low'], t['ci_high'])} "
                     f"| {fmt_p(t['p_value'])} | {fmt_p(t['p_adjusted'])} | {sig} | {t['method']} |")
    return lines


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, 3)
    return math.ceil(n / cols), cols


def plot_scores(comparison: Comparison, path: Path) -> Path:
    """A grid of small plots, one per task/metric: each run's score with its bootstrap interval."""
    groups = [(v["task"], v["metric"], v) for v in comparison.verdicts]
    rows, cols = _grid(max(len(groups), 1))
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows), dpi=100)
    FigureCanvasAgg(fig)
    for i, (task, metric, v) in enumerate(groups):
        ax = fig.add_subplot(rows, cols, i + 1)
        ss = sorted((s for s in comparison.scores if s["task"] == task and s["metric"] == metric),
                    key=lambda s: s["run"])
        xs = range(len(ss))
        for x, s in zip(xs, ss):
            lo = s["value"] - s["ci_low"] if not math.isnan(s["ci_low"]) else 0.0
            hi = s["ci_high"] - s["value"] if not math.isnan(s["ci_high"]) else 0.0
            color = "tab:green" if s["run"] == v["winner"] else "tab:blue"
            ax.errorbar([x], [s["value"]], yerr=[[lo], [hi]], fmt="o", color=color, capsize=4)
        ax.set_xticks(list(xs), [s["run"] for s in ss], rotation=30, ha="right", fontsize=8)
        ax.set_xlim(-0.5, len(ss) - 0.5)
        better = "higher" if v["higher_is_better"] else "lower"
        ax.set_title(f"{task}/{metric} ({better} is better)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    return path


def plot_loss_curves(loss_curves: list[dict], path: Path) -> Path:
    """Training (solid) and validation (dashed) loss against step; a panel per stage, a colour per run."""
    stages = list(dict.fromkeys(str(r.get("stage", "")) for r in loss_curves))
    runs = sorted({f"{r['experiment']}/{r['mixture']}" for r in loss_curves})
    colors = {run: f"C{i % 10}" for i, run in enumerate(runs)}
    fig = Figure(figsize=(6 * len(stages), 4), dpi=100)
    FigureCanvasAgg(fig)
    for i, stage in enumerate(stages):
        ax = fig.add_subplot(1, len(stages), i + 1)
        for run in runs:
            pts = sorted((r for r in loss_curves if str(r.get("stage", "")) == stage
                          and f"{r['experiment']}/{r['mixture']}" == run), key=lambda r: r["step"])
            train = [(r["step"], r["loss"]) for r in pts if r.get("loss") is not None]
            val = [(r["step"], r["val_loss"]) for r in pts if r.get("val_loss") is not None]
            if train:
                ax.plot(*zip(*train), color=colors[run], label=f"{run} train")
            if val:
                ax.plot(*zip(*val), color=colors[run], linestyle="--", marker=".", label=f"{run} val")
        ax.set_title(f"stage {stage}" if stage else "loss", fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    return path


def render_report(comparison: Comparison, out_dir: Path, title: str, loss_curves: list[dict] | None = None,
                  notes: list[str] | None = None, generated: str | None = None) -> Path:
    """Write report.md, scores.png and (with loss_curves) loss_curves.png into out_dir; returns report.md."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    adj = CORRECTION_NAMES.get(comparison.correction, comparison.correction)
    runs = sorted({s["run"] for s in comparison.scores})
    pct = f"{round(100 * comparison.confidence)}%"
    lines = [f"# {title}", ""]
    if generated:
        lines += [f"Generated {generated}.", ""]
    n_pairs, n_tests = len(comparison.verdicts), len(comparison.tests)
    lines += [f"{len(runs)} run{'s' if len(runs) != 1 else ''} (experiment/mixture) on {n_pairs} "
              f"task/metric pair{'s' if n_pairs != 1 else ''}. A run's score is sum(value) / sum(weight) "
              "over the examples (accuracy, pass@k, corpus-level bits per byte). Intervals are "
              f"{pct} percentile bootstrap intervals over examples. Runs are compared on their shared "
              "examples with paired tests (sign-flip randomization, exact McNemar for 0/1 scores); the "
              f"p-values are {adj} across all {n_tests} tests in this report, and a difference counts as "
              f"significant when the adjusted p < {comparison.alpha:g}. A run wins a task only when it is "
              "significantly better than every other run.", ""]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    lines += ["## Verdicts", ""]
    lines += [f"- {verdict_line(v, comparison.correction, comparison.confidence)}"
              for v in comparison.verdicts]
    lines += ["", "## Scores", ""] + _score_table(comparison) + [""]
    if comparison.scores:
        plot_scores(comparison, out_dir / "scores.png")
        lines += ["![Scores with bootstrap intervals, one panel per task](scores.png)", ""]
    lines += ["## Pairwise tests", ""] + _test_table(comparison) + [""]
    if loss_curves:
        plot_loss_curves(loss_curves, out_dir / "loss_curves.png")
        lines += ["## Loss curves", "", "Training loss (solid) and validation loss (dashed) per run.", "",
                  "![Training and validation loss per run](loss_curves.png)", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
