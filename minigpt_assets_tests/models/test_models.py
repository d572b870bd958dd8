"""Registry, named recipes (parameter counts on the meta device), masking, caching, checkpointing, MoE routing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from minigpt_assets.models import build_model, make_config
from minigpt_assets.models.registry import Family, _FAMILIES, families, register
from minigpt_assets.models.transformer import generate, sample_next
from minigpt_assets.recipes import Catalog

RECIPES = Path(__file__).resolve().parents[2] / "recipes"

# name -> (published parameter count, source of the number)
PUBLISHED = {
    "llama-3.2-1b": 1_235_814_400,   # Llama-3.2-1B model card: 1.23B
    "llama-3.2-3b": 3_212_749_824,   # 3.21B
    "llama-3.1-8b": 8_030_261_248,   # 8.03B
    "llama-2-7b": 6_738_415_616,     # 6.74B
    "qwen2-0.5b": 494_032_768,       # Qwen2 report: 0.49B
    "qwen2-1.5b": 1_543_714_304,     # 1.54B
    "qwen2-7b": 7_615_616_512,       # 7.62B
    "minimind2-small": 26_000_000,   # MiniMind README: 26M
    "minimind2": 104_000_000,        # 104M
    "minimind2-moe": 145_000_000,    # 145M
    "minimind-3": 64_000_000,        # 64M
    "minimind-3-moe": 198_000_000,   # 198M
    "proxy-10m": 10_000_000, "proxy-25m": 25_000_000, "proxy-50m": 50_000_000,
    "proxy-125m": 125_000_000, "proxy-350m": 350_000_000,
}
EXACT = {k for k in PUBLISHED if k.startswith(("llama", "qwen"))}


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load_or_raise(RECIPES, check_files=False)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_named_recipe_parameter_counts(catalog, name):
    cfg = catalog.models[name]
    model = build_model(cfg, device="meta")
    n = sum(p.numel() for p in model.parameters())
    assert n == cfg.num_params()  # the formula and the module agree
    want = PUBLISHED[name]
    if name in EXACT:
        assert n == want, f"{name}: {n:,} != published {want:,}"
    else:
        tol = 0.02 if name.startswith("minimind") else 0.1
        assert abs(n - want) / want < tol, f"{name}: {n / 1e6:.1f}M vs ~{want / 1e6:.0f}M"


def test_moe_active_parameters(catalog):
    cfg = catalog.models["minimind-3-moe"]
    assert abs(cfg.num_params(active=True) - 64e6) / 64e6 < 0.02
    proxy = catalog.models["moe-proxy-80m"]
    assert proxy.num_params(active=True) < proxy.num_params() / 3


def test_register_new_family_is_one_module():
    fam = register(Family(name="toy_family", description="test", defaults={"qk_norm": True}))
    try:
        cfg = make_config({"family": "toy_family", "vocab_size": 11, "hidden_size": 16, "num_layers": 1,
                           "num_heads": 2})
        assert cfg.qk_norm and "toy_family" in families()
        assert build_model(cfg)(torch.zeros(1, 3, dtype=torch.long)).shape == (1, 3, 11)
    finally:
        _FAMILIES.pop(fam.name)


TINY = {"vocab_size": 53, "hidden_size": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2}


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
@pytest.mark.parametrize("family", ["llama", "qwen3", "moe"])
def test_document_mask_equals_separate_documents(family, backend):
    """A packed window with a doc mask and restarted positions computes each document as if alone."""
    extra = {"moe": {"n_routed": 4, "top_k": 2}} if family == "moe" else {}
    model = build_model(make_config({**TINY, "family": family, "attention": backend, **extra})).eval()
    ids = torch.randint(0, 53, (2, 24))
    lens = [5, 11, 8]
    docs = torch.repeat_interleave(torch.arange(3), torch.tensor(lens)).expand(2, -1)
    pos = torch.cat([torch.arange(n) for n in lens]).expand(2, -1)
    with torch.no_grad():
        packed = model(ids, position_ids=pos, doc_ids=docs)
        start = 0
        for n in lens:
            alone = model(ids[:, start:start + n])
            torch.testing.assert_close(packed[:, start:start + n], alone, atol=2e-5, rtol=1e-4)
            start += n


def test_backends_agree():
    cfg = {**TINY, "family": "llama"}
    a = build_model(make_config({**cfg, "attention": "sdpa"})).eval()
    b = build_model(make_config({**cfg, "attention": "eager"})).eval()
    b.load_state_dict(a.state_dict())
    ids = torch.randint(0, 53, (2, 17))
    with torch.no_grad():
        torch.testing.assert_close(a(ids), b(ids), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["qwen2", "moe"])
def test_activation_checkpointing_same_gradients(family):
    from minigpt_assets.models.layers import _grouped_mm_works

    _grouped_mm_works.cache_clear()  # the first call of the process must work under checkpointing too
    extra = {"moe": {"n_routed": 4, "top_k": 2}} if family == "moe" else {}
    base = build_model(make_config({**TINY, "family": family, **extra}))
    ck = build_model(make_config({**TINY, "family": family, "activation_checkpointing": True, **extra}))
    ck.load_state_dict(base.state_dict())
    ids = torch.randint(0, 53, (2, 9))
    grads = []
    for m in (ck, base):
        m.train()
        m(ids).logsumexp(-1).mean().backward()
        grads.append({k: p.grad.clone() for k, p in m.named_parameters()})
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], atol=1e-6, rtol=1e-5)
    assert len(grads[0]) == len(grads[1]) > 0


def test_kv_cache_decoding_equals_full_forward():
    model = build_model(make_config({**TINY, "family": "minimind", "moe": {"n_routed": 4, "top_k": 1}})).eval()
    ids = torch.randint(0, 53, (3, 6))
    out = generate(model, ids, 10)
    with torch.no_grad():
        full = model(out[:, :-1]).argmax(-1)[:, 5:]
    assert torch.equal(full, out[:, 6:])


def test_sampling_top_k_top_p():
    logits = torch.tensor([[5.0, 4.0, 1.0, -2.0]]).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    assert set(sample_next(logits, 1.0, top_k=2, generator=g).tolist()) == {0, 1}
    assert set(sample_next(logits, 1.0, top_p=0.5, generator=g).tolist()) == {0}
    assert len(set(sample_next(logits, 5.0, generator=g).tolist())) == 4
    assert sample_next(logits[:1], 0.0).item() == 0


def test_generate_stops_at_eos():
    model = build_model(make_config({**TINY, "family": "llama"})).eval()
    with torch.no_grad():
        model.model.norm.weight.fill_(0.0)  # all logits tie at 0, so greedy picks id 0, the eos here
    out = generate(model, torch.ones(2, 3, dtype=torch.long), 20, eos_token_id=0)
    assert out.shape == (2, 4) and (out[:, -1] == 0).all()


def test_moe_routing_and_bias_balancing():
    cfg = make_config({**TINY, "family": "moe", "moe": {"n_routed": 4, "top_k": 1, "n_shared": 1,
                                                          "bias_update_rate": 0.5, "first_dense_layers": 0}})
    model = build_model(cfg).train()
    layer = model.moe_layers()[0]
    with torch.no_grad():
        layer.gate.weight.zero_()
        layer.gate.weight[0] = 1.0  # expert 0 scores highest for inputs with a positive sum
    x = torch.rand(4, 8, 32) + 0.1
    layer(x)
    counts = layer.gate.tokens_per_expert.clone()
    assert counts[0] == 32 and counts[1:].sum() == 0
    stats = model.update_router_bias()
    assert stats["moe_max_load_ratio"] == pytest.approx(4.0)
    assert layer.gate.expert_bias[0] < 0 < layer.gate.expert_bias[1]
    assert layer.gate.tokens_per_expert.sum() == 0
    # the bias changes which experts are picked, not the weights the picked experts get
    idx, w, _ = layer.route(x.reshape(-1, 32))
    assert (idx[:, 0] != 0).all() and torch.allclose(w, torch.ones_like(w))


def test_moe_matches_a_per_expert_loop():
    """The batched dispatch computes what a plain loop over experts computes."""
    cfg = make_config({**TINY, "family": "moe", "moe": {"n_routed": 5, "top_k": 2, "n_shared": 1,
                                                          "routed_scaling_factor": 1.7}})
    layer = build_model(cfg).moe_layers()[0].eval()
    x = torch.randn(3, 7, 32)
    flat = x.reshape(-1, 32)
    idx, w, _ = layer.route(flat)
    ex = layer.experts
    ref = layer.shared_experts(flat)
    for t in range(flat.shape[0]):
        for j in range(2):
            e = int(idx[t, j])
            h = torch.nn.functional.silu(flat[t] @ ex.gate_proj[e].T) * (flat[t] @ ex.up_proj[e].T)
            ref[t] += w[t, j] * (h @ ex.down_proj[e].T)
    with torch.no_grad():
        torch.testing.assert_close(layer(x).reshape(-1, 32), ref, atol=1e-5, rtol=1e-4)


def test_aux_loss_optional():
    cfg = make_config({**TINY, "family": "moe", "moe": {"n_routed": 4, "top_k": 2, "aux_loss_coef": 0.01}})
    model = build_model(cfg).train()
    model(torch.randint(0, 53, (2, 8)))
    aux = model.aux_loss()
    assert aux is not None and aux.requires_grad and aux.item() > 0
    off = build_model(make_config({**TINY, "family": "moe", "moe": {"n_routed": 4}})).train()
    off(torch.randint(0, 53, (2, 8)))
    assert off.aux_loss() is None


def test_init_is_family_correct():
    cfg = make_config({**TINY, "hidden_size": 256, "num_layers": 8, "family": "llama", "init": "depth_scaled"})
    model = build_model(cfg)
    std = model.model.layers[0].self_attn.q_proj.weight.std().item()
    out = model.model.layers[0].self_attn.o_proj.weight.std().item()
    assert std == pytest.approx(0.02, rel=0.05) and out == pytest.approx(0.02 / 4, rel=0.05)
    assert torch.all(model.model.norm.weight == 1)
    q2 = build_model(make_config({**TINY, "family": "qwen2"}))
    assert torch.all(q2.model.layers[0].self_attn.q_proj.bias == 0)


def test_bad_model_recipe_is_one_line(tmp_path):
    d = tmp_path / "models"
    d.mkdir()
    (d / "m.yaml").write_text("family: qwen2\nvocab_size: 10\nhidden_size: 64\nnum_layers: 2\nnum_heads: 4\n"
                              "qkv_bias: false\n")
    (d / "n.yaml").write_text("family: llama\nvocab_size: 10\nhidden_size: 64\nnum_layers: 2\nnum_heads: 4\n"
                              "num_kv_heads: 3\n")
    (d / "o.yaml").write_text("family: llama\nvocab_size: ten\nhidden_size: 64\nnum_layers: 2\nnum_heads: 4\n")
    cat = Catalog.load(tmp_path, check_files=False)
    lines = sorted(str(p) for p in cat.problems)
    assert len(lines) == 3 and all("\n" not in s for s in lines)
    assert "m.yaml: family: family qwen2 fixes qkv_bias=True" in lines[0]
    assert "n.yaml" in lines[1] and "multiple of num_kv_heads" in lines[1]
    assert "o.yaml: vocab_size" in lines[2]


def test_bf16_keeps_float32_rope_frequencies():
    model = build_model(make_config({**TINY, "family": "llama"})).to(torch.bfloat16)
    assert model.model.rotary.inv_freq.dtype == torch.float32
    ref = build_model(make_config({**TINY, "family": "llama"})).model.rotary.inv_freq
    assert torch.equal(model.model.rotary.inv_freq, ref)


def test_moe_bmm_fallback_matches_grouped_path(monkeypatch):
    from minigpt_assets.models import layers

    cfg = make_config({**TINY, "family": "moe", "moe": {"n_routed": 5, "top_k": 2, "n_shared": 1}})
    layer = build_model(cfg).moe_layers()[0].eval()
    x = torch.randn(3, 7, 32)
    outs = []
    for grouped in (True, False):
        monkeypatch.setattr(layers, "_grouped_mm_ok", lambda t, g=grouped: g)
        with torch.no_grad():
            outs.append(layer(x))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-4)


def test_moe_grouped_path_under_autocast_runs_in_its_dtype(monkeypatch):
    """Under bf16 autocast the activations stay fp32, but the experts' grouped matmuls run in bf16, as the bmm
    path's do (on CUDA only bf16 has grouped matmuls): both paths agree, gradients included."""
    from minigpt_assets.models import layers

    if not layers._grouped_mm_works("cpu", torch.bfloat16):
        pytest.skip("this torch build has no bf16 grouped matmul on CPU")
    x = torch.randn(3, 7, 32)
    with torch.autocast("cpu", torch.bfloat16):
        assert layers._mm_dtype(x) == torch.bfloat16
    assert layers._mm_dtype(x) == torch.float32
    cfg = make_config({**TINY, "family": "moe", "moe": {"n_routed": 5, "top_k": 2, "n_shared": 1}})
    layer = build_model(cfg).moe_layers()[0]
    outs = []
    for grouped in (True, False):
        monkeypatch.setattr(layers, "_grouped_mm_ok", lambda t, g=grouped: g)
        layer.zero_grad()
        with torch.autocast("cpu", torch.bfloat16):
            out = layer(x)
        out.float().square().mean().backward()
        outs.append((out.float(), layer.experts.gate_proj.grad.clone()))
    torch.testing.assert_close(outs[0][0], outs[1][0], atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(outs[0][1], outs[1][1], atol=2e-2, rtol=5e-2)
