"""Sweeps end to end on the tiny recipes: validation, expansion, points, proxy runs, search, transfer, scaling."""

from __future__ import annotations

import json
import os

import pytest

from minigpt_assets.recipes import Catalog
from minigpt_assets_tests.conftest import add_second_mixture, add_tiny_training, make_tiny_recipes, write

SWEEP = """
    kind: mixture
    base: {tokenizer: tiny, seq_len: 32, validation_tokens: 300, max_epochs: 400}
    sources: [alpha, beta]
    points: 5
    seed: 3
    proxy: exp
    objective: {eval: bpb}
    search: {candidates: 2000, top_k: 20, folds: 3}
    transfer: {experiment: big, mixtures: all, top: 1, bottom: 1, random: 0, bootstrap: 200}
    """


def sweep_recipes(tmp_path):
    root = add_tiny_training(make_tiny_recipes(tmp_path))
    add_second_mixture(root)
    write(root / "evals/bpb.yaml", """
        kind: bits_per_byte
        max_documents: 20
        """)
    write(root / "experiments/big.yaml", """
        model: tiny
        stages:
          - kind: pretrain
            max_steps: 12
            batch_size: 8
            optim: {lr: 0.01, warmup_steps: 1}
            checkpoint_every: 12
        """)
    write(root / "sweeps/mixdemo.yaml", SWEEP)
    return root


def ladder(sizes: list[tuple[int, int]], tpp: list[float], held_out: str, extra: str) -> str:
    """A scaling sweep over the tiny model's widths x depths on `mix`, scored by the bpb eval."""
    rows = "\n".join(f"      - {{hidden_size: {d}, num_layers: {n}}}" for d, n in sizes)
    return (f"kind: scaling\nmixture: mix\nladder:\n  base_model: tiny\n  sizes:\n{rows}\n"
            f"  tokens_per_parameter: {tpp}\n  held_out: {held_out}\n"
            f"stage: {{batch_size: 8, optim: {{lr: 0.01}}}}\nobjective: {{eval: bpb}}\n{extra}\n")


def problems(root) -> list[str]:
    return [str(p) for p in Catalog.load(root).problems]


def test_sweep_expands_into_points_and_a_searched_mixture(tmp_path):
    cat = Catalog.load_or_raise(sweep_recipes(tmp_path))
    keys = cat.sweep_point_keys("mixdemo")
    assert keys == ["mixdemo.000", "mixdemo.001", "mixdemo.002", "mixdemo.003", "mixdemo.004", "mixdemo.mix",
                    "mixdemo.mix2"]
    assert cat.points["mixdemo.mix"].mixture == "mix" and cat.points["mixdemo.000"].index == 0
    assert "mixdemo-searched" in cat.ordinary_mixtures() and "mixdemo.000" not in cat.ordinary_mixtures()
    # the plan covers the larger experiment's tokens (12 steps x 8 x 32); the proxy reads part of it
    assert cat.mixtures["mixdemo.000"].total_tokens == 12 * 8 * 32
    assert cat.points["mixdemo.000"].tokens == 6 * 8 * 32


def test_point_versions_change_only_with_what_shapes_them(tmp_path):
    root = sweep_recipes(tmp_path)
    before = {k: Catalog.load_or_raise(root).point_hash(k) for k in ("mixdemo.000", "mixdemo.004")}
    write(root / "sweeps/mixdemo.yaml", SWEEP.replace("points: 5", "points: 7").replace("top: 1", "top: 2"))
    cat = Catalog.load_or_raise(root)
    assert {k: cat.point_hash(k) for k in before} == before  # more points, another transfer: same points
    assert "mixdemo.006" in cat.points
    write(root / "sweeps/mixdemo.yaml", SWEEP.replace("seed: 3", "seed: 4"))
    cat = Catalog.load_or_raise(root)
    assert cat.point_hash("mixdemo.000") != before["mixdemo.000"]


