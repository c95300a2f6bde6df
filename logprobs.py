"""Per-token log-probs through the lm_head without full-vocabulary float32 logits.

    log π(y_t | ·) = logits[y_t]/T − logsumexp(logits/T),   logits = h_t Wᵀ,   for N chosen positions

computed chunk by chunk in forward and in backward, so memory is O(chunk·V) rather than O(N·V): at
Qwen3-VL's V = 151,936 one 8,192-token response would otherwise hold 4.6 GiB of float32 logits
(and as much again for their gradient). Used by model.Policy for every policy log-prob.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


def _chunk_logits(h: torch.Tensor, weight: torch.Tensor, temperature: float, out: torch.Tensor) -> torch.Tensor:
    """(k, V) float32 logits / T of k hidden states (k, H), written into the first k rows of `out`.

    `out` is one (chunk, V) buffer reused for every chunk of a pass: on the CPU a fresh allocation of that
    size costs about as much as the matmul itself (the pages are faulted in anew each time).
    """
    out = out[:h.shape[0]]
    if h.dtype == weight.dtype == out.dtype and not torch.is_autocast_enabled(h.device.type):
        torch.mm(h, weight.T, out=out)
    else:
        out.copy_(F.linear(h, weight))
    return out.div_(temperature) if temperature != 1.0 else out


class _TokenLogProbs(torch.autograd.Function):
    """log π(y) through the lm_head chunk by chunk, keeping one number per position for backward.

    Backward rebuilds each chunk's softmax from the saved log-sum-exp and uses
        ∂ log π(y) / ∂ logits = (onehot(y) − softmax(logits / T)) / T,
    so neither pass ever holds more than one chunk's (chunk, V) float32 logits (two with entropy),
    and every full-vocabulary step after the matmul works in place in that buffer.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, hidden, weight, targets, temperature, chunk_size, with_entropy):
        n = hidden.shape[0]
        logprobs, lse = (hidden.new_empty(n, dtype=torch.float32) for _ in range(2))
        entropy = hidden.new_empty(n if with_entropy else 0, dtype=torch.float32)
        buffer = hidden.new_empty(min(n, chunk_size), weight.shape[0], dtype=torch.float32)
        probs = torch.empty_like(buffer) if with_entropy else None
        for s in range(0, n, chunk_size):
            rows = slice(s, s + chunk_size)
            logits = _chunk_logits(hidden[rows], weight, temperature, buffer)  # (chunk, V)
            picked = logits.gather(-1, targets[rows, None])[:, 0]
            maxes = logits.amax(-1)
            shifted = logits.sub_(maxes[:, None])  # in place, as every full-vocabulary step below
            if with_entropy:  # H = log Σe − Σ e·(logits − max) / Σe,  e = exp(logits − max)
                e = torch.exp(shifted, out=probs[:shifted.shape[0]])
                total = e.sum(-1)
                entropy[rows] = total.log() - torch.linalg.vecdot(e, shifted) / total
            else:
                total = shifted.exp_().sum(-1)
            lse[rows] = total.log_().add_(maxes)
            logprobs[rows] = picked - lse[rows]
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_logprobs, grad_entropy):
        hidden, weight, targets, lse = ctx.saved_tensors
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        buffer = hidden.new_empty(min(hidden.shape[0], ctx.chunk_size), weight.shape[0], dtype=torch.float32)
        for s in range(0, hidden.shape[0], ctx.chunk_size):
            rows = slice(s, s + ctx.chunk_size)
            h, g_out = hidden[rows], grad_logprobs[rows]
            grad = _chunk_logits(h, weight, ctx.temperature, buffer)
            grad.sub_(lse[rows, None]).exp_().mul_(-g_out[:, None])  # −softmax · ḡ
            grad.scatter_add_(-1, targets[rows, None], g_out[:, None])  # + onehot(y) · ḡ
            if ctx.temperature != 1.0:
                grad.div_(ctx.temperature)
            grad = grad.to(h.dtype)
            if grad_hidden is not None:
                grad_hidden[rows] = grad @ weight.to(h.dtype)
            if grad_weight is not None:
                grad_weight += (grad.T @ h).float()
        return grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype), None, None, None, None


def chunked_token_logprobs(hidden: torch.Tensor, lm_head: nn.Module, targets: torch.Tensor,
                           temperature: float = 1.0, chunk_size: int = 512, with_entropy: bool = False):
    """log π(y_t | ·) = logits[y_t]/T − logsumexp(logits/T), for N selected positions, in chunks.

    hidden: (N, H) final hidden states of the positions that predict `targets` (N,); lm_head: the
    bias-free output projection. Returns (logprobs (N,), entropy (N,) or None; entropy carries no
    gradient). Full-vocabulary float32 logits exist one chunk at a time, in forward and in
    backward, so peak memory is O(chunk·V) rather than O(N·V).
    """
    if lm_head.bias is not None:
        raise ValueError("chunked_token_logprobs expects a bias-free lm_head, as Qwen3-VL's")
    logprobs, entropy = _TokenLogProbs.apply(hidden, lm_head.weight, targets, temperature, chunk_size, with_entropy)
    return logprobs, entropy if with_entropy else None
