"""Cross-entropy of an LM head, fused with the head's matmul and computed in row chunks.

The plain path materialises logits for every token ([tokens, vocab], 67 MB at 2,048 tokens and a
8,192 vocabulary) and then streams them through log-softmax forward and backward: on a CPU that
is memory-bound and cache-hostile. Here each chunk of rows goes matmul -> softmax -> gradient
while it is still in cache, and the gradients of the hidden states and the head weight are formed
in the same pass (the trick of fused linear-cross-entropy kernels such as Liger's), so the full
logits never exist. Same result as `F.cross_entropy(hidden @ weight.T, targets)` up to float
rounding.
"""

from __future__ import annotations

import torch

DEFAULT_CHUNK_ROWS = 256  # 256 x 8,192 fp32 logits = 8 MB: one chunk stays in a CPU's cache


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_rows):  # noqa: D102 (autograd protocol)
        rows = hidden.shape[0]
        needs_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        total = hidden.new_zeros((), dtype=torch.float32)
        grad_hidden = torch.empty_like(hidden) if needs_grad else None
        grad_weight = torch.zeros_like(weight) if needs_grad else None
        for start in range(0, rows, chunk_rows):
            h = hidden[start : start + chunk_rows]
            t = targets[start : start + chunk_rows]
            log_probs = torch.log_softmax((h @ weight.t()).float(), dim=-1)
            total -= log_probs.gather(1, t[:, None]).sum()
            if needs_grad:
                # d(summed loss)/d(logits) = softmax - one_hot, in the log-probs' own buffer.
                probs = log_probs.exp_()
                probs[torch.arange(len(t), device=t.device), t] -= 1.0
                probs = probs.to(hidden.dtype)
                grad_hidden[start : start + chunk_rows] = probs @ weight
                grad_weight.addmm_(probs.t(), h)
        if needs_grad:
            # The mean's 1/rows, applied to the small gradients rather than every logit.
            ctx.save_for_backward(grad_hidden.div_(rows), grad_weight.div_(rows))
        return total / rows

    @staticmethod
    def backward(ctx, grad_loss):  # noqa: D102
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_loss, grad_weight * grad_loss, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T` ([rows, dim] x [vocab, dim]) against `targets`
    ([rows], every entry a valid class: no ignore index).

    Gradients are computed during the forward pass, so call `.backward()` on the result (or a
    multiple of it) once; without grad mode only the loss is computed.
    """
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(
            f"expected hidden [rows, dim] and targets [rows], got {tuple(hidden.shape)} and "
            f"{tuple(targets.shape)}"
        )
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
    return _LinearCrossEntropy.apply(hidden, weight, targets, chunk_rows)
