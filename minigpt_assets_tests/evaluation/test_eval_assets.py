"""Evaluation from recipes through the asset graph: benchmark_scores per run, experiment_comparison with its
report, DuckDB tables, `minigpt evaluate | compare`, and the blocking contamination check on a mixture."""

from __future__ import annotations

import gzip
import json

from minigpt_assets.cli import main
from minigpt_assets.defs.runner import materialize_graph
from minigpt_assets.settings import Settings
from minigpt_assets.store import ArtifactStore, StatsDB
from minigpt_assets_tests.conftest import add_second_mixture, prose_doc, write

QUIET = {"log": lambda _: None}


def _recipes(root, tmp_path):
    add_second_mixture(root)
    write(root / "evals/bpb.yaml", "kind: bits_per_byte\nmax_documents: 5\n")
    write(root / "evals/cont.yaml", """
        kind: held_out_choice
        context: 12
        continuation: 3
        examples: 20
        """)
    from minigpt_assets.data.tokens import is_validation

    i = next(i for i in range(2, 12) if not is_validation(f"a{i}", 0.3))
    train_text = prose_doc(i)  # a document alpha trains on: an example copied from it is contaminated
    rows = [{"id": "leak", "context": " ".join(train_text.split()[:20]), "choices": ["yes", "no"], "gold": 0},
            {"id": "clean", "context": "zzq xxv unrelated words that never appear anywhere else at all in here",
             "choices": ["yes", "no"], "gold": 1}]
    mc = tmp_path / "mc.jsonl"
    mc.write_text("".join(json.dumps(r) + "\n" for r in rows))
    write(root / "evals/mc.yaml", f"kind: multiple_choice\nformat: choice\npath: {mc}\n")
    he = tmp_path / "he.jsonl.gz"
    with gzip.open(he, "wt") as f:
        f.write(json.dumps({"task_id": "t/0", "prompt": "def add(a, b):\n", "canonical_solution": "    return a + b\n",
                            "test": "def check(f):\n    assert f(1, 2) == 3\n", "entry_point": "add"}) + "\n")
    write(root / "evals/code.yaml", f"kind: code\npath: {he}\nsamples: 2\nks: [1]\nmax_new_tokens: 8\ntimeout_s: 3\n")


