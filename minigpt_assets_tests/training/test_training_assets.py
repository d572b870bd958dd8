"""Training from recipes: `minigpt train` and the `pretrained_model` asset (Dagster Pipes), stats, freshness."""

from __future__ import annotations

import json
import shutil

import dagster as dg
import pytest
import torch
import yaml

from minigpt_assets.cli import main
from minigpt_assets.defs.runner import materialize_graph
from minigpt_assets.definitions import build_definitions
from minigpt_assets.models import from_pretrained
from minigpt_assets.settings import Settings
from minigpt_assets.store import ArtifactStore, StatsDB
from minigpt_assets_tests.conftest import write

DATA = {"source_documents", "filtered_documents", "quality_classifier", "dedup_index", "deduplicated_documents",
        "tokenizer", "token_shards", "mixture"}


# a 4-step SFT stage on the offline python_qa conversations, appended to the tiny experiment
SFT_STAGE = """\
  - kind: sft
    max_steps: 4
    batch_size: 4
    optim: {lr: 0.003, warmup_steps: 1}
    checkpoint_every: 2
    eval_every: 2
    chat: {kind: builtin, name: python_qa, limit: 200, validation_fraction: 0.1, seq_len: 256}
"""


def _settings(tmp_path, recipes) -> Settings:
    return Settings(home=tmp_path / "home", recipes=recipes, workers=1)


def _ran(outcomes):
    return {(o.asset, o.partition) for o in outcomes if o.ok and not o.fresh}


def test_pretrained_model_asset_through_pipes(tiny_training_recipes, tmp_path):
    s = _settings(tmp_path, tiny_training_recipes)
    quiet = {"log": lambda _: None}
    graph = build_definitions(s).resolve_asset_graph()
    node = graph.get(dg.AssetKey("pretrained_model"))
    assert node.partitions_def.get_partition_keys() == ["exp|mix"]
    assert {k.to_user_string() for k in node.parent_keys} >= {"mixture", "experiment_recipe"}

    materialize_graph(s, select=DATA, **quiet)
    out = materialize_graph(s, select={"pretrained_model"}, **quiet)
    assert [(o.asset, o.partition, o.ok) for o in out] == [("pretrained_model", "exp|mix", True)], out
    art = ArtifactStore(s.home).require("pretrained_model", "exp+mix")
    summary = json.loads((art.path / "training.json").read_text())
    assert summary["steps"] == 6 and summary["complete"] and summary["final_loss"] < summary["first_loss"]
    model = from_pretrained(art.path)
    assert model(torch.tensor([[1, 2, 3]])).shape == (1, 3, 320)
    assert (art.path / "tokenizer.json").is_file() and (art.path / "loss_curve.png").stat().st_size > 1000

    cols, rows = StatsDB(s.home).query("SELECT step, loss, val_loss FROM training_metrics ORDER BY step")
    steps = [r[0] for r in rows]
    assert steps == [0, 1, 2, 3, 4, 5, 6]
    assert rows[0][2] is not None and rows[-1][2] < rows[0][2]  # validation loss at step 0 and falling

    # nothing changed: fresh; an experiment edit re-trains only the model, not the data
    assert _ran(materialize_graph(s, **quiet)) == set()
    exp = tiny_training_recipes / "experiments/exp.yaml"
    exp.write_text(exp.read_text().replace("max_steps: 6", "max_steps: 4"))
    assert _ran(materialize_graph(s, **quiet)) == {("pretrained_model", "exp|mix")}
    again = ArtifactStore(s.home).require("pretrained_model", "exp+mix")
    assert json.loads((again.path / "training.json").read_text())["steps"] == 4


