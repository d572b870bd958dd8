"""`minigpt demo` end to end on the shipped recipes: the data graph, then pretraining the demo model on the
default mixture with a clearly falling validation loss, then SFT on the offline python_qa conversations, then
DPO against looping answers; then pretraining on the other demo mixtures, benchmark scores for each and the
comparison report (about 10 minutes on 2 CPU cores)."""

from __future__ import annotations

from minigpt_assets.cli import main
from minigpt_assets.store import ArtifactStore, StatsDB
from minigpt_assets_tests.conftest import REPO


def test_demo_end_to_end(tmp_path, capsys):
    home = tmp_path / "home"
    assert main(["--home", str(home), "--recipes", str(REPO / "recipes"), "demo"]) == 0
    out = capsys.readouterr().out
    assert "minimind-demo" in out and "0 failed" not in out
    art = ArtifactStore(home).require("pretrained_model", "minimind-demo+balanced")
    assert (art.path / "model.safetensors").is_file()
    db = StatsDB(home)
    _, rows = db.query("SELECT step, val_loss FROM training_metrics WHERE val_loss IS NOT NULL "
                       "AND experiment = 'minimind-demo' AND stage = 'pretrain' ORDER BY step")
    first, last = rows[0], rows[-1]
    assert first[0] == 0 and last[0] == 120
    assert last[1] < first[1] - 2.0, rows  # ln(6400) = 8.8 at the start; the demo reaches about 6.1
    _, rows = db.query("SELECT step, val_loss FROM training_metrics WHERE val_loss IS NOT NULL "
                       "AND experiment = 'minimind-demo' AND stage = 'sft' ORDER BY step")
    assert rows[0][0] == 0 and rows[-1][0] == 40 and rows[-1][1] < rows[0][1] - 0.5, rows  # 6.2 -> 5.4
    assert ArtifactStore(home).require("sft_model", "minimind-demo+balanced").path.is_dir()
    _, rows = db.query("SELECT step, val_loss, val_reward_accuracy FROM training_metrics WHERE val_loss IS NOT NULL "
                       "AND experiment = 'minimind-demo' AND stage = 'dpo' ORDER BY step")
    assert rows[0][0] == 0 and abs(rows[0][1] - 0.6931) < 1e-3  # the policy starts as its reference: ln 2
    assert rows[-1][0] == 20 and rows[-1][1] < 0.3 and rows[-1][2] >= 0.9, rows
    assert ArtifactStore(home).require("aligned_model", "minimind-demo+balanced").path.is_dir()
    # every demo mixture pretrained, scored and compared; the report names a verdict per task
    _, rows = db.query("SELECT DISTINCT mixture FROM eval_scores WHERE experiment = 'minimind-demo' ORDER BY 1")
    assert [r[0] for r in rows] == ["balanced", "code_heavy", "web_heavy"]
    _, rows = db.query("SELECT task, verdict FROM eval_verdicts WHERE metric = 'bits_per_byte' ORDER BY task")
    assert {t for t, _ in rows} >= {"held_out_bpb/python_code", "held_out_bpb/web"}, rows
    _, rows = db.query("SELECT winner FROM eval_verdicts WHERE task = 'held_out_bpb/web' AND metric = 'bits_per_byte'")
    assert rows == [("minimind-demo/web_heavy",)], rows  # measured: 1.976 vs 2.013 (balanced), Holm p = 0.007
    report = home / "reports" / "comparison" / "report.md"
    assert "minimind-demo/code_heavy" in report.read_text() and (report.parent / "scores.png").is_file()
    assert "report:" in out