def test_benchmark_scores_and_comparison(tiny_training_recipes, tmp_path, capsys, monkeypatch):
    _recipes(tiny_training_recipes, tmp_path)
    s = Settings(home=tmp_path / "home", recipes=tiny_training_recipes, workers=1)
    out = materialize_graph(s, exclude={"benchmark_scores", "experiment_comparison"}, **QUIET)
    assert all(o.ok for o in out), [o for o in out if not o.ok]
    out = materialize_graph(s, select={"benchmark_scores"}, **QUIET)
    assert sorted(o.partition for o in out if o.ok) == ["exp|mix", "exp|mix2"], out
    out = materialize_graph(s, select={"experiment_comparison"}, **QUIET)
    assert [o.ok for o in out] == [True], out

    db = StatsDB(s.home)
    _, rows = db.query("SELECT mixture, task, metric, count(*), sum(weight) FROM eval_results "
                       "GROUP BY ALL ORDER BY ALL")
    tasks = {(r[1], r[2]) for r in rows}
    assert {("bpb/alpha", "bits_per_byte"), ("bpb/beta", "bits_per_byte"), ("cont/alpha", "acc_mutual_info"),
            ("mc", "acc"), ("code", "pass@1")} <= tasks, tasks
    per_mix = {}
    for mix, task, metric, n, _ in rows:
        per_mix.setdefault((task, metric), {})[mix] = n
    assert all(len(v) == 2 and len(set(v.values())) == 1 for v in per_mix.values())  # paired: same examples
    _, sc = db.query("SELECT task, metric, value, ci_low, ci_high, n FROM eval_scores WHERE mixture = 'mix' "
                     "AND task = 'bpb/alpha' AND metric = 'bits_per_byte'")
    (task, metric, value, lo, hi, n), = sc
    assert 0 < lo <= value <= hi and n >= 1
    _, verdicts = db.query("SELECT task, metric, verdict FROM eval_verdicts ORDER BY ALL")
    assert len(verdicts) == len(tasks) and {v[2] for v in verdicts} <= {"winner", "no significant difference"}
    report = s.home / "reports" / "comparison" / "report.md"
    text = report.read_text()
    assert "exp/mix" in text and "exp/mix2" in text and "Holm" in text
    assert (report.parent / "scores.png").stat().st_size > 1000 and (report.parent / "loss_curves.png").is_file()
    art = ArtifactStore(s.home).require("benchmark_scores", "exp+mix")
    assert (art.path / "results.parquet").is_file()

    # contamination: the example copied from a training document is found, the other is not
    _, cont = db.query("SELECT mixture, task, examples, contaminated FROM eval_contamination WHERE task = 'mc' "
                       "ORDER BY mixture")
    assert cont == [("mix", "mc", 2, 1), ("mix2", "mc", 2, 1)]
    # nothing changed: fresh
    assert not [o for o in materialize_graph(s, **QUIET) if o.ok and not o.fresh]

    # the CLI: evaluate one eval on a run, compare with a filter
    assert main(["--home", str(s.home), "--recipes", str(tiny_training_recipes), "evaluate", "--experiment", "exp",
                 "--mixture", "mix", "--evals", "mc"]) == 0
    assert "mc" in capsys.readouterr().out
    # any exported model folder, next to the trained runs (W&B offline gets its scores)
    from minigpt_assets.models import export_hf

    export_hf(art_model := ArtifactStore(s.home).require("pretrained_model", "exp+mix2").path, tmp_path / "hf")
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert main(["--home", str(s.home), "--recipes", str(tiny_training_recipes), "evaluate", "--model",
                 str(tmp_path / "hf"), "--name", "hf-export", "--evals", "bpb"]) == 0
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert list((s.home / "wandb").rglob("*.wandb")), "no offline W&B run"
    _, rows = db.query("SELECT e.task, e.value, m.value FROM eval_scores e JOIN eval_scores m USING (task, metric) "
                       "WHERE e.experiment = 'hf-export' AND m.mixture = 'mix2' AND m.experiment = 'exp' "
                       "AND metric = 'bits_per_byte'")
    assert rows and all(abs(a - b) < 1e-4 for _, a, b in rows), rows  # the export scores as the checkpoint does
    assert art_model.is_dir()
    assert main(["--home", str(s.home), "--recipes", str(tiny_training_recipes), "compare", "--mixtures",
                 "mix,mix2,external", "--out", str(tmp_path / "rep")]) == 0
    assert "hf-export/external" in (tmp_path / "rep" / "report.md").read_text()
    assert main(["--home", str(s.home), "--recipes", str(tiny_training_recipes), "evaluate", "--experiment", "nope",
                 "--mixture", "mix"]) == 1

    # editing an eval recipe re-evaluates every run and re-compares; nothing else
    cont = tiny_training_recipes / "evals/cont.yaml"
    cont.write_text(cont.read_text().replace("examples: 20", "examples: 10"))
    ran = {(o.asset, o.partition) for o in materialize_graph(s, **QUIET) if o.ok and not o.fresh}
    assert ran == {("benchmark_scores", "exp|mix"), ("benchmark_scores", "exp|mix2"),
                   ("experiment_comparison", None)}, ran

    # a limit on contamination makes the mixture's blocking check fail, which blocks training on it
    mc = tiny_training_recipes / "evals/mc.yaml"
    mc.write_text(mc.read_text() + "max_contamination: 0.0\n")
    out = materialize_graph(s, select={"mixture", "pretrained_model"}, partitions={"mix", "exp|mix"}, force=True,
                            **QUIET)
    first = out[0]
    assert first.asset == "mixture" and not first.ok and "eval_contamination" in first.checks_failed, out
    assert not out[1].ok and "skipped" in out[1].error
