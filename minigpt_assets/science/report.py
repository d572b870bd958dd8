"""`minigpt report sweep NAME`: a Markdown report of a sweep from its published artifacts, with the plots beside
it under `$MINIGPT_HOME/reports/sweep-<name>/`: predicted against measured, weight importances, the transfer
and its verdict, or the scaling curves, the held-out error and the target's prediction."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from minigpt_assets.recipes import Catalog
from minigpt_assets.science.pipeline import POINTS_ASSET, SCALING_ASSET, SEARCH_ASSET, TRANSFER_ASSET
from minigpt_assets.store import ArtifactStore


class SweepReportError(RuntimeError):
    """One line: which artifact is missing."""


def _f(x, fmt: str = ".4f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _weights(w: dict) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in sorted(w.items(), key=lambda kv: -kv[1]) if v > 0)


def write_sweep_report(home: Path, cat: Catalog, name: str) -> Path:
    store = ArtifactStore(home)
    if name not in cat.sweeps:
        raise SweepReportError(f"unknown sweep {name!r} (known: {', '.join(sorted(cat.sweeps)) or 'none'})")
    sweep = cat.sweeps[name]
    points = store.current(POINTS_ASSET, name)
    if points is None:
        raise SweepReportError(f"sweep_points[{name}] is not materialized: run `minigpt sweep {name}` first")
    out = Path(home) / "reports" / f"sweep-{name}"
    out.mkdir(parents=True, exist_ok=True)
    md = [f"# Sweep `{name}` ({sweep.kind})", ""]
    if sweep.description:
        md += [sweep.description, ""]

    def figure(art, file: str, alt: str) -> None:
        shutil.copy2(art.path / file, out / file)
        md.extend([f"![{alt}]({file})", ""])

    if sweep.kind == "mixture":
        s = store.current(SEARCH_ASSET, name)
        if s is None:
            raise SweepReportError(f"mixture_search[{name}] is not materialized: run `minigpt sweep {name}`")
        r = json.loads((s.path / "search.json").read_text())
        cv = ", ".join(f"{k} {_f(v, '.3f')}" for k, v in r["cv_scores"].items())
        md += ["## Search", "",
               f"- points scored: {r['scored']}" + (f"; without a score (failed or not run): "
                                                     f"{', '.join(r['failed_points'])}" if r["failed_points"] else ""),
               f"- regression: **{r['kind']}**, chosen by {sweep.search.folds}-fold cross-validated Spearman "
               f"({cv}); out-of-fold Spearman of the chosen model {_f(r['out_of_fold_spearman'], '.3f')}"
               + ("" if r["converged"] else
                                                                               " — **the fit did not converge**"),
               f"- searched mixture (`{name}-searched`, the mean of the top {sweep.search.top_k} of "
               f"{sweep.search.candidates:,} sampled candidates): {_weights(r['searched'])}",
               f"- its predicted objective {_f(r['predicted_objective'])}; the best measured point "
               f"{r['best_point']['point']} {_f(r['best_point']['objective'])}",
               f"- prior: {_weights(r['prior'])}", ""]
        figure(s, "predicted_vs_measured.png", "predicted against measured")
        figure(s, "importances.png", "weight importances")
        t = store.current(TRANSFER_ASSET, name)
        if t is not None:
            tr = json.loads((t.path / "transfer.json").read_text())
            lo, hi = tr["decision_accuracy_ci"]
            md += ["## Transfer", "",
                   f"{tr['proxy_experiment']} ({_f(tr['tokens']['proxy'], ',')} tokens) -> {tr['target_experiment']} "
                   f"({_f(tr['tokens']['target'], ',')} tokens).", "",
                   f"- Spearman between proxy and target objectives: **{_f(tr['spearman'], '.3f')}**",
                   f"- pairwise decision accuracy: **{_f(tr['decision_accuracy'], '.3f')}** (95% bootstrap interval "
                   f"[{_f(lo, '.3f')}, {_f(hi, '.3f')}], {tr['pairs']} pairs)",
                   f"- the searched mixture beats every hand-written one at the target scale (paired bootstrap, "
                   f"Holm-corrected, p < 0.05): **{'yes' if tr['searched_beats_all_hand_written'] else 'no'}**", ""]
            if tr["failed"]:
                md += [f"- failed runs: {', '.join(f'{k} ({v})' for k, v in tr['failed'].items())}", ""]
            md += ["| mixture | role | proxy | predicted | target | searched - this (95% CI) | p (Holm) |",
                   "|---|---|---:|---:|---:|---|---:|"]
            for m in tr["members"]:
                ci = (f"{_f(-m['diff_vs_searched'])} [{_f(-m['ci_high'])}, {_f(-m['ci_low'])}]"
                      if m["diff_vs_searched"] is not None else "")
                md.append(f"| {m['mixture']} | {m['role']} | {_f(m['proxy_objective'])} | "
                          f"{_f(m['predicted_objective'])} | {_f(m['target_objective'])} | {ci} | "
                          f"{_f(m['p_value'], '.3g') if m['p_value'] is not None else ''} |")
            md.append("")
            figure(t, "transfer.png", "proxy against target objective")
    else:
        a = store.current(SCALING_ASSET, name)
        if a is None:
            raise SweepReportError(f"scaling_law[{name}] is not materialized: run `minigpt sweep {name}`")
        r = json.loads((a.path / "scaling.json").read_text())
        f = r["fits"]["objective"]
        iv = f.get("intervals") or {}
        md += ["## Fit", "",
               f"L(N, D) = E + A/N^alpha + B/D^beta on {sum(not x['held_out'] for x in r['runs'])} runs "
               f"(N = {r['parameters'].replace('_', '-')} parameters)" + ("" if f["converged"] else
                                                                           " — **the fit did not converge**"), "",
               "| parameter | value | 95% bootstrap interval |", "|---|---:|---|"]
        for k in ("E", "A", "B", "alpha", "beta"):
            lohi = iv.get(k)
            band = f"[{_f(lohi[0], '.4g')}, {_f(lohi[1], '.4g')}]" if lohi else ""
            md.append(f"| {k} | {_f(f[k], '.4g')} | {band} |")
        md += ["", "| run | N | D | held out | measured | predicted | error |", "|---|---:|---:|---|---:|---:|---:|"]
        for x, p in zip(r["runs"], f["predicted"]):
            err = "n/a" if p is None else f"{(p - x['objective']) / x['objective']:+.2%}"
            md.append(f"| {x['label']} | {x['params']:,} | {x['tokens']:,} | {'yes' if x['held_out'] else ''} | "
                      f"{x['objective']:.4f} | {_f(p)} | {err} |")
        md.append("")
        if r["failed_points"]:
            md += [f"- runs without a score (failed or not run), left out of the fit: {', '.join(r['failed_points'])}",
                   ""]
        if "target" in f:
            tg = f["target"]
            md += [f"- target {r['target']['model']} on {tg['tokens']:.3g} tokens (N = {tg['params']:.3g}): predicted "
                   f"**{_f(tg['predicted'])}** (95% interval [{_f(tg['low'])}, {_f(tg['high'])}])",
                   f"- compute-optimal for its {tg['flops']:.3g} FLOPs (C = 6ND): N = "
                   f"{_f(tg['compute_optimal_params'], '.3g')}, D = {_f(tg['compute_optimal_tokens'], '.3g')}, "
                   f"predicted {_f(tg['compute_optimal_loss'])}", ""]
        md += ["Per task:", "", "| task | E | alpha | beta | held-out errors |", "|---|---:|---:|---:|---|"]
        for task, ft in r["fits"].items():
            errs = ", ".join("n/a" if e is None else f"{e:+.2%}" for e in ft["held_out_rel_errors"])
            md.append(f"| {task} | {_f(ft['E'], '.4g')} | {_f(ft['alpha'], '.3f')} | {_f(ft['beta'], '.3f')} | {errs} |")
        md.append("")
        figure(a, "scaling.png", "scaling curves")
    path = out / "report.md"
    path.write_text("\n".join(md) + "\n")
    return path
