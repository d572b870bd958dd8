"""The speed paths of training give the plain paths' results: the chunked linear + cross-entropy, the deferred host
sync of a GPU step, the prefetching loader; the `auto` switches (fused loss, per-block compile) stay off on CPU,
and fp8 where the device has none stops with one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minigpt_assets.data.loader import ArrayTokens
from minigpt_assets.models import make_config
from minigpt_assets.models.cross_entropy import chunk_tokens, linear_cross_entropy
from minigpt_assets.training.trainer import Trainer
from minigpt_assets_tests.training.test_trainer import EOS, MODEL, counting_corpus, stage


def _plain(hidden, weight, labels):
    return F.cross_entropy((hidden @ weight.t()).float().flatten(0, -2), labels.flatten(), ignore_index=-100,
                           reduction="sum")


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_linear_cross_entropy_equals_the_plain_loss_and_gradients(chunk):
    torch.manual_seed(0)
    h = torch.randn(3, 11, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 50, (3, 11))
    labels[0, :4] = -100  # an SFT prompt: not trained
    labels[2, -1] = -100  # padding
    ref = _plain(h, w, labels)
    gh, gw = torch.autograd.grad(ref * 0.7, [h, w])
    out = linear_cross_entropy(h, w, labels, chunk=chunk)
    fh, fw = torch.autograd.grad(out * 0.7, [h, w])  # the upstream gradient scales the saved ones
    assert out.dtype == torch.float32
    assert torch.allclose(out, ref, rtol=1e-5)
    assert torch.allclose(fh, gh, atol=1e-5) and torch.allclose(fw, gw, atol=1e-5)
    assert fh[0, :4].abs().max() == 0  # no gradient from untrained positions


def test_linear_cross_entropy_fp32_and_every_label_ignored():
    torch.manual_seed(1)
    h = torch.randn(40, 8, requires_grad=True)
    w = torch.randn(30, 8, requires_grad=True)
    labels = torch.randint(0, 30, (40,))
    out = linear_cross_entropy(h, w, labels, chunk=16)
    ref = _plain(h, w, labels)
    assert torch.allclose(out, ref, rtol=1e-5)
    (gh, gw), (rh, rw) = torch.autograd.grad(out, [h, w]), torch.autograd.grad(ref, [h, w])
    assert torch.allclose(gh, rh, atol=1e-5) and torch.allclose(gw, rw, atol=1e-5)
    none = linear_cross_entropy(h, w, torch.full((40,), -100), chunk=16)
    assert float(none.detach()) == 0.0 and torch.autograd.grad(none, [h])[0].abs().max() == 0


def test_the_compiled_chunk_is_one_graph_with_the_plain_results():
    from minigpt_assets.models.cross_entropy import _chunk_math

    torch.manual_seed(2)
    h, w = torch.randn(24, 8), torch.randn(30, 8)
    y = torch.randint(0, 30, (24,))
    y[:5] = -100
    traced = torch.compile(_chunk_math, backend="aot_eager", dynamic=False, fullgraph=True)
    for want in (True, False):
        (l1, g1), (l2, g2) = traced(h, w, y, want), _chunk_math(h, w, y, want)
        assert torch.allclose(l1, l2) and (g1 is None) == (g2 is None) == (not want)
    assert torch.allclose(traced(h, w, y, True)[1], _chunk_math(h, w, y, True)[1]) and g2 is None


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_compiled_blocks_fuse_projections_with_the_same_results(family):
    """Inside torch.compile q/k/v and gate/up run as one matmul each (aot_eager: the traced graph, no kernels)."""
    from minigpt_assets.models import build_model, layers

    torch.manual_seed(3)
    model = build_model(make_config({**MODEL, "family": family}))
    ids = torch.randint(1, 64, (2, 16))
    fused = []
    real = layers._fused_linear
    layers._fused_linear = lambda x, *ms: fused.append(len(ms)) or real(x, *ms)
    try:
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
        out = compiled(ids, labels=ids)
        grads = torch.autograd.grad(out, list(model.parameters()))
    finally:
        layers._fused_linear = real
    assert sorted(set(fused)) == [2, 3]  # gate/up and q/k/v (qwen2: with their biases)
    ref = model(ids, labels=ids)
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    assert torch.allclose(out, ref, rtol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads, ref_grads))


def test_chunk_size_bounds_the_fp32_logits():
    assert chunk_tokens(128_256) == 523 and chunk_tokens(32_000) == 2097 and chunk_tokens(10**9) == 64
    from minigpt_assets.models.cross_entropy import _default_chunk

    assert _default_chunk(128_256, gpu=True) == 4185 and _default_chunk(128_256, gpu=False) == 523


def test_fused_training_follows_the_plain_loss(tmp_path):
    """Same seed, data and optimizer: a few steps with the fused loss match the plain run within fp32 noise."""
    data = ArrayTokens(counting_corpus(), 32, EOS)
    losses = {}
    for fused in (False, True):
        tr = Trainer(make_config(MODEL), stage(max_steps=5, checkpoint_every=5, fused_loss=fused), data,
                     tmp_path / str(fused), device="cpu")
        assert tr.objective.fused is fused
        losses[fused] = [r["loss"] for r in tr.fit().metrics]
    assert np.allclose(losses[True], losses[False], rtol=1e-5, atol=1e-6), losses


def test_auto_switches_are_off_on_cpu(tmp_path):
    tr = Trainer(make_config(MODEL), stage(), ArrayTokens(counting_corpus(), 32, EOS), tmp_path, device="cpu")
    assert tr.stage.compile == "auto" and tr.compiled is False
    assert tr.stage.fused_loss == "auto" and tr.objective.fused is False


def test_fp8_on_a_device_without_it_is_one_line(tmp_path):
    from minigpt_assets.training.precision import float8_eligible
    from minigpt_assets.training.trainer import TrainingError

    with pytest.raises(TrainingError, match=r"^precision fp8 needs an NVIDIA GPU of compute capability 8\.9 or "
                                            r"newer \(Ada, Hopper\); this run is on cpu$"):
        Trainer(make_config(MODEL), stage(precision="fp8"), ArrayTokens(counting_corpus(), 32, EOS), tmp_path,
                device="cpu")
    assert float8_eligible(torch.nn.Linear(32, 64), "model.layers.0.mlp.up_proj")
    assert not float8_eligible(torch.nn.Linear(32, 64), "lm_head")
    assert not float8_eligible(torch.nn.Linear(32, 24), "model.layers.0.self_attn.k_proj")


def test_deferred_steps_read_the_loss_only_at_log_steps_and_still_skip_bad_ones(tmp_path, monkeypatch):
    """The GPU path (forced here on CPU, where the fused AdamW also takes `found_inf`): a non-finite step is
    skipped on the device, counted when its log step reads it, and too many in a row still stop the run."""
    from minigpt_assets.training.trainer import TrainingError

    data = ArrayTokens(counting_corpus(), 32, EOS)
    plain = Trainer(make_config(MODEL), stage(max_steps=8, checkpoint_every=8), data, tmp_path / "plain",
                    device="cpu", deferred=False)
    ref = [r["loss"] for r in plain.fit().metrics]
    tr = Trainer(make_config(MODEL), stage(max_steps=8, checkpoint_every=8, log_every=4), data, tmp_path / "lazy",
                 device="cpu", deferred=True)
    reads = []
    real_settle = tr._settle
    monkeypatch.setattr(tr, "_settle", lambda: (reads.append(tr.step), real_settle())[1])
    res = tr.fit()
    assert reads == [4, 8]  # one host read per log step
    assert np.allclose([r["loss"] for r in res.metrics], ref, rtol=1e-5)  # fused AdamW: the same run
    assert all(isinstance(r["loss"], float) and r["tokens_per_s"] > 0 for r in res.metrics)

    bad = Trainer(make_config(MODEL), stage(max_steps=20, checkpoint_every=4, log_every=4, max_bad_steps=3), data,
                  tmp_path / "bad", device="cpu", deferred=True)
    real = bad.objective.loss

    def blown(b, lo, hi):
        loss, stats = real(b, lo, hi)
        return loss * (float("nan") if bad.step >= 9 else 1), stats

    monkeypatch.setattr(bad.objective, "loss", blown)
    after_9 = {}
    bad.hook = lambda where, step: after_9.update(
        {k: v.clone() for k, v in bad.model.state_dict().items()}) if (where, step) == ("step", 9) else None
    with pytest.raises(TrainingError, match=r"^3 non-finite losses in a row at step 12; .*step-00000008"):
        bad.fit()
    # steps 10-12 were skipped on the device: the weights are those after step 9
    assert bad.bad_steps == 3 and all(torch.equal(after_9[k], v) for k, v in bad.model.state_dict().items())


def test_prefetched_batches_are_the_loader_batches_and_its_state_follows():
    from minigpt_assets.data.loader import PackedLoader, Prefetcher

    data = ArrayTokens(counting_corpus(), 32, EOS)
    ref = PackedLoader(data, 8, seed=3)
    it = iter(ref)
    expected, states = [], []
    for _ in range(ref.steps_per_epoch + 3):  # across an epoch boundary
        expected.append(next(it))
        states.append(ref.state_dict())
    loader = PackedLoader(data, 8, seed=3)
    pre = Prefetcher(loader, depth=3)
    for want, state in zip(expected, states):
        got = next(pre)
        assert all(np.array_equal(got[k], want[k]) for k in want)
        assert loader.state_dict() == state  # a checkpoint now resumes after this batch, not after the prefetched
    pre.close()


def test_bench_train_runs_both_sides_on_the_same_weights_and_batches(capsys):
    """`minigpt bench train` on the CPU shape: transformers' model and our trainer start from the same weights on
    the same batches (equal first losses), and the table names the ratio to the best transformers variant."""
    from minigpt_assets.training.bench import flops_per_token, run_train_bench

    rows = run_train_bench(["tiny"], {}, "cpu", 2, 1, None, None, ["hf", "ours+fast"])
    assert [r.get("error") for r in rows] == [None, None], rows
    hf, ours = rows
    assert hf["first_loss"] == pytest.approx(ours["first_loss"], rel=1e-4)
    assert ours["tokens_per_s"] > 0 and 0 <= ours["data_wait"] < 1 and ours["mfu"] is None
    out = capsys.readouterr().out
    assert "vs best hf" in out and "ours+fast" in out and "1.00x" in out
    cfg = make_config({**MODEL, "tie_embeddings": False})
    # the head, q/o (32 -> 4 heads of 8) and k/v (2 heads of 8) of 2 layers, their MLPs, 5 norms; no embedding
    n = 64 * 32 + 2 * (2 * 32 * 32 + 2 * 32 * 16) + 2 * 3 * 32 * cfg.ffn_size + 5 * 32
    assert flops_per_token(cfg, 10) == 6 * n + 12 * 2 * 32 * 10


def test_muon_trains_the_hidden_matrices_and_adamw_the_rest(tmp_path):
    from minigpt_assets.training.optimizers import Chained

    data = ArrayTokens(counting_corpus(), 32, EOS)
    tr = Trainer(make_config(MODEL), stage(max_steps=30, checkpoint_every=30, optim={"name": "muon", "lr": 1e-2,
                                                                                      "warmup_steps": 2}),
                 data, tmp_path, device="cpu")
    muon, adamw = tr.optimizer.optimizers
    assert isinstance(tr.optimizer, Chained) and isinstance(muon, torch.optim.Muon)
    names = {id(p): n for n, p in tr.model.named_parameters()}
    on_muon = sorted(names[id(p)] for g in muon.param_groups for p in g["params"])
    assert on_muon and all(".layers." in n and n.endswith("proj.weight") for n in on_muon)
    assert len(on_muon) == 2 * 7  # q, k, v, o, gate, up, down per block
    assert not tr.deferred  # muon takes no found_inf: the loss is read every step
    losses = [r["loss"] for r in tr.fit().metrics]
    assert losses[-1] < losses[0] - 2.0


def test_muon_resume_after_sigkill_is_bit_identical(tmp_path):
    """The two optimizers' states go through the distributed-checkpoint state dict as one optimizer's."""
    from minigpt_assets_tests.training.test_trainer import _result, _run, _spec

    muon = {"name": "muon", "lr": 1e-2, "warmup_steps": 2}
    ref = _result(_run(_spec(tmp_path, tmp_path / "ref", optim=muon)))
    spec = _spec(tmp_path, tmp_path / "killed", optim=muon)
    assert _run(spec, "step:7").returncode == -9
    res = _result(_run(spec))
    assert res["resumed_from"] == 4 and res["losses"] == ref["losses"][4:]


def test_bench_train_to_loss_times_each_side_to_the_target(capsys):
    from minigpt_assets.training.bench import run_train_bench

    rows = run_train_bench(["tiny"], {}, "cpu", 6, 0, None, None, ["hf", "ours+fast+muon"], to_loss=9.0,
                           eval_every=2)
    assert [r.get("error") for r in rows] == [None, None], rows
    assert all(r["reached"] and r["steps"] == 2 and r["seconds"] > 0 for r in rows)  # ln(512) = 6.2 < 9
    assert [r["lr"] for r in rows] == [3e-4, 3e-4]
    unreachable = run_train_bench(["tiny"], {}, "cpu", 4, 0, None, None, ["ours+fast"], to_loss=0.5, eval_every=2)
    assert not unreachable[0]["reached"] and unreachable[0]["steps"] == 4 and len(unreachable[0]["curve"]) == 2
    out = capsys.readouterr().out
    assert "sooner than best hf" in out
    # auto: the first variant trains every step, and its best validation loss is the others' target
    base, other = run_train_bench(["tiny"], {}, "cpu", 4, 0, None, None, ["hf", "ours+fast"], to_loss="auto",
                                  eval_every=2)
    best = min(c[2] for c in base["curve"])
    assert len(base["curve"]) == 2 and base["reached"] and base["to_loss"] == best == base["val_loss"]
    assert base["steps"] == next(c[0] for c in base["curve"] if c[2] == best) and base["seconds"] > 0
    assert other["to_loss"] == best and (other["reached"] == (other["val_loss"] <= best))
    # the same weights, batches, AdamW and cosine LR schedule on both sides: the same validation curve
    np.testing.assert_allclose([c[2] for c in other["curve"]], [c[2] for c in base["curve"]], rtol=1e-6)


def test_bench_train_nproc_runs_each_strategy_as_ranks_under_torchrun(capsys):
    """`--nproc 2`: one process, then 2 gloo ranks per strategy with the same batch per rank; the strategies train
    the same global batch from the same weights, so their losses agree; the table gives tokens/s per GPU."""
    from minigpt_assets.training.bench import run_train_bench

    rows = run_train_bench(["tiny"], {}, "cpu", 2, 1, 4, None, ["ours+fast"], nproc=2, strategies=["ddp", "fsdp"])
    assert [r.get("error") for r in rows] == [None] * 3, rows
    assert [(r["gpus"], r["strategy"]) for r in rows] == [(1, "none"), (2, "ddp"), (2, "fsdp")]
    np.testing.assert_allclose([rows[1]["first_loss"], rows[1]["last_loss"]],
                               [rows[2]["first_loss"], rows[2]["last_loss"]], rtol=1e-4)
    assert "tokens/s/GPU" in capsys.readouterr().out


def test_bench_train_one_rank_under_a_strategy_trains_what_one_process_trains(capsys):
    """`--nproc 1 --strategies fsdp`: one rank under torchrun with FSDP2 wrapping, next to the plain process on the
    same batches: the same losses, so the row measures what the wrapping costs."""
    from minigpt_assets.training.bench import run_train_bench

    rows = run_train_bench(["tiny"], {}, "cpu", 2, 1, 4, None, ["ours+fast"], nproc=1, strategies=["fsdp"])
    assert [r.get("error") for r in rows] == [None] * 2, rows
    assert [(r["gpus"], r["strategy"]) for r in rows] == [(1, "none"), (1, "fsdp")]
    np.testing.assert_allclose([rows[1]["first_loss"], rows[1]["last_loss"]],
                               [rows[0]["first_loss"], rows[0]["last_loss"]], rtol=1e-5)
    assert "ours+fast x1 fsdp" in capsys.readouterr().out
    from minigpt_assets.training.bench import scaling_table

    cols, table = scaling_table(rows)  # the ratio is to the plain process, not to another one-GPU row
    ratio = [row[cols.index("vs one process")] for row in table]
    assert ratio[0] == "1.00x" and ratio[1] == f"{rows[1]['tokens_per_s'] / rows[0]['tokens_per_s']:.2f}x"


def test_kernel_kinds_of_a_gpu_profile():
    from minigpt_assets.training.bench_profile import kernel_kind

    assert kernel_kind("nvjet_sm90_tst_128x256_64x4_2x1_v_bz_coopA_NTN") == "matmul"
    assert kernel_kind("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26_64") == "attention"
    assert kernel_kind("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, cutlass::bfloat16_t>>") \
        == "attention"
    assert kernel_kind("fmha_cutlassF_bf16_aligned_64x64_rf_sm80") == "attention"
    assert kernel_kind("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::") \
        == "multi-tensor (optimizer, clipping)"
    assert kernel_kind("triton_poi_fused_cat_mul_silu_silu_backward_view_2") == "compiled (triton)"
    assert kernel_kind("void at::native::vectorized_elementwise_kernel<4, ...>") == "other"


def test_bench_train_profile_lists_the_operators_with_the_most_self_time(capsys):
    from minigpt_assets.training.bench import run_train_bench

    rows = run_train_bench(["tiny"], {}, "cpu", 2, 1, None, None, ["ours+fast"], profile=2)
    prof = rows[0]["profile"]
    top = prof["top"]
    assert 0 < len(top) <= 15 and any(p["op"] == "aten::mm" for p in top)
    shares = [p["share"] for p in top]
    assert shares == sorted(shares, reverse=True) and sum(shares) <= 1 + 1e-9
    assert prof["kinds"]["matmul"] > 0 and prof["wall_ms_per_step"] > 0
    assert abs(sum(prof["kinds"].values()) - prof["busy_ms_per_step"]) < 1e-6
    assert "profile: tiny ours+fast: " in capsys.readouterr().out


def test_a_rank_that_fails_ends_the_torchrun_job_with_its_error():
    """Under torchrun a failing rank reports its error and exits 1, so torchrun stops rank 0 instead of leaving
    it waiting in a collective; the bench row carries the failing rank's error."""
    import time

    from minigpt_assets.isolated import spawn

    t0 = time.perf_counter()
    row = spawn("minigpt_assets_tests.training.failing_rank", {}, {"job": "failing"}, timeout=300, nproc=2)
    assert row == {"job": "failing", "error": "RuntimeError: rank 1 cannot start"}
    assert time.perf_counter() - t0 < 120