@pytest.mark.parametrize("edit, expected", [
    (("sources: [alpha, beta]", "sources: [alpha, gamma]"), "sweeps/mixdemo.yaml: sources: unknown source name 'gamma'"),
    (("proxy: exp", "proxy: nope"), "sweeps/mixdemo.yaml: proxy: unknown experiment 'nope'"),
    (("eval: bpb", "eval: nope"), "sweeps/mixdemo.yaml: objective.eval: unknown eval 'nope'"),
    (("points: 5", "points: 3"), "sweeps/mixdemo.yaml: points: 3 is fewer than sources + 2 (4)"),
    (("kind: mixture", "kind: grid"), "sweeps/mixdemo.yaml: kind: unknown kind 'grid'"),
    (("top: 1", "top: 9"), "sweeps/mixdemo.yaml: transfer: top + bottom + random exceeds the 5 points"),
    (("points: 5", "points: 5\n    colour: red"), "sweeps/mixdemo.yaml: colour: unknown field"),
])
def test_bad_sweeps_are_one_line_each(tmp_path, edit, expected):
    root = sweep_recipes(tmp_path)
    write(root / "sweeps/mixdemo.yaml", SWEEP.replace(*edit))
    found = problems(root)
    assert len(found) == 1 and expected.split(": ", 1)[1] in found[0] and "mixdemo.yaml" in found[0], found


def test_ladder_with_one_size_is_an_error(tmp_path):
    root = sweep_recipes(tmp_path)
    write(root / "sweeps/ladder.yaml", """
        kind: scaling
        mixture: mix
        ladder: {models: [tiny], tokens_per_parameter: [1, 2]}
        """)
    found = problems(root)
    assert len(found) == 1 and found[0].endswith("a ladder needs at least 2 model sizes (models or sizes)"), found


