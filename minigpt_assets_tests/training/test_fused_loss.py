"""The chunked linear + cross-entropy equals the plain loss (value and gradients), and the trainer's `auto`
switches (fused loss, per-block compile) stay off on CPU."""

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


def test_chunk_size_bounds_the_fp32_logits():
    assert chunk_tokens(128_256) == 523 and chunk_tokens(32_000) == 2097 and chunk_tokens(10**9) == 64


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