def test_adamw8bit_keeps_quantized_states_and_learns(tmp_path):
    """torchao's AdamW8bit: the moments of the large matrices are 8-bit, and the model still learns to count."""
    pytest.importorskip("torchao", reason="torchao is not installed (pip install -e '.[dev]')")
    data = ArrayTokens(counting_corpus(), 32, EOS)
    tr = Trainer(make_config({**MODEL, "hidden_size": 64, "num_heads": 4, "num_kv_heads": 2}),
                 stage(max_steps=25, checkpoint_every=25, optim={"name": "adamw8bit", "lr": 1e-2, "warmup_steps": 2}),
                 data, tmp_path, device="cpu")
    assert not tr.deferred
    res = tr.fit()
    losses = [r["loss"] for r in res.metrics]
    assert losses[-1] < losses[0] - 2.0
    w = tr.model.model.layers[0].mlp.up_proj.weight  # 64 x 128 = 8192 values: quantized in blocks of 256
    assert type(tr.optimizer.state[w]["exp_avg"]).__name__ == "OptimState8bit"


@pytest.mark.slow
def test_adamw8bit_resume_after_sigkill_is_bit_identical(tmp_path):
    """The quantized states go through the checkpoint and come back as they were."""
    pytest.importorskip("torchao", reason="torchao is not installed (pip install -e '.[dev]')")
    from minigpt_assets_tests.training.test_trainer import _result, _run, _spec

    opt = {"name": "adamw8bit", "lr": 1e-2, "warmup_steps": 2}
    wide = {**MODEL, "hidden_size": 64}  # matrices of 8192 values: their moments are quantized
    ref = _result(_run(_spec(tmp_path, tmp_path / "ref", model=wide, optim=opt)))
    spec = _spec(tmp_path, tmp_path / "killed", model=wide, optim=opt)
    assert _run(spec, "step:7").returncode == -9
    res = _result(_run(spec))
    assert res["resumed_from"] == 4 and res["losses"] == ref["losses"][4:]


