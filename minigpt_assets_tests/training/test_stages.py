"""The post-training objectives on small models: LoRA (merge, peft interop, exact resume), distillation and
GRPO, each checked against its definition and shown to learn."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minigpt_assets.data.loader import ArrayTokens
from minigpt_assets.models import build_model, from_pretrained, make_config
from minigpt_assets.models.interop import save_model
from minigpt_assets.training.objectives import distill_kl
from minigpt_assets.training.trainer import Trainer
from minigpt_assets_tests.training.test_trainer import EOS, MODEL, _result, _run, _spec, counting_corpus, stage

CHAT = {"kind": "builtin", "name": "python_qa"}  # required by the stage kinds; these tests hand data in directly


def _saved_model(path, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model = build_model(make_config({**MODEL, **overrides}), device="cpu")
    model.init_weights()
    return save_model(model, path)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny model that has learned to count (the teacher, and the base the adapters start from)."""
    root = tmp_path_factory.mktemp("pretrained")
    tr = Trainer(make_config(MODEL), stage(max_steps=60, checkpoint_every=60, optim={"lr": 1e-2, "warmup_steps": 5}),
                 ArrayTokens(counting_corpus(), 32, EOS), root, device="cpu")
    return tr.fit().checkpoint


# ---------------------------------------------------------------------------------------------------- LoRA
def counting_by_two(n_tokens: int = 40_000) -> np.ndarray:
    c = counting_corpus(n_tokens).astype(np.int64)
    return np.where(c == EOS, EOS, (2 * (c - 1)) % 63 + 1).astype(np.uint16)