def test_mixture_sweep_end_to_end(tmp_path):
    """points -> proxies -> scores -> search -> searched mixture -> transfer, then the report and the tables."""
    from minigpt_assets.defs.runner import materialize_sweep
    from minigpt_assets.science.mixture_loop import search
    from minigpt_assets.science.pipeline import SweepError
    from minigpt_assets.science.report import write_sweep_report
    from minigpt_assets.settings import Settings
    from minigpt_assets.store import ArtifactStore, StatsDB

    root = sweep_recipes(tmp_path)
    settings = Settings.from_env(recipes=str(root))
    seen = []
    # two points at once, each in a spawned worker whose output goes to its own log
    out = materialize_sweep(settings, "mixdemo", 2, log=lambda s: None, progress=lambda d, t: seen.append((d, t)))
    bad = [(o.asset, o.partition, o.error, o.checks_failed) for o in out if not o.ok]
    assert not bad, bad
    assert seen[0] == (0, 7) and seen[-1] == (7, 7)
    from minigpt_assets.defs.runner import point_log

    assert "proxy_model[mixdemo.003]" in point_log(settings.home, "mixdemo.003").read_text()
    assert "MINIGPT_SWEEP_PARALLEL" not in os.environ and "OMP_NUM_THREADS" not in os.environ
    store = ArtifactStore(settings.home)
    cat = Catalog.load_or_raise(root)
    res = json.loads((store.require("mixture_search", "mixdemo").path / "search.json").read_text())
    assert abs(sum(res["searched"].values()) - 1) < 1e-6 and res["scored"] == 7 and not res["failed_points"]
    plan = json.loads((store.require("mixture", "mixdemo-searched").path / "mixture.json").read_text())
    total = sum(plan["weights"].values())
    for s, w in res["searched"].items():
        assert abs(plan["weights"].get(s, 0) / total - w) < 1e-6
    tr = json.loads((store.require("mixture_transfer", "mixdemo").path / "transfer.json").read_text())
    roles = sorted(m["role"] for m in tr["members"])
    assert roles == ["bottom", "hand-written", "hand-written", "searched", "top"]
    assert 0 <= tr["decision_accuracy"] <= 1 and not tr["failed"]
    assert set(tr["tests"]) == {"mixdemo.mix", "mixdemo.mix2"}
    db = StatsDB(settings.home)
    assert db.query("SELECT count(*) FROM sweep_points WHERE sweep = 'mixdemo'")[1][0][0] == 7
    assert db.query("SELECT count(*) FROM proxy_objectives WHERE scale = 'proxy'")[1][0][0] == 8
    assert db.query("SELECT count(*) FROM mixture_fits WHERE chosen")[1][0][0] == 1
    assert db.query("SELECT count(*) FROM mixture_transfer")[1][0][0] == 5
    assert db.query("SELECT count(*) FROM training_metrics WHERE mixture = 'mixdemo.003'")[1][0][0] > 0
    report = write_sweep_report(settings.home, cat, "mixdemo").read_text()
    assert "## Transfer" in report and "decision accuracy" in report and "predicted_vs_measured.png" in report
    # again: everything is fresh, nothing re-runs
    again = materialize_sweep(settings, "mixdemo", 1, log=lambda s: None)
    ran = [f"{o.asset}[{o.partition}]" for o in again if o.ok and not o.fresh and not o.waiting]
    assert ran == [], ran
    # editing the objective re-scores every point and retrains none (what the daemon under `minigpt ui` would run)
    import dagster as dg

    from minigpt_assets.definitions import build_definitions
    from minigpt_assets.defs.partitions import Partitions
    from minigpt_assets.defs.recipe_versions import report_versions
    from minigpt_assets.defs.runner import instance_for

    defs, instance = build_definitions(settings), instance_for(settings)
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    write(root / "sweeps/mixdemo.yaml", SWEEP.replace("objective: {eval: bpb}",
                                                      "objective: {eval: bpb, tasks: {alpha: 1.0}}"))
    report_versions(instance, Catalog.load_or_raise(root), Partitions.from_catalog(Catalog.load_or_raise(root)))
    r = dg.evaluate_automation_conditions(defs=build_definitions(settings), instance=instance, cursor=first.cursor)
    assert len(r.get_requested_partitions(dg.AssetKey("proxy_scores"))) == 7
    assert not r.get_requested_partitions(dg.AssetKey("proxy_model"))
    assert not r.get_requested_partitions(dg.AssetKey("point_mixture"))
    # a point without a score is listed and left out; fewer than the minimum fails the search
    import shutil

    shutil.rmtree(store.partition_dir("proxy_scores", "mixdemo.002"))
    _, res = search(settings.home, cat, "mixdemo")
    assert res["failed_points"] == ["mixdemo.002"] and res["scored"] == 6
    strict = cat.sweeps["mixdemo"].model_copy(update={"search": cat.sweeps["mixdemo"].search.model_copy(
        update={"min_points": 7})})
    cat.sweeps["mixdemo"] = strict
    with pytest.raises(SweepError, match=r"mixture_search\[mixdemo\]: 6 of 7 points scored, at least 7 needed"):
        search(settings.home, cat, "mixdemo")