def test_train_command_and_its_errors(tiny_training_recipes, tmp_path, capsys):
    s = _settings(tmp_path, tiny_training_recipes)
    args = ["--home", str(s.home), "--recipes", str(tiny_training_recipes), "train", "--mixture", "mix",
            "--experiment", "exp"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mixture[mix] has not been materialized" in err[0]
    materialize_graph(s, select=DATA, log=lambda _: None)
    assert main(args + ["--max-steps", "3"]) == 0
    out = capsys.readouterr().out
    assert "trained 3/6 steps" in out
    assert main(args + ["--resume"]) == 0  # continues the same run from step 3 to 6
    assert "trained 6/6 steps" in capsys.readouterr().out
    run = next((s.home / "runs/exp/mix").iterdir())
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert main(args[:-1] + ["nope"]) == 1
    assert "unknown experiment 'nope'" in capsys.readouterr().err
    write(tiny_training_recipes / "models/tiny.yaml",
          (tiny_training_recipes / "models/tiny.yaml").read_text().replace("vocab_size: 320", "vocab_size: 100"))
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "vocab_size: 100 is smaller than tokenizer 'tiny'" in err[0]


@pytest.mark.parametrize("bad, message", [
    ("model: nope\nstages: [{kind: pretrain}]\n", "model: unknown model recipe 'nope'"),
    ("model: tiny\nstages: []\n", "stages"),
    ("model: tiny\nstages: [{kind: pretrain, batch_size: 6, micro_batch_size: 4}]\n", "multiple of micro_batch_size"),
])
def test_bad_experiment_recipe_is_one_line(tiny_training_recipes, capsys, bad, message):
    (tiny_training_recipes / "experiments/exp.yaml").write_text(bad)
    assert main(["--recipes", str(tiny_training_recipes), "validate"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(str(tiny_training_recipes / "experiments/exp.yaml")) or \
        "experiments/exp.yaml" in err[0]
    assert message in err[0]


def test_asset_trains_under_torchrun_with_two_ranks(tiny_training_recipes, tmp_path, monkeypatch):
    """compute: a profile with torchrun x 2 (DDP on gloo): Pipes reaches rank 0 through torchrun."""
    res = tmp_path / "resources"
    write(res / "two.yaml", """
        training: {launcher: torchrun, nproc_per_node: 2, strategy: ddp, device: cpu}
        """)
    monkeypatch.setenv("MINIGPT_RESOURCES", str(res))
    exp = tiny_training_recipes / "experiments/exp.yaml"
    exp.write_text("compute: two\n" + exp.read_text())
    s = _settings(tmp_path, tiny_training_recipes)
    materialize_graph(s, select=DATA, log=lambda _: None)
    out = materialize_graph(s, select={"pretrained_model"}, log=lambda _: None)
    assert [o.ok for o in out] == [True], out
    art = ArtifactStore(s.home).require("pretrained_model", "exp+mix")
    assert json.loads((art.path / "training.json").read_text())["steps"] == 6
    run_dir = json.loads((art.path / "training.json").read_text())["run_dir"]
    assert json.loads(open(f"{run_dir}/spec.json").read())["strategy"] == "ddp"


def test_sft_stage_trains_on_answers_from_the_pretrained_model(tiny_training_recipes, tmp_path):
    exp = tiny_training_recipes / "experiments/exp.yaml"
    exp.write_text(exp.read_text() + SFT_STAGE)
    s = _settings(tmp_path, tiny_training_recipes)
    graph = build_definitions(s).resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get(dg.AssetKey("sft_model")).parent_keys} >= {"pretrained_model"}
    materialize_graph(s, select=DATA, log=lambda _: None)
    out = materialize_graph(s, select={"pretrained_model", "sft_model"}, log=lambda _: None)
    assert [(o.asset, o.ok) for o in out] == [("pretrained_model", True), ("sft_model", True)], out
    store = ArtifactStore(s.home)
    sft = store.require("sft_model", "exp+mix")
    summary = json.loads((sft.path / "training.json").read_text())
    assert summary["steps"] == 4 and summary["final_val_loss"] is not None
    run_dir = summary["run_dir"]
    spec = json.loads(open(f"{run_dir}/spec.json").read())
    assert spec["init_weights"] == str(store.require("pretrained_model", "exp+mix").path)
    assert spec["data"]["kind"] == "chat"
    _, rows = StatsDB(s.home).query("SELECT DISTINCT stage FROM training_metrics ORDER BY 1")
    assert [r[0] for r in rows] == ["pretrain", "sft"]


def test_sft_labels_cover_exactly_the_answers(tiny_training_recipes, tmp_path):
    """Loss mask: only assistant content and its end-of-turn token are trained."""
    import numpy as np

    from minigpt_assets.data.chat import PackedChat, encode_conversation, python_qa
    from minigpt_assets.data.loader import make_batch

    s = _settings(tmp_path, tiny_training_recipes)
    materialize_graph(s, select={"source_documents", "filtered_documents", "quality_classifier", "dedup_index",
                                 "deduplicated_documents", "tokenizer"}, log=lambda _: None)
    tok = ArtifactStore(s.home).require("tokenizer", "tiny").path
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tok)
    conv = python_qa(1)[0]
    ids, mask = encode_conversation(tok, conv)
    assert hf.decode(ids[mask == 1]).replace("\n", "").endswith(conv[2]["content"] + "<|im_end|>")
    assert conv[1]["content"] in hf.decode(ids[mask == 0])
    assert hf.decode(ids) == hf.apply_chat_template(conv, tokenize=False)
    packed = PackedChat([(ids, mask), (ids, mask)], seq_len=len(ids) * 2 + 5, pad_id=0)
    b = make_batch(packed, [0])
    trained = b["labels"][0] != -100
    assert trained.sum() == 2 * mask.sum() - mask[0]  # labels are the next tokens: both answers, nothing else
    window = packed.window_tokens(0)[0]
    assert (b["labels"][0][trained] == window[1:][trained]).all()
    assert set(np.unique(b["doc_ids"][0])) == {0, 1, 2}  # two conversations and the padding


def test_dpo_loss_matches_the_formula():
    """The DPO objective on hand-made log-probabilities: -log sigmoid(beta * margin), and IPO's square."""
    import types

    import numpy as np
    import torch.nn.functional as F

    from minigpt_assets.training.config import StageConfig
    from minigpt_assets.training.objectives import DPO

    for loss_kind in ("sigmoid", "ipo"):
        stage = StageConfig(kind="dpo", batch_size=2, chat={"kind": "builtin"}, dpo={"beta": 0.5, "loss": loss_kind})
        obj = DPO.__new__(DPO)  # only the loss: no model, data or optimizer needed
        obj.stage = stage
        obj.trainer = types.SimpleNamespace(train_model=None, to_device=torch.from_numpy)
        obj.reference = None
        logps = {"pol": torch.tensor([-3.0, -5.0, -4.0, -4.5]), "ref": torch.tensor([-3.5, -4.0, -4.2, -4.0])}
        calls = iter(["pol", "ref"])
        obj.sequence_logps = lambda model, ids, labels: logps[next(calls)]
        batch = {k: np.zeros((2, 3), dtype=np.int64) for k in ("chosen_ids", "chosen_labels", "rejected_ids",
                                                                "rejected_labels")}
        got, stats = obj.loss(batch, 0, 2)
        margin = (torch.tensor([-3.0, -5.0]) - torch.tensor([-3.5, -4.0])) - (torch.tensor([-4.0, -4.5])
                                                                              - torch.tensor([-4.2, -4.0]))
        want = -F.logsigmoid(0.5 * margin).mean() if loss_kind == "sigmoid" else ((margin - 1.0) ** 2).mean()
        assert torch.allclose(got, want)
        assert stats["reward_accuracy"] == 0.5


def test_full_chain_pretrain_sft_dpo(tiny_training_recipes, tmp_path):
    from minigpt_assets.data.chat import python_qa

    prefs = tmp_path / "prefs.jsonl"  # an easy preference to learn in a few steps: answer rather than refuse
    prefs.write_text("".join(json.dumps({"messages": c[:2], "chosen": c[2]["content"], "rejected": "No idea."}) + "\n"
                             for c in python_qa(200)))
    exp = tiny_training_recipes / "experiments/exp.yaml"
    exp.write_text(exp.read_text() + SFT_STAGE + """\
  - kind: dpo
    max_steps: 8
    batch_size: 8
    optim: {lr: 0.001, warmup_steps: 1, weight_decay: 0.0}
    checkpoint_every: 8
    eval_every: 8
    dpo: {beta: 0.1}
    chat: {kind: jsonl, location: PREFS, limit: 200, seq_len: 256, validation_fraction: 0.2}
""".replace("PREFS", str(prefs)))
    s = _settings(tmp_path, tiny_training_recipes)
    materialize_graph(s, select=DATA, log=lambda _: None)
    out = materialize_graph(s, select={"pretrained_model", "sft_model", "aligned_model"}, log=lambda _: None)
    assert [(o.asset, o.ok) for o in out] == [("pretrained_model", True), ("sft_model", True),
                                              ("aligned_model", True)], out
    art = ArtifactStore(s.home).require("aligned_model", "exp+mix")
    rows = [json.loads(x) for x in (art.path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    assert abs(train[0]["loss"] - 0.6931) < 1e-3  # policy == reference at the start: -log sigmoid(0)
    assert train[-1]["loss"] < 0.5 and train[-1]["reward_accuracy"] == 1.0
    assert rows[-1]["val_reward_accuracy"] == 1.0 and rows[-1]["val_loss"] < 0.5

    # the exported model's card: the mixture's realized shares, every stage trained, the sources' licenses
    assert main(["--home", str(s.home), "--recipes", str(tiny_training_recipes), "export-hf", str(art.path),
                 str(tmp_path / "hf")]) == 0
    card = (tmp_path / "hf" / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["pipeline_tag"] == "text-generation" and meta["license"] == "other" and len(meta["datasets"]) >= 2
    assert "# exp on mix (aligned_model)" in card and "## Training data" in card and "actual_share" in card
    stages = card.split("## Training\n")[1].split("##")[0]
    assert [line.split("|")[1].strip() for line in stages.splitlines() if line.startswith("| ") and
            "stage" not in line] == ["pretrain", "sft", "dpo"]
    assert "## License" in card and "| source | license |" in card

    # editing the preference file (not the recipe) changes the experiment's version: the earlier stages only
    # re-publish their finished runs (same weights), the dpo stage trains again in a new run folder
    pre = ArtifactStore(s.home).require("pretrained_model", "exp+mix").path / "model.safetensors"
    before = pre.read_bytes()
    prefs.write_text(prefs.read_text().replace("No idea.", "I do not know."))
    again = materialize_graph(s, select={"pretrained_model", "sft_model", "aligned_model"}, log=lambda _: None)
    assert ("aligned_model", "exp|mix") in _ran(again)
    pre = ArtifactStore(s.home).require("pretrained_model", "exp+mix").path / "model.safetensors"
    assert pre.read_bytes() == before
    new = ArtifactStore(s.home).require("aligned_model", "exp+mix")
    assert json.loads((new.path / "training.json").read_text())["run_dir"] != json.loads(
        (art.path / "training.json").read_text())["run_dir"]


def test_lora_then_grpo_chain_and_distill_from_another_experiment(tiny_training_recipes, tmp_path):
    """pretrain -> lora -> grpo through Dagster, and a second experiment that distills the first one's LoRA model."""
    exp = tiny_training_recipes / "experiments/exp.yaml"
    exp.write_text(exp.read_text() + """\
  - kind: lora
    max_steps: 3
    batch_size: 4
    optim: {lr: 0.01, warmup_steps: 1}
    lora: {r: 4, alpha: 8}
    chat: {kind: builtin, name: python_qa, limit: 100, seq_len: 256}
  - kind: grpo
    max_steps: 2
    batch_size: 2
    optim: {lr: 0.001, warmup_steps: 1}
    eval_every: 2
    eval_batches: 2
    grpo: {group_size: 4, max_new_tokens: 6}
    chat: {kind: builtin, name: arithmetic, max_operand: 3, validation_fraction: 0.2}
""")
    write(tiny_training_recipes / "experiments/student.yaml", """
        model: tiny
        stages:
          - {kind: pretrain, max_steps: 2, batch_size: 4, optim: {lr: 0.01}}
          - kind: distill
            max_steps: 3
            batch_size: 4
            optim: {lr: 0.01, warmup_steps: 1}
            eval_every: 3
            distill: {teacher_experiment: exp, teacher_stage: lora, temperature: 2.0, alpha: 0.5}
            chat: {kind: builtin, name: python_qa, limit: 100, seq_len: 256, validation_fraction: 0.1}
        """)
    s = _settings(tmp_path, tiny_training_recipes)
    materialize_graph(s, select=DATA, log=lambda _: None)
    out = materialize_graph(s, select={"pretrained_model", "sft_model", "aligned_model"}, log=lambda _: None)
    assert [(o.asset, o.partition, o.ok) for o in out] == [
        ("pretrained_model", "exp|mix", True), ("pretrained_model", "student|mix", True),
        ("sft_model", "exp|mix", True), ("sft_model", "student|mix", True), ("aligned_model", "exp|mix", True)], out
    store = ArtifactStore(s.home)
    lora = store.require("sft_model", "exp+mix")
    assert (lora.path / "adapter" / "adapter_model.safetensors").is_file()
    merged = from_pretrained(lora.path)  # plain weights: the adapter is merged
    assert not any("lora" in k for k in merged.state_dict())
    grpo = json.loads((store.require("aligned_model", "exp+mix").path / "training.json").read_text())
    assert grpo["steps"] == 2 and grpo["first_val_reward"] is not None and grpo["final_val_reward"] is not None
    student = json.loads((store.require("sft_model", "student+mix").path / "training.json").read_text())
    spec = json.loads(open(f"{student['run_dir']}/spec.json").read())
    assert spec["teacher"] == str(lora.path) and spec["init_weights"] == str(
        store.require("pretrained_model", "student+mix").path)
    _, rows = StatsDB(s.home).query("SELECT stage, count(kl), count(reward), count(val_reward) FROM training_metrics "
                                    "WHERE stage IN ('distill', 'grpo') GROUP BY 1 ORDER BY 1")
    assert rows == [("distill", 3, 0, 0), ("grpo", 2, 2, 2)]


def test_reward_model_then_ppo_against_it_through_dagster(tiny_training_recipes, tmp_path, capsys):
    """pretrain -> sft -> reward in one experiment, pretrain -> sft -> ppo (reward_from it) in another: the shared
    first stages train once, the reward model is a `reward_model` asset, PPO is scored by it, and a wrong
    reward source is one line before any training."""
    exp = tiny_training_recipes / "experiments/exp.yaml"
    exp.write_text(exp.read_text() + SFT_STAGE + """\
  - kind: reward
    max_steps: 4
    batch_size: 4
    optim: {lr: 0.003, warmup_steps: 1, weight_decay: 0.0}
    eval_every: 4
    eval_batches: 2
    chat: {kind: builtin, name: python_qa, preference: repetition, limit: 200, seq_len: 256}
""")
    rl = tiny_training_recipes / "experiments/rl.yaml"
    rl.write_text(exp.read_text().split("  - kind: reward")[0] + """\
  - kind: ppo              # plumbing only (learning: test_rlhf.py): a step too small to move the greedy answers,
    max_steps: 2           # so the blocking check (the held-out reward did not fall) holds whatever the data
    batch_size: 2
    optim: {lr: 1.0e-9, warmup_steps: 1}
    eval_every: 2
    eval_batches: 2
    ppo: {reward_from: {experiment: exp}, max_new_tokens: 6, epochs: 2}
    chat: {kind: builtin, name: arithmetic, max_operand: 3, validation_fraction: 0.2}
""")
    s = _settings(tmp_path, tiny_training_recipes)
    materialize_graph(s, select=DATA, log=lambda _: None)
    models = {"pretrained_model", "sft_model", "reward_model", "aligned_model"}
    out = materialize_graph(s, select=models, log=lambda _: None)
    assert [(o.asset, o.partition, o.ok) for o in out] == [
        ("pretrained_model", "exp|mix", True), ("pretrained_model", "rl|mix", True),
        ("sft_model", "exp|mix", True), ("sft_model", "rl|mix", True),
        ("reward_model", "exp|mix", True), ("aligned_model", "rl|mix", True)], out
    store = ArtifactStore(s.home)
    assert not (s.home / "runs/rl/mix").exists() or sorted(p.name.split("-")[0] for p in
                                                            (s.home / "runs/rl/mix").iterdir()) == ["ppo"]
    for asset in ("pretrained_model", "sft_model"):  # trained once, published for both experiments
        a, b = (store.require(asset, f"{e}+mix").path / "model.safetensors" for e in ("exp", "rl"))
        assert a.read_bytes() == b.read_bytes()
    rm = store.require("reward_model", "exp+mix")
    assert getattr(from_pretrained(rm.path), "score", None) is not None
    summary = json.loads((rm.path / "training.json").read_text())
    assert summary["final_val_reward_accuracy"] is not None
    ppo = store.require("aligned_model", "rl+mix")
    assert getattr(from_pretrained(ppo.path), "score", None) is None  # the policy alone, a plain causal LM
    spec = json.loads(open(f"{json.loads((ppo.path / 'training.json').read_text())['run_dir']}/spec.json").read())
    assert spec["reward_model"] == str(rm.path)
    _, rows = StatsDB(s.home).query("SELECT stage, count(reward), count(clip_fraction), count(value_loss), "
                                    "count(entropy), count(val_reward), count(val_reward_accuracy) "
                                    "FROM training_metrics WHERE stage IN ('ppo', 'reward') GROUP BY 1 ORDER BY 1")
    assert rows == [("ppo", 2, 2, 2, 2, 2, 0), ("reward", 0, 0, 0, 0, 0, 2)]

    # a reward source that is not a reward model: one line naming the recipe field, before any training
    rl.write_text(rl.read_text().replace("reward_from: {experiment: exp}", "reward_from: {experiment: rl}"))
    args = ["--home", str(s.home), "--recipes", str(tiny_training_recipes), "train", "--mixture", "mix",
            "--experiment", "rl", "--stage", "ppo"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("recipes/experiments/rl.yaml: stages.2.ppo.reward_from: experiment 'rl' "
                                             "has no reward stage")  # found when the recipes load
    other = tmp_path / "other-rm"  # a reward model trained with another tokenizer
    shutil.copytree(rm.path, other)
    (other / "tokenizer.json").write_text((other / "tokenizer.json").read_text().replace('"<|im_end|>"', '"<|end|>"'))
    rl.write_text(rl.read_text().replace("reward_from: {experiment: rl}", f"reward_from: {{path: '{other}'}}"))
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("a reward model must share the policy's tokenizer")
    assert "stages.2.ppo.reward_from" in err[0]
