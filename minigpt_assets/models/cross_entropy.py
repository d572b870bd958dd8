"""Cross-entropy of the output projection without the [tokens x vocabulary] logits in fp32.

`linear_cross_entropy(hidden, weight, labels)` equals
`F.cross_entropy((hidden @ weight.T).float(), labels, ignore_index=-100, reduction="sum")`, but walks the tokens in
chunks: each chunk's logits are made in the compute dtype, turned to fp32 for the log-sum-exp, and their gradient
(softmax minus one-hot) is used at once for the gradients of `hidden` and `weight`, so no chunk outlives its
turn. The backward pass then only scales the saved gradients: the same three matmuls as the plain loss, and
peak memory of one chunk's logits instead of all of them (2 GiB of fp32 logits per 4k tokens at a 128k
vocabulary). The approach is Liger-Kernel's fused linear cross-entropy, written in plain PyTorch. On a GPU each
chunk's arithmetic is compiled (`torch.compile`), so its fp32 values stay in registers and chunks can be larger.
"""

from __future__ import annotations

from functools import lru_cache

import torch

IGNORE = -100
CHUNK_BYTES = 256 * 2**20  # fp32 logits per chunk (the plain path, which makes them)
COMPILED_CHUNK_BYTES = 2**30  # bf16 logits per chunk on a GPU, where the compiled chunk makes no fp32 copy: on an
# H200 at the 1B shape (V 128256) 4096-token chunks ran 57.7k tokens/s, 2048 56.6k and 523 51.3k


def chunk_tokens(vocab: int, budget: int = CHUNK_BYTES, itemsize: int = 4) -> int:
    """Tokens per chunk so that one chunk's logits take about `budget` bytes (at least 64)."""
    return max(64, budget // (itemsize * vocab))


def _chunk_math(h: torch.Tensor, w: torch.Tensor, y: torch.Tensor, want_grad: bool):
    """One chunk: (summed loss in fp32, d loss / d logits in the compute dtype or None). The logits are made in
    the compute dtype and read in fp32; on a GPU this function is compiled, so the fp32 copies live only in
    registers: one kernel reads the logits for the log-sum-exp and one writes the gradient."""
    keep = y != IGNORE
    target = y.clamp(min=0)
    logits = (h @ w.t()).float()
    lse = torch.logsumexp(logits, dim=-1)
    loss = ((lse - logits.gather(1, target[:, None]).squeeze(1)) * keep).sum()
    if not want_grad:
        return loss, None
    # d(sum of losses)/d(logits) = softmax - one-hot, on the kept rows
    cols = torch.arange(logits.shape[1], device=logits.device)
    g = (logits - lse[:, None]).exp() - (cols[None, :] == target[:, None]).float()
    return loss, (g * keep[:, None]).to(h.dtype)


@lru_cache(maxsize=None)
def _compiled_chunk():
    return torch.compile(_chunk_math, dynamic=False, fullgraph=True)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk: int,
                dtype: torch.dtype, needs: tuple[bool, bool]) -> torch.Tensor:
        n = hidden.shape[0]
        w = weight.to(dtype)
        grad_h = torch.empty(hidden.shape, dtype=hidden.dtype, device=hidden.device) if needs[0] else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if needs[1] else None
        want = grad_h is not None or grad_w is not None
        math = _compiled_chunk() if hidden.is_cuda else _chunk_math  # the CPU path stays plain
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for lo in range(0, n, chunk):
            h = hidden[lo:lo + chunk].to(dtype)
            loss, g = math(h, w, labels[lo:lo + chunk], want)
            total += loss
            if grad_h is not None:
                grad_h[lo:lo + chunk] = (g @ w).to(hidden.dtype)
            if grad_w is not None:
                grad_w += (g.t() @ h).float()
        ctx.save_for_backward(grad_h if grad_h is not None else torch.empty(0),
                              grad_w.to(weight.dtype) if grad_w is not None else torch.empty(0))
        ctx.needs = (grad_h is not None, grad_w is not None)
        return total

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        return (grad_h * grad_out if ctx.needs[0] else None, grad_w * grad_out if ctx.needs[1] else None,
                None, None, None, None)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         chunk: int | None = None) -> torch.Tensor:
    """Sum over positions whose label is not -100 of -log softmax(hidden @ weight.T)[label], in fp32.

    `hidden` [N, d] or [B, T, d], `weight` [V, d], `labels` [N] or [B, T]. Matmuls run in the autocast dtype when
    autocast is on (bf16 on a GPU), else in `hidden`'s dtype; the log-sum-exp is always fp32."""
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    # which gradients to make: none under no_grad (an evaluation), even though the weight is a Parameter
    grad = torch.is_grad_enabled()
    needs = (grad and hidden.requires_grad, grad and weight.requires_grad)
    with torch.autocast(device, enabled=False):
        return _LinearCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), weight, labels.reshape(-1),
                                         chunk or _default_chunk(weight.shape[0], hidden.is_cuda), dtype, needs)


def _default_chunk(vocab: int, gpu: bool) -> int:
    return chunk_tokens(vocab, COMPILED_CHUNK_BYTES, 2) if gpu else chunk_tokens(vocab)