def test_micro_batch_auto_halves_on_out_of_memory_and_keeps_the_run_exact(tmp_path, monkeypatch):
    """A forward of more than 2 rows "runs out of memory" (simulated): auto goes 8 -> 4 -> 2 on the first step and
    keeps 2; the losses are those of a run configured with micro-batches of 2 from the start."""
    from minigpt_assets.training.trainer import TrainingError

    data = ArrayTokens(counting_corpus(), 32, EOS)
    fixed = Trainer(make_config(MODEL), stage(max_steps=4, checkpoint_every=4, micro_batch_size=2), data,
                    tmp_path / "fixed", device="cpu")
    ref = [r["loss"] for r in fixed.fit().metrics]

    import weakref

    held = []  # what a failed attempt allocated: it must be gone before the retry runs

    def tight(trainer):
        real = trainer.objective.loss

        def loss(batch, lo, hi):
            assert all(r() is None for r in held), "the failed attempt's tensors are still alive"
            if hi - lo > 2:
                activations = torch.empty(1000)
                held.append(weakref.ref(activations))
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return real(batch, lo, hi)

        monkeypatch.setattr(trainer.objective, "loss", loss)

    auto = Trainer(make_config(MODEL), stage(max_steps=4, checkpoint_every=4, micro_batch_size="auto"), data,
                   tmp_path / "auto", device="cpu")
    assert auto.micro == 8 and auto.autotune
    tight(auto)
    res = auto.fit()
    assert auto.micro == 2 and not auto.autotune
    assert np.allclose([r["loss"] for r in res.metrics], ref, rtol=1e-6)

    set_ = Trainer(make_config(MODEL), stage(max_steps=4, checkpoint_every=4, micro_batch_size=4), data,
                   tmp_path / "set", device="cpu")
    tight(set_)
    with pytest.raises(TrainingError, match=r"^out of memory at micro_batch_size 4 \(batch 8 per rank\); lower"):
        set_.fit()


