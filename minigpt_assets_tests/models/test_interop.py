"""Our modules against transformers' on random weights: same logits (fp32, 1e-4) and the same greedy tokens,
exporting ours to HF and importing HF into ours, for every architecture the export table names."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from minigpt_assets.models import build_model, export_hf, from_pretrained, import_hf, make_config, save_model
from minigpt_assets.models.interop import CheckpointError, hf_class, load_minimind_state_dict
from minigpt_assets.models.transformer import generate

BASE = {"vocab_size": 97, "hidden_size": 64, "num_layers": 3, "num_heads": 4, "num_kv_heads": 2, "max_seq_len": 128}
CASES = {
    "llama": ({"family": "llama", "tie_embeddings": False,
               "rope_scaling": {"factor": 8.0, "original_max_position_embeddings": 32}}, "LlamaForCausalLM"),
    "llama_tied": ({"family": "llama", "tie_embeddings": True}, "LlamaForCausalLM"),
    "qwen2": ({"family": "qwen2", "tie_embeddings": True}, "Qwen2ForCausalLM"),
    "qwen3": ({"family": "qwen3", "head_dim": 24}, "Qwen3ForCausalLM"),
    "minimind3": ({"family": "minimind"}, "Qwen3ForCausalLM"),
    "minimind2": ({"family": "minimind", "qk_norm": False}, "LlamaForCausalLM"),
    "minimind3_moe": ({"family": "minimind", "moe": {"n_routed": 4, "top_k": 1}}, "Qwen3MoeForCausalLM"),
    "moe": ({"family": "moe", "qk_norm": True,
             "moe": {"n_routed": 6, "n_shared": 2, "top_k": 2, "intermediate_size": 32,
                     "routed_scaling_factor": 2.5, "first_dense_layers": 1}}, "Glm4MoeForCausalLM"),
}


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Weights far from init (norms included) so that a wrong mapping cannot hide behind tiny logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=g))
        for name, b in model.named_buffers():
            if name.endswith(("expert_bias", "e_score_correction_bias")):
                b.copy_(0.05 * torch.randn(b.shape, generator=g))


def _hf_greedy(hf, ids, n):
    out = hf.generate(ids, max_new_tokens=n, do_sample=False, min_new_tokens=n, eos_token_id=None,
                      pad_token_id=0)
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_export_matches_transformers(case, tmp_path):
    spec, arch = CASES[case]
    cfg = make_config({**BASE, **spec})
    assert hf_class(cfg) == arch
    torch.manual_seed(0)
    ours = build_model(cfg).eval()
    _randomize(ours, 1)
    save_model(ours, tmp_path / "ours")
    export_hf(tmp_path / "ours", tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert type(hf).__name__ == arch
    ids = torch.randint(0, cfg.vocab_size, (2, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf(ids).logits
        got = ours(ids)
    assert ref.abs().max() > 1.0  # the comparison is not between near-zero logits
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    prompt = ids[:, :7]
    assert torch.equal(generate(ours, prompt, 12), _hf_greedy(hf, prompt, 12))


@pytest.mark.parametrize("case", ["llama", "qwen2", "qwen3", "minimind3_moe", "moe"])
def test_import_matches_transformers(case, tmp_path):
    spec, arch = CASES[case]
    cfg = make_config({**BASE, **spec})
    from minigpt_assets.models.interop import hf_config

    hf_cfg = transformers.AutoConfig.for_model(**{k: v for k, v in hf_config(cfg).items()
                                                  if k not in ("architectures",)})
    torch.manual_seed(3)
    hf = transformers.AutoModelForCausalLM.from_config(hf_cfg).eval()
    _randomize(hf, 4)
    # llama: a sharded folder (model.safetensors.index.json), as large checkpoints come
    hf.save_pretrained(tmp_path / "hf", max_shard_size="100KB" if case == "llama" else "5GB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file() == (case == "llama")
    ours = from_pretrained(tmp_path / "hf")
    ids = torch.randint(0, cfg.vocab_size, (2, 33), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, atol=1e-4, rtol=1e-4)
    assert torch.equal(generate(ours, ids[:, :5], 10), _hf_greedy(hf, ids[:, :5], 10))
    # import-hf writes our format; loading it gives the same module again
    import_hf(tmp_path / "hf", tmp_path / "ours")
    again = from_pretrained(tmp_path / "ours")
    with torch.no_grad():
        torch.testing.assert_close(again(ids), ours(ids), atol=0, rtol=0)


def test_minimind2_moe_has_no_hf_class_and_says_why():
    cfg = make_config({**BASE, "family": "minimind", "qk_norm": False,
                       "moe": {"n_routed": 4, "n_shared": 1, "top_k": 2}})
    with pytest.raises(CheckpointError, match="no transformers class"):
        hf_class(cfg)


def _minimind_state_dict(model) -> dict[str, torch.Tensor]:
    """Our weights under the key names MiniMind's own code saves (experts and shared experts as lists)."""
    sd = {}
    for k, v in model.state_dict().items():
        if k.endswith(("tokens_per_expert", "inv_freq", "expert_bias")):
            continue
        if ".mlp.experts." in k:
            prefix, name = k.rsplit(".experts.", 1)
            for e in range(v.shape[0]):
                sd[f"{prefix}.experts.{e}.{name}.weight"] = v[e].clone()
        elif ".mlp.shared_experts." in k:
            sd[k.replace(".shared_experts.", ".shared_experts.0.")] = v.clone()
        else:
            sd[k] = v.clone()
    return {f"_orig_mod.{k}": v for k, v in sd.items()}