def test_lora_trains_adapters_only_and_merges_exactly(tmp_path, pretrained):
    """Adapt the counting model to count in twos, through three kinds of layer only."""
    base = pretrained
    tr = Trainer(make_config(MODEL), stage(kind="lora", chat=CHAT, max_steps=20, checkpoint_every=20,
                                           lora={"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"]},
                                           optim={"lr": 3e-2, "warmup_steps": 2, "weight_decay": 0.0}),
                 ArrayTokens(counting_by_two(), 32, EOS), tmp_path / "run", device="cpu", init_weights=base)
    trainable = {n for n, p in tr.model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    cfg = tr.model_cfg  # r x (in + out) per adapted layer: q 32->32, v 32->16 (2 kv heads), down 128->32
    assert (cfg.dim_head, cfg.kv_heads, cfg.ffn_size) == (8, 2, 128)
    assert sum(tr.model.get_parameter(n).numel() for n in trainable) == 2 * 4 * ((32 + 32) + (32 + 16) + (128 + 32))
    res = tr.fit()
    losses = [r["loss"] for r in res.metrics]
    assert losses[-1] < losses[0] - 2.0

    merged = from_pretrained(res.checkpoint)  # the checkpoint holds plain, merged weights
    ids = torch.tensor([[3, 4, 5, 6, 7, 8, 9, 10]])
    tr.model.eval()
    with torch.no_grad():
        assert torch.allclose(merged(ids), tr.model(ids), atol=1e-5)
    before = from_pretrained(base).state_dict()
    after = merged.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {f"model.layers.{i}.{m}.weight" for i in range(2)
                       for m in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")}
    conf = json.loads((res.checkpoint / "adapter" / "adapter_config.json").read_text())
    assert conf["peft_type"] == "LORA" and conf["r"] == 4 and sorted(conf["target_modules"]) == ["down_proj", "q_proj",
                                                                                                   "v_proj"]


def test_lora_adapter_loads_with_peft_on_the_exported_base(tmp_path):
    """The adapter folder is peft's format: on the transformers export of the base it computes our merged model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from minigpt_assets.models.interop import export_hf

    base = _saved_model(tmp_path / "base", seed=3)
    tr = Trainer(make_config(MODEL), stage(kind="lora", chat=CHAT, max_steps=6, checkpoint_every=6,
                                           optim={"lr": 1e-2, "warmup_steps": 1}),
                 ArrayTokens(counting_corpus(), 32, EOS), tmp_path / "run", device="cpu", init_weights=base)
    ckpt = tr.fit().checkpoint
    hf = AutoModelForCausalLM.from_pretrained(export_hf(base, tmp_path / "hf"), dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(hf, ckpt / "adapter").eval()
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9]])
    with torch.no_grad():
        ours, theirs = from_pretrained(ckpt)(ids), peft_model(input_ids=ids).logits
    assert (ours - theirs).abs().max() < 1e-4
    with torch.no_grad(), peft_model.disable_adapter():  # and the adapter is not a no-op
        assert (peft_model(input_ids=ids).logits - theirs).abs().max() > 1e-3


def test_lora_resume_after_sigkill_is_bit_identical(tmp_path):
    base = _saved_model(tmp_path / "base", seed=1)
    kw = {"kind": "lora", "chat": CHAT, "lora": {"r": 4}}

    def spec(name):
        path = _spec(tmp_path, tmp_path / name, **kw)
        s = json.loads(path.read_text())
        path.write_text(json.dumps({**s, "init_weights": str(base)}))
        return path

    ref = _result(_run(spec("ref")))
    killed = spec("killed")
    assert _run(killed, "step:7").returncode == -9
    res = _result(_run(killed))
    assert res["resumed_from"] == 4 and res["losses"] == ref["losses"][4:]


# ---------------------------------------------------------------------------------------------------- distill
def test_distill_kl_is_the_softened_kl():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 11), torch.randn(2, 5, 13)  # the teacher may have a larger (padded) vocabulary
    labels = torch.tensor([[1, 2, -100, 3, 4], [-100, -100, 5, 6, 7]])
    temp = 2.0
    ref = F.kl_div(F.log_softmax(s / temp, -1), F.log_softmax(t[..., :11] / temp, -1), log_target=True,
                   reduction="none").sum(-1)
    keep = labels != -100
    assert torch.allclose(distill_kl(s, t, labels, temp), ref[keep].mean() * temp ** 2)
    assert float(distill_kl(t[..., :11], t, labels, temp)) == pytest.approx(0.0, abs=1e-6)


def test_distill_moves_the_student_to_the_teacher(tmp_path, pretrained):
    student = _saved_model(tmp_path / "student", seed=7)
    data, val = ArrayTokens(counting_corpus(), 32, EOS), ArrayTokens(counting_corpus(4000, seed=1), 32, EOS)
    st = stage(kind="distill", max_steps=40, checkpoint_every=40, eval_every=40,
               distill={"teacher_path": str(pretrained), "temperature": 2.0, "alpha": 1.0},
               optim={"lr": 1e-2, "warmup_steps": 2})
    tr = Trainer(make_config(MODEL), st, data, tmp_path / "run", val=val, device="cpu", init_weights=student,
                 teacher=pretrained)
    res = tr.fit()
    kls = [r["kl"] for r in res.metrics]
    assert kls[-1] < 0.3 * kls[0]
    ids = torch.tensor([[20, 21, 22, 23, 24, 25]])
    assert from_pretrained(res.checkpoint)(ids)[0, -1].argmax().item() == 26  # counting, learned from the teacher


# ---------------------------------------------------------------------------------------------------- GRPO
class _ParityTasks:
    """A task a policy-gradient method must solve by sampling: answer with an even token. `decode` turns the
    first generated token into "1" (even) or "0", and every task's answer is "1", so `number_match` scores it."""

    eos_id = EOS

    def __init__(self, n: int):
        rng = np.random.default_rng(0)
        self.prompts = [rng.integers(1, 64, size=int(rng.integers(3, 8))).astype(np.int64) for _ in range(n)]
        self.answers = ["1"] * n
        self.window = 9

    def __len__(self):
        return len(self.prompts)

    def make_batch(self, idx):
        return {"windows": np.asarray(idx)}

    def decode(self, ids):
        return "1" if ids and ids[0] % 2 == 0 and ids[0] != EOS else "0"


def _grpo_stage(**kw):
    return stage(kind="grpo", chat={"kind": "builtin", "name": "arithmetic"}, batch_size=4, micro_batch_size=2,
                 grpo={"group_size": 8, "max_new_tokens": 2, "beta": 0.0, **kw.pop("grpo", {})}, **kw)


def test_grpo_loss_is_the_group_relative_policy_gradient(tmp_path):
    """beta = 0: the gradient is that of -mean_i A_i * mean_t log pi(y_it), A the group-normalized reward."""
    base = _saved_model(tmp_path / "base")
    tr = Trainer(make_config(MODEL), _grpo_stage(max_steps=1), _ParityTasks(16), tmp_path / "run", device="cpu",
                 init_weights=base)
    batch = tr.objective.rollouts(tr.loader.data, [0, 1])
    adv = batch["advantages"].view(2, 8)
    assert torch.allclose(adv.mean(1), torch.zeros(2), atol=1e-5)
    labels = batch["labels"]
    for row, ids in zip(labels, batch["input_ids"]):  # only completion tokens are trained
        keep = (row != -100).nonzero().flatten()
        assert 1 <= len(keep) <= 2 and keep[0] > 1
    tr.model.train()
    loss, _ = tr.objective.loss(batch, 0, 2)
    (g_ours,) = torch.autograd.grad(loss, [tr.model.model.embed_tokens.weight])
    logits = tr.model(batch["input_ids"])
    tok = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
    mask = (labels != -100).float()
    ref = -(batch["advantages"] * (tok * mask).sum(1) / mask.sum(1)).mean()
    (g_ref,) = torch.autograd.grad(ref, [tr.model.model.embed_tokens.weight])
    assert torch.allclose(g_ours, g_ref, atol=1e-6) and g_ref.abs().sum() > 0


def test_grpo_raises_the_reward(tmp_path):
    base = _saved_model(tmp_path / "base", seed=2)
    st = _grpo_stage(max_steps=25, checkpoint_every=25, eval_every=25, eval_batches=4,
                     grpo={"beta": 0.02, "temperature": 1.0}, optim={"lr": 1e-2, "warmup_steps": 1,
                                                                      "schedule": "constant", "weight_decay": 0.0})
    tr = Trainer(make_config(MODEL), st, _ParityTasks(64), tmp_path / "run", val=_ParityTasks(16), device="cpu",
                 init_weights=base)
    res = tr.fit()
    rewards = [r["reward"] for r in res.metrics]
    assert np.mean(rewards[:3]) < 0.75 and np.mean(rewards[-3:]) > 0.95
    assert res.metrics[-1]["kl"] > 0  # it moved away from the reference, and says by how much
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["val_reward"] == 1.0


# ---------------------------------------------------------------------------------------------------- W&B
def test_metrics_go_to_an_offline_wandb_run(tmp_path, monkeypatch):
    """The default W&B mode is offline: the run is written under the run folder, named and id'd by the stage."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    spec_path = _spec(tmp_path, tmp_path / "run", max_steps=3)
    spec = json.loads(spec_path.read_text())
    spec["wandb"] = {"mode": "offline", "project": "p", "name": "exp/mix/pretrain", "group": "exp/mix", "id": "k123"}
    spec_path.write_text(json.dumps(spec))
    assert len(_result(_run(spec_path))["losses"]) == 3
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*-k123"))
    assert len(runs) == 1
    data = next(runs[0].glob("run-k123.wandb")).read_bytes()
    assert all(key in data for key in (b"grad_norm", b"tokens_per_s", b"exp/mix/pretrain"))


def _grpo_rank(rank: int, world: int, port: int, base: str, out: str) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        st = _grpo_stage(max_steps=4, checkpoint_every=4, optim={"lr": 1e-2, "warmup_steps": 1})
        tr = Trainer(make_config(MODEL), st, _ParityTasks(32), Path(out), device="cpu", init_weights=Path(base),
                     rank=rank, world_size=world, strategy="ddp")
        res = tr.fit()
        weights = torch.cat([p.detach().flatten() for p in tr.model.parameters()])
        torch.save({"rewards": [r["reward"] for r in res.metrics], "weights": weights}, f"{out}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_grpo_under_ddp_keeps_the_ranks_in_step(tmp_path):
    """Each rank samples its own prompts (different sequence lengths per rank); DDP averages the gradients, so
    the replicas stay identical, and the checkpoint is written once."""
    import socket

    import torch.multiprocessing as mp

    base = _saved_model(tmp_path / "base", seed=4)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_grpo_rank, args=(2, port, str(base), str(tmp_path / "run")), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / "run" / f"rank{r}.pt") for r in (0, 1))
    assert torch.equal(r0["weights"], r1["weights"])
    assert r0["rewards"] == r1["rewards"]  # the batch's mean reward over both ranks, reported the same on each
    assert len(r0["rewards"]) == 4 and (tmp_path / "run" / "checkpoints" / "step-00000004").is_dir()


def test_grpo_shuffled_advantages_are_a_permutation(tmp_path):
    """The control run: the same advantages, permuted across the batch, the same way on every run."""
    base = _saved_model(tmp_path / "base")
    out = {}
    for shuffle in (False, True, True):
        tr = Trainer(make_config(MODEL), _grpo_stage(max_steps=1, grpo={"shuffle_advantages": shuffle}),
                     _ParityTasks(16), tmp_path / f"run{len(out)}", device="cpu", init_weights=base)
        out[len(out)] = tr.objective.rollouts(tr.loader.data, [0, 1, 2, 3])["advantages"]
    real, shuffled, again = out[0], out[1], out[2]
    assert torch.equal(torch.sort(real).values, torch.sort(shuffled).values) and torch.equal(shuffled, again)
    assert not torch.equal(real, shuffled)
