"""CUDA-only checks (`pytest -m gpu`): document-masked attention backends agree, the grouped-GEMM MoE path
equals the bmm path, and our bf16/fp32 modules match transformers' on the GPU."""

from __future__ import annotations

import pytest
import torch

from minigpt_assets.models import build_model, make_config
from minigpt_assets.models import layers

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CFG = {"vocab_size": 512, "hidden_size": 256, "num_layers": 2, "num_heads": 8, "num_kv_heads": 2}


def _packed(b: int, t: int, n_docs: int):
    g = torch.Generator().manual_seed(0)
    cuts = torch.sort(torch.randperm(t - 1, generator=g)[: n_docs - 1] + 1).values
    docs = torch.zeros(t, dtype=torch.long)
    for c in cuts:
        docs[c:] += 1
    pos = torch.arange(t) - torch.searchsorted(docs, docs)
    return docs.expand(b, -1).cuda(), pos.expand(b, -1).cuda()


@pytest.mark.parametrize("backend", ["sdpa", "flash", "eager"])
def test_doc_mask_backends_agree_with_block_diagonal_mask(backend):
    """On CUDA `sdpa` takes doc masks through flex attention; eager and flash-attn varlen must agree."""
    if backend == "flash" and not layers.flash_attn_available():
        pytest.skip("flash_attn is not installed")
    torch.manual_seed(0)
    ref = build_model(make_config({**CFG, "family": "llama", "attention": "eager"})).cuda().bfloat16().eval()
    other = build_model(make_config({**CFG, "family": "llama", "attention": backend})).cuda().bfloat16().eval()
    other.load_state_dict(ref.state_dict())
    ids = torch.randint(0, 512, (2, 1024), device="cuda")
    docs, pos = _packed(2, 1024, 9)
    with torch.no_grad():
        a = ref(ids, position_ids=pos, doc_ids=docs).float()
        b = other(ids, position_ids=pos, doc_ids=docs).float()
    assert (a - b).abs().max() / a.abs().max() < 2e-2


@pytest.mark.parametrize("autocast", [False, True])
def test_grouped_mm_moe_equals_bmm_path(monkeypatch, autocast):
    """bf16 weights, or fp32 weights under bf16 autocast (how the trainer runs: fp32 activations, the experts'
    grouped matmuls in bf16): the grouped path and the bmm path agree, gradients included."""
    assert layers._grouped_mm_works("cuda", torch.bfloat16), "torch._grouped_mm unavailable on this GPU"
    cfg = make_config({**CFG, "family": "moe", "moe": {"n_routed": 8, "top_k": 2, "n_shared": 1,
                                                         "intermediate_size": 128}})
    torch.manual_seed(0)
    model = build_model(cfg).cuda().train()
    if not autocast:
        model = model.bfloat16()
    with torch.autocast("cuda", torch.bfloat16, enabled=autocast):
        assert layers._grouped_mm_ok(torch.zeros(1, device="cuda", dtype=next(model.parameters()).dtype))
    ids = torch.randint(0, 512, (4, 256), device="cuda")
    results = []
    for grouped in (True, False):
        monkeypatch.setattr(layers, "_grouped_mm_ok", lambda x, g=grouped: g)
        model.zero_grad()
        with torch.autocast("cuda", torch.bfloat16, enabled=autocast):
            out = model(ids)
        out.float().logsumexp(-1).mean().backward()
        results.append((out.float(), {k: p.grad.float().clone() for k, p in model.named_parameters()
                                      if p.grad is not None}))
    (a, ga), (b, gb) = results
    assert (a - b).abs().max() / a.abs().max() < 2e-2
    for k in ga:
        assert (ga[k] - gb[k]).abs().max() <= 3e-2 * max(ga[k].abs().max().item(), 1e-6), k


@pytest.mark.parametrize("family", ["llama", "moe"])
def test_matches_transformers_on_gpu(family, tmp_path):
    transformers = pytest.importorskip("transformers")
    from minigpt_assets.models.interop import export_hf

    extra = {"moe": {"n_routed": 4, "top_k": 2}} if family == "moe" else {}
    cfg = make_config({**CFG, "family": family, "init_std": 0.1, **extra})
    torch.manual_seed(0)
    ours = build_model(cfg).eval()
    export_hf(ours, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).cuda().eval()
    ours = ours.cuda()
    ids = torch.randint(0, 512, (2, 64), device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, atol=1e-3, rtol=1e-3)
