"""The CPU fast path: oneDNN-prepacked weights for the few-row products of decoding.

One switch (``LocalEngine(pack_weights=...)``) and one probe (``pack_linears`` returns 0 when the
oneDNN ops are missing or disagree with ``F.linear``) guard it; everything else in the engine
works the same with or without it.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch

PACK_HINT = 8  # rows the prepacked weights are laid out for: a decode step's batch


def packed_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` laid out for oneDNN's linear at ``PACK_HINT`` rows."""
    packed: torch.Tensor = torch.ops.mkldnn._reorder_linear_weight(weight, PACK_HINT)
    return packed


def _packed_linear_forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    packed: torch.Tensor = self._brandbot_packed  # type: ignore[assignment]
    out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, packed, self.bias, "none", [], "")
    return out


def pack_linears(model: torch.nn.Module, batch_hint: int = PACK_HINT) -> int:
    """Give the model's fp32 ``nn.Linear`` layers oneDNN-prepacked weights (CPU only).

    MKL's GEMM is slow for the few-row inputs of a decode step (8 sequences = 8 rows); oneDNN
    with weights prepacked for that shape runs them several times faster (dense tensors in and
    out, no conversions), and a batched step is mostly these products. The modules stay
    ``nn.Linear`` (peft wraps them as usual; LoRA layers added later are not packed); only
    their ``forward`` changes. The packed copy does not follow later changes of ``weight``:
    serving never changes base weights. Returns how many layers were packed (0 if the oneDNN
    ops are missing or disagree with ``F.linear`` on a probe).
    """
    mkldnn_ops = getattr(torch.ops, "mkldnn", None)
    if not torch.backends.mkldnn.is_available() or mkldnn_ops is None:  # type: ignore[no-untyped-call]
        return 0
    try:
        probe_w = torch.randn(16, 8)
        probe_x = torch.randn(3, 8)
        packed = mkldnn_ops._reorder_linear_weight(probe_w, batch_hint)
        with torch.inference_mode():
            got = mkldnn_ops._linear_pointwise(probe_x, packed, None, "none", [], "")
        if not torch.allclose(got, torch.nn.functional.linear(probe_x, probe_w), atol=1e-4):
            return 0
    except (RuntimeError, AttributeError):
        return 0
    count = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear and module.weight.dtype == torch.float32:
            weight = module.weight.detach()
            module._brandbot_packed = mkldnn_ops._reorder_linear_weight(weight, batch_hint)
            module.forward = types.MethodType(_packed_linear_forward, module)  # type: ignore[method-assign]
            count += 1
    return count


@contextlib.contextmanager
def threads_for_rows(rows: int, enabled: bool) -> Iterator[None]:
    """Run a one-row decode step on one thread (``enabled``: the CPU fast path is on).

    A single sequence's step is a chain of small matrix-vector products: splitting each across
    threads costs more in fork/join than it saves, and the second thread takes the core the
    server's own threads (HTTP, streaming) need. Batches of several rows keep every thread.
    """
    if not enabled or rows != 1 or torch.get_num_threads() == 1:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