def test_prefetcher_hands_over_a_loader_error_and_keeps_raising_it():
    from minigpt_assets.data.loader import PackedLoader, Prefetcher

    class Broken(PackedLoader):
        def batch(self, epoch, step):
            if step == 1:
                raise ValueError("shard 3 is corrupt")
            return super().batch(epoch, step)

    pre = Prefetcher(Broken(ArrayTokens(counting_corpus(), 32, EOS), 8), depth=1)
    next(pre)
    for _ in range(2):  # the same error again, not a hang
        with pytest.raises(ValueError, match="shard 3 is corrupt"):
            next(pre)
    pre.close()


def test_auto_target_skips_a_diverged_baseline_loss():
    from minigpt_assets.training.bench import _baseline_target

    row = {"batch": 2, "seq": 8, "curve": [(20, 1.0, float("nan")), (40, 2.0, 5.0), (60, 3.0, 5.5)]}
    assert _baseline_target(row) == 5.0 and (row["steps"], row["seconds"], row["reached"]) == (40, 2.0, True)
    with pytest.raises(ValueError, match="never finite"):
        _baseline_target({"batch": 2, "seq": 8, "curve": [(20, 1.0, float("inf"))]})


def test_bench_stage_options_merge_into_the_variants_optimizer():
    """`--stage-options '{"optim": {"lr": ...}}'` changes that field of our variants' optimizer and keeps the rest
    (a +muon variant stays Muon); transformers' side never takes them; a time to loss decays the LR."""
    from minigpt_assets.training.bench import SHAPES, TrainJob, _stage

    def job(impl, **kw):
        return TrainJob("tiny", SHAPES["tiny"][0], impl, "cpu", 4, 64, 10, 2, extra={"optim": {"lr": 0.02}}, **kw)

    muon = _stage(job("ours+fast+muon")).optim
    assert (muon.name, muon.lr, muon.schedule) == ("muon", 0.02, "constant")
    named = TrainJob("tiny", SHAPES["tiny"][0], "ours+fast+muon", "cpu", 4, 64, 10, 2,
                     extra={"optim": {"name": "adamw8bit"}})
    assert _stage(named).optim.name == "muon"
    hf = _stage(job("hf")).optim
    assert (hf.name, hf.lr) == ("adamw", 3e-4)
    timed = _stage(job("ours+fast", to_loss=3.0))
    assert (timed.optim.schedule, timed.max_steps) == ("cosine", 10)
    # --lr: every variant's peak LR, transformers' too; the options' optim lr still wins on ours
    assert _stage(job("hf", lr=2e-3)).optim.lr == 2e-3 and _stage(job("ours+fast", lr=2e-3)).optim.lr == 0.02
    plain = TrainJob("tiny", SHAPES["tiny"][0], "ours+fast", "cpu", 4, 64, 10, 2, lr=2e-3)
    assert _stage(plain).optim.lr == 2e-3
