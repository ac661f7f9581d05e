"""The chunked LM-head loss equals the plain one (loss and the rows' gradient), falls back to
the plain one where it cannot apply, and keeps the rows' dtype under autocast."""

from __future__ import annotations

import pytest
import torch

from trainer.head_loss import head_loss


def plain(rows: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(head(rows).float(), targets, reduction="sum")


def case(
    dtype: torch.dtype, bias: bool = False
) -> tuple[torch.Tensor, torch.nn.Linear, torch.Tensor]:
    torch.manual_seed(0)
    head = torch.nn.Linear(24, 300, bias=bias).to(dtype)
    head.weight.requires_grad_(False)
    rows = torch.randn(10, 24, dtype=dtype, requires_grad=True)
    return rows, head, torch.randint(0, 300, (10,))


@pytest.mark.parametrize("chunk", [3, 10, 64])
def test_chunks_give_the_plain_loss_and_gradient_in_fp32(chunk: int) -> None:
    rows, head, targets = case(torch.float32)
    want = plain(rows, head, targets)
    (want_grad,) = torch.autograd.grad(want * 0.25, rows)
    got = head_loss(rows, head, targets, chunk=chunk)
    (got_grad,) = torch.autograd.grad(got * 0.25, rows)  # the upstream scale reaches the rows
    assert got.dtype == torch.float32
    assert torch.allclose(got, want, rtol=1e-5)
    assert torch.allclose(got_grad, want_grad, rtol=1e-4, atol=1e-6)


def test_bf16_rows_under_autocast_follow_the_plain_path() -> None:
    rows, head, targets = case(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = plain(rows, head, targets)
        got = head_loss(rows, head, targets, chunk=4)
    (want_grad,) = torch.autograd.grad(want, rows)
    (got_grad,) = torch.autograd.grad(got, rows)
    assert got.dtype == torch.float32 and got_grad.dtype == torch.bfloat16
    assert torch.allclose(got, want, rtol=1e-3)
    cosine = torch.nn.functional.cosine_similarity(
        got_grad.float().flatten(), want_grad.float().flatten(), dim=0
    )
    assert float(cosine) > 0.999


def test_a_head_with_bias_or_weights_to_train_takes_the_plain_path() -> None:
    rows, head, targets = case(torch.float32, bias=True)
    assert torch.allclose(head_loss(rows, head, targets, chunk=3), plain(rows, head, targets))
    rows, head, targets = case(torch.float32)
    head.weight.requires_grad_(True)
    torch.autograd.backward(head_loss(rows, head, targets, chunk=3))
    assert head.weight.grad is not None and rows.grad is not None
    with torch.no_grad():
        assert torch.allclose(head_loss(rows, head, targets), plain(rows, head, targets))