@pytest.mark.parametrize("moe", [None, {"n_routed": 4, "n_shared": 1, "top_k": 2}])
def test_minimind_state_dict_loads(moe, tmp_path):
    spec = {**BASE, "family": "minimind", "qk_norm": False}
    if moe:
        spec["moe"] = moe
    cfg = make_config(spec)
    ours = build_model(cfg).eval()
    _randomize(ours, 7)
    sd = _minimind_state_dict(ours)
    (tmp_path / "model_config.json").write_text(json.dumps(cfg.model_dump(mode="json")))
    torch.save(sd, tmp_path / "pretrain_512.pth")
    loaded = from_pretrained(tmp_path / "pretrain_512.pth")
    ids = torch.randint(0, cfg.vocab_size, (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), ours(ids), atol=0, rtol=0)
    # two shared experts in MiniMind's list == one of double width in ours
    if moe:
        sd2 = load_minimind_state_dict(cfg, sd)
        assert sd2["model.layers.0.mlp.shared_experts.gate_proj.weight"].shape[0] == cfg.expert_size


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "llama"])
def test_exported_tokenizer_tokenizes_as_trained_or_export_warns(family, tmp_path):
    """transformers 5 rebuilds a qwen2 export's tokenizer with Qwen2's split: a byte-level (GPT-2 split)
    tokenizer then tokenizes differently and export warns; trained with `pre_tokenizer: qwen2` it is the same."""
    import warnings

    import transformers
    from tokenizers import Tokenizer

    from minigpt_assets.data.builtin_corpora import english_sentences
    from minigpt_assets.data.tokenizer import train_bpe
    from minigpt_assets.models.interop import FIDELITY_PROBES, TokenizerMismatchWarning
    from minigpt_assets.recipes import TokenizerRecipe

    texts = [*english_sentences()[:400], *FIDELITY_PROBES, "In 1999 they'd paid $1,234.56 for 12 items."]
    model = build_model(make_config({**BASE, "vocab_size": 600, **CASES[family][0]}))
    for pre in ("bytelevel", "qwen2"):
        train_bpe(texts, TokenizerRecipe(vocab_size=600, pre_tokenizer=pre), tmp_path / f"tok-{pre}")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = export_hf(model, tmp_path / f"hf-{pre}", tokenizer=tmp_path / f"tok-{pre}")
        warned = [w for w in caught if issubclass(w.category, TokenizerMismatchWarning)]
        auto = transformers.AutoTokenizer.from_pretrained(str(out))
        raw = Tokenizer.from_file(str(out / "tokenizer.json"))
        same = all(auto.encode(t, add_special_tokens=False) == raw.encode(t).ids for t in texts)
        assert same == (not warned), (family, pre, [str(w.message) for w in warned])
        if pre == "qwen2" or family != "qwen2":
            assert same, (family, pre)  # only a qwen2 export of a GPT-2-split tokenizer differs
        else:
            assert "pre_tokenizer: qwen2" in str(warned[0].message)