def test_scaling_fit_from_scored_runs(tmp_path):
    """scaling_law on a ladder whose runs carry known L(N, D): the fit recovers it and predicts the held-out runs."""
    from minigpt_assets.science.pipeline import SCORES_ASSET, draw_points
    from minigpt_assets.science.scaling_loop import fit
    from minigpt_assets.store import ArtifactStore, StatsDB

    root = sweep_recipes(tmp_path)
    write(root / "sweeps/ladder.yaml", ladder([(16, 1), (32, 1), (32, 2), (64, 2)], [5, 10, 20], "largest",
                                              "target: {model: tiny, tokens: 1.0e6}\nbootstrap: 30"))
    cat = Catalog.load_or_raise(root)
    home = tmp_path / "home"
    store = ArtifactStore(home)
    (home / "artifacts").mkdir(parents=True, exist_ok=True)
    # sweep_points needs no token counts for a ladder
    draw_points(home, cat, "ladder")

    def law(n, d):
        return 1.2 + 40.0 / n ** 0.4 + 90.0 / d ** 0.3

    keys = cat.sweep_point_keys("ladder")
    lost = next(k for k in keys if not cat.points[k].held_out)  # a run whose training failed: no score
    for k in keys:
        p = cat.points[k]
        if k == lost:
            continue
        with store.stage(SCORES_ASSET, k) as st:
            (st.path / "objective.json").write_text(json.dumps({
                "objective": law(p.params, p.tokens), "lower_is_better": True,
                "tasks": {"bpb/alpha": law(p.params, p.tokens)}}))
            st.publish(counts={}, meta={})
    _, res = fit(home, cat, "ladder")
    assert res["failed_points"] == [lost]
    from minigpt_assets.science.report import write_sweep_report

    assert f"left out of the fit: {lost}" in write_sweep_report(home, cat, "ladder").read_text()
    f = res["fits"]["objective"]
    assert len(f["held_out_rel_errors"]) == 3 and max(abs(e) for e in f["held_out_rel_errors"]) < 0.01
    assert f["converged"] and abs(f["E"] - 1.2) / 1.2 < 0.05
    assert f["target"]["low"] <= f["target"]["predicted"] <= f["target"]["high"]
    n, d = f["target"]["compute_optimal_params"], f["target"]["compute_optimal_tokens"]
    assert abs(6 * n * d - f["target"]["flops"]) / f["target"]["flops"] < 1e-6
    db = StatsDB(home)
    assert db.query("SELECT count(*) FROM scaling_fits WHERE sweep = 'ladder'")[1][0][0] == 2  # objective + task
    kinds = dict(db.query("SELECT kind, count(*) FROM scaling_predictions WHERE task = 'objective' GROUP BY kind")[1])
    assert kinds == {"fit": 8, "held_out": 3, "target": 1, "compute_optimal": 1}


@pytest.mark.slow
def test_scaling_sweep_end_to_end(tmp_path):
    from minigpt_assets.defs.runner import materialize_sweep
    from minigpt_assets.science.report import write_sweep_report
    from minigpt_assets.settings import Settings

    root = sweep_recipes(tmp_path)
    write(root / "sweeps/ladder.yaml", ladder([(16, 1), (32, 1), (32, 2)], [0.5, 1, 2], "[d32x2@2]",
                                              "bootstrap: 20"))
    settings = Settings.from_env(recipes=str(root))
    out = materialize_sweep(settings, "ladder", 1, log=lambda s: None)
    bad = [(o.asset, o.partition, o.error) for o in out if not o.ok]
    assert not bad, bad
    report = write_sweep_report(settings.home, Catalog.load_or_raise(root), "ladder").read_text()
    assert "held out" in report and "scaling.png" in report


def test_definitions_with_sweeps_of_every_shape(tmp_path):
    """A mixture sweep with and one without transfer, and a ladder: the code location loads, the ladder's
    generated experiments stay out of the experiment x mixture grid, the searched mixture is a mixture partition."""
    from minigpt_assets.definitions import build_definitions
    from minigpt_assets.settings import Settings

    root = sweep_recipes(tmp_path)
    write(root / "sweeps/notransfer.yaml", SWEEP.split("    transfer:")[0])
    write(root / "sweeps/ladder.yaml", ladder([(16, 1), (32, 1)], [1, 2], "none", ""))
    defs = build_definitions(Settings.from_env(recipes=str(root)))
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"sweep_points", "point_mixture", "proxy_model", "proxy_scores", "mixture_search", "mixture_transfer",
            "scaling_law"} <= keys
    assert graph.get(dg_key("mixture_transfer")).partitions_def.get_partition_keys() == ["mixdemo"]
    assert set(graph.get(dg_key("mixture_search")).partitions_def.get_partition_keys()) == {"mixdemo", "notransfer"}
    assert "ladder.d16x1-t1" in graph.get(dg_key("proxy_model")).partitions_def.get_partition_keys()
    exps = graph.get(dg_key("pretrained_model")).partitions_def.get_partitions_def_for_dimension("experiment")
    assert set(exps.get_partition_keys()) == {"big", "exp"}
    assert "mixdemo-searched" in graph.get(dg_key("mixture")).partitions_def.get_partition_keys()


def dg_key(name: str):
    import dagster as dg

    return dg.AssetKey(name)
