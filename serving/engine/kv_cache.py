"""KV caches the engine keeps: the running batch's slot layers and reusable prompt prefixes.

The batch's cache is one left-padded tensor pair per layer with spare capacity (``SlotLayer``),
so a decode step writes one column in place instead of re-concatenating the whole cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import cache_utils

from serving.inference_types import TokenScore

_DynamicLayer: Any = cache_utils.DynamicLayer
Cache: Any = cache_utils.Cache


class SlotLayer(_DynamicLayer):  # type: ignore[misc]
    """A KV cache layer over a preallocated buffer: decoding writes in place, no re-concatenation.

    Shapes are ``[batch, kv_heads, capacity, head_dim]``; ``length`` columns are in use.
    """

    def __init__(self) -> None:
        super().__init__()
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.kbuf: torch.Tensor | None = None
        self.vbuf: torch.Tensor | None = None
        self.length = 0

    def set(self, keys: torch.Tensor, values: torch.Tensor, spare: int = 64) -> None:
        b, h, n, d = keys.shape
        self.kbuf = keys.new_empty((b, h, n + spare, d))
        self.vbuf = values.new_empty((b, h, n + spare, d))
        self.kbuf[:, :, :n] = keys
        self.vbuf[:, :, :n] = values
        self.length = n
        self._views()

    def kv(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The cached keys and values in use (views of the buffers)."""
        assert self.kbuf is not None
        assert self.vbuf is not None
        return self.kbuf[:, :, : self.length], self.vbuf[:, :, : self.length]

    def _views(self) -> None:
        assert self.kbuf is not None
        assert self.vbuf is not None
        self.keys = self.kbuf[:, :, : self.length]
        self.values = self.vbuf[:, :, : self.length]
        self.is_initialized = True
        self.device = self.kbuf.device

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kbuf is None:
            self.set(key_states, value_states)
            return self.kv()
        assert self.vbuf is not None
        n = key_states.shape[-2]
        if self.length + n > self.kbuf.shape[2]:
            grow = max(64, self.length // 2, n)
            self.kbuf = torch.cat([self.kbuf, self.kbuf.new_empty(self._shape(grow))], dim=2)
            self.vbuf = torch.cat([self.vbuf, self.vbuf.new_empty(self._shape(grow))], dim=2)
        self.kbuf[:, :, self.length : self.length + n] = key_states
        self.vbuf[:, :, self.length : self.length + n] = value_states
        self.length += n
        self._views()
        return self.kv()

    def _shape(self, n: int) -> tuple[int, int, int, int]:
        assert self.kbuf is not None
        b, h, _, d = self.kbuf.shape
        return (b, h, n, d)

    def get_seq_length(self) -> int:
        return self.length


def new_cache(layers: int) -> Cache:
    return Cache(layers=[SlotLayer() for _ in range(layers)])


def slots(cache: Cache) -> list[SlotLayer]:
    return [layer for layer in cache.layers if isinstance(layer, SlotLayer)]


def left_pad(t: torch.Tensor, length: int) -> torch.Tensor:
    """Pad a ``[b, h, n, d]`` tensor on the left of the sequence axis to ``length``."""
    n = t.shape[2]
    if n == length:
        return t
    pad = t.new_zeros((t.shape[0], t.shape[1], length - n, t.shape[3]))
    return torch.cat([pad, t], dim=2)


@dataclass
class Prefix:
    """A scored prompt's ids, its KV cache (``[1, kv_heads, len(ids), head_dim]`` per layer) and
    the logits after its last token: what the next prompt sharing its start need not recompute."""

    ids: list[int]
    kv: list[tuple[torch.Tensor, torch.Tensor]]
    last_logits: torch.Tensor
    scores: list[TokenScore] | None = None  # of ids[1:], when a prompt_logprobs pass kept them
    top: int = 0  # the alternatives per score kept in ``scores``


@dataclass
class PromptKV:
    """A generated prompt's ids and KV cache (``[1, kv_heads, len(ids), head_dim]`` per layer):
    the next prompt for the same adapter reuses the part they share (the dataset's system
    prompt, usually most of a draft's prompt), as vLLM's prefix caching does."""

    ids: list[int]
    kv: list[tuple[torch.Tensor, torch.Tensor]]


def shared_length(a: list[int], b: list[int]) -> int:
    """How many leading tokens ``a`` and ``b`` have in common."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def reused_cache(
    layers: int, reuse: list[tuple[int, PromptKV | None]], spare: int
) -> tuple[Cache, torch.Tensor]:
    """A cache for a prefill batch whose row ``i`` starts with ``reuse[i][0]`` tokens already
    computed in ``reuse[i][1]``, right-aligned to a common width (left columns masked), and
    its ``[rows, width]`` attention mask."""
    width = max(n for n, _ in reuse)
    mask = torch.zeros((len(reuse), width), dtype=torch.long)
    cache = new_cache(layers)
    sample = next(p for n, p in reuse if n and p is not None).kv[0][0]
    _, heads, _, dim = sample.shape
    for index, layer in enumerate(slots(cache)):
        keys = sample.new_zeros((len(reuse), heads, width, dim))
        values = sample.new_zeros((len(reuse), heads, width, dim))
        for row, (n, prompt) in enumerate(reuse):
            if n and prompt is not None:
                k, v = prompt.kv[index]
                keys[row, :, width - n :] = k[0, :, :n]
                values[row, :, width - n :] = v[0, :, :n]
                mask[row, width - n :] = 1
        layer.set(keys, values, spare)
    return cache, mask


def row_kv(
    cache: Cache, row: int, columns: torch.Tensor
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Row ``row``'s keys and values at ``columns`` (its real tokens, in order), per layer."""
    out = []
    for layer in slots(cache):
        keys, values = layer.kv()
        out.append(
            (
                keys[row : row + 1].index_select(2, columns).clone(),
                values[row : row + 1].index_select(2, columns).clone(),
            )
        )
    return out
