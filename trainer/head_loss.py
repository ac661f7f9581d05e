"""The answer tokens' cross-entropy through a frozen LM head, a chunk of rows at a time.

The plain way (``head(rows).float()`` then ``cross_entropy``) holds several vocabulary-wide
copies of every answer row at once: the logits, their fp32 copy, the log-softmax kept for
backward, and in backward the gradients of each. With SmolLM2's 49,152-token vocabulary that is
most of a micro-batch's peak memory beyond the model. The head's weight is frozen in LoRA
training (tied to the input embeddings), so the only gradient it passes on is the rows', and
that can be computed in the forward pass, chunk by chunk: the peak holds one chunk's logits.
The arithmetic is the plain way's (logits in the rows' dtype, softmax in fp32, the rows'
gradient as the head's backward computes it), so the loss and gradients agree with it to
rounding.
"""

from __future__ import annotations

from typing import Any

import torch

#: answer rows per chunk: a chunk's fp32 logits are ``CHUNK_ROWS x vocabulary x 4`` bytes
CHUNK_ROWS = 128


class _ChunkedHeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, rows: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int
    ) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float32, device=rows.device)
        grad = torch.empty_like(rows)
        for start in range(0, rows.shape[0], chunk):
            part = rows[start : start + chunk]
            logits = torch.mm(part, weight.t()).float()
            want = targets[start : start + chunk]
            log_z = torch.logsumexp(logits, dim=-1)
            total += (log_z - logits.gather(1, want[:, None]).squeeze(1)).sum()
            probs = logits.sub_(log_z[:, None]).exp_()  # softmax, in place of the logits
            probs[torch.arange(len(want), device=probs.device), want] -= 1.0
            grad[start : start + chunk] = torch.mm(probs.to(weight.dtype), weight)
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx: Any, upstream: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (grad,) = ctx.saved_tensors
        return grad * upstream.to(grad.dtype), None, None, None


def head_loss(
    rows: torch.Tensor,
    head: torch.nn.Module,
    targets: torch.Tensor,
    reduction: str = "sum",
    chunk: int = CHUNK_ROWS,
) -> torch.Tensor:
    """Cross-entropy of ``targets`` given the hidden ``rows`` (one per answer token) and the LM
    ``head``, in fp32. Summed and chunked when it can be (a frozen head without bias, gradients
    wanted); otherwise, or for another ``reduction``, the plain way."""
    weight = getattr(head, "weight", None)
    chunkable = (
        reduction == "sum"
        and isinstance(weight, torch.Tensor)
        and getattr(head, "bias", None) is None
        and not weight.requires_grad
        and rows.requires_grad
        and torch.is_grad_enabled()
    )
    if not chunkable:
        logits = head(rows).float()
        return torch.nn.functional.cross_entropy(logits, targets, reduction=reduction)
    if torch.is_autocast_enabled(rows.device.type):
        dtype = torch.get_autocast_dtype(rows.device.type)
        rows, weight = rows.to(dtype), weight.to(dtype)  # type: ignore[union-attr]
    loss: torch.Tensor = _ChunkedHeadLoss.apply(rows, weight, targets, chunk)  # type: ignore[no-untyped-call]
    return loss
