"""The CPU fast path's decode step for Llama models: the same arithmetic as transformers'
forward, without its per-module machinery.

A decode step on the CPU is a few small matrix products per layer; transformers' forward wraps
each in decorators, output capture, mask building and module dispatch that cost about as much
as the attention itself. ``LeanDecoder`` runs one decode step (one new token per row) of a
``LlamaForCausalLM`` straight through the packed weights (see ``cpu_pack``): embedding, RMS
norms, rotary embedding (the model's own module, so every rope scaling works), the cache's own
``update`` and SDPA with the row padding mask.

Contract: the result equals the model's forward with every LoRA layer switched off, to float
rounding. Callers use it only for rows that run as the base model (a merged adapter swaps the
packed weights, which this reads at each call). ``LeanDecoder.build`` returns None for anything
else (another architecture, unpacked weights, a wrapper peft added that is not a LoRA layer),
and the engine then keeps transformers' forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional


def _plain(module: Any) -> torch.nn.Linear | None:
    """The packed ``nn.Linear`` a projection computes with LoRA off, or None."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    if isinstance(module, BaseTunerLayer):
        module = module.get_base_layer()
    if type(module) is torch.nn.Linear and hasattr(module, "_brandbot_packed"):
        return module
    return None


def _linear(module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    packed: torch.Tensor = module._brandbot_packed  # type: ignore[assignment]
    out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, packed, module.bias, "none", [], "")
    return out


def _rms(weight: torch.Tensor, eps: float, x: torch.Tensor) -> torch.Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _norm(module: Any) -> tuple[torch.Tensor, float]:
    return module.weight, float(module.variance_epsilon)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


@dataclass
class _Layer:
    norm1: tuple[torch.Tensor, float]
    q: torch.nn.Linear
    k: torch.nn.Linear
    v: torch.nn.Linear
    o: torch.nn.Linear
    norm2: tuple[torch.Tensor, float]
    gate: torch.nn.Linear
    up: torch.nn.Linear
    down: torch.nn.Linear
    heads: int
    kv_heads: int
    head_dim: int
    scale: float


class LeanDecoder:
    """One decode step of a packed ``LlamaForCausalLM`` (see the module docstring)."""

    def __init__(self, model: Any, layers: list[_Layer], embed: torch.nn.Embedding) -> None:
        self._layers = layers
        self._embed = embed
        self._norm = _norm(model.model.norm)
        self._rotary = model.model.rotary_emb
        head = _plain(model.lm_head)
        assert head is not None
        self._head = head

    @classmethod
    def build(cls, model: Any) -> LeanDecoder | None:
        """A decoder for ``model`` (the engine's base model, perhaps with peft's LoRA layers
        inside), or None when it is not a packed Llama this step reproduces exactly."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        config = getattr(model, "config", None)
        inner = getattr(model, "model", None)
        if (
            config is None
            or inner is None
            or type(model).__name__ != "LlamaForCausalLM"
            or getattr(config, "hidden_act", None) != "silu"
            or (getattr(config, "pretraining_tp", 1) or 1) != 1
            or _plain(getattr(model, "lm_head", None)) is None
        ):
            return None
        embed = inner.embed_tokens
        if isinstance(embed, BaseTunerLayer):
            embed = embed.get_base_layer()
        if type(embed) is not torch.nn.Embedding:
            return None
        layers = []
        for layer in inner.layers:
            attn, mlp = layer.self_attn, layer.mlp
            names = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
            found = [_plain(getattr(attn if n[0] in "qkvo" else mlp, n)) for n in names]
            projections = [p for p in found if p is not None]
            if len(projections) < len(names) or type(mlp.act_fn).__name__ != "SiLUActivation":
                return None
            q, k, v, o, gate, up, down = projections
            head_dim = int(attn.head_dim)
            layers.append(
                _Layer(
                    norm1=_norm(layer.input_layernorm),
                    q=q,
                    k=k,
                    v=v,
                    o=o,
                    norm2=_norm(layer.post_attention_layernorm),
                    gate=gate,
                    up=up,
                    down=down,
                    heads=q.out_features // head_dim,
                    kv_heads=k.out_features // head_dim,
                    head_dim=head_dim,
                    scale=float(attn.scaling),
                )
            )
        return cls(model, layers, embed)

    def step(
        self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any
    ) -> torch.Tensor:
        """Logits ``[rows, 1, vocab]`` (float32) of one decode step.

        ``ids`` and ``positions`` are ``[rows, 1]``; ``mask`` is ``[rows, columns]`` with 1 at
        real tokens, the new one included; ``cache`` (the engine's slot cache) gains a column.
        """
        rows = ids.shape[0]
        hidden = self._embed(ids)
        cos, sin = self._rotary(hidden, positions)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        keep = mask.bool()[:, None, None, :]
        for layer, slot in zip(self._layers, cache.layers, strict=True):
            x = _rms(*layer.norm1, hidden)
            q = _linear(layer.q, x).view(rows, 1, layer.heads, layer.head_dim).transpose(1, 2)
            k = _linear(layer.k, x).view(rows, 1, layer.kv_heads, layer.head_dim).transpose(1, 2)
            v = _linear(layer.v, x).view(rows, 1, layer.kv_heads, layer.head_dim).transpose(1, 2)
            keys, values = slot.update(_rotate(k, cos, sin), v)
            attended = functional.scaled_dot_product_attention(
                _rotate(q, cos, sin),
                keys,
                values,
                attn_mask=keep,
                scale=layer.scale,
                enable_gqa=layer.heads != layer.kv_heads,
            )
            hidden = hidden + _linear(layer.o, attended.transpose(1, 2).reshape(rows, 1, -1))
            x = _rms(*layer.norm2, hidden)
            gated = functional.silu(_linear(layer.gate, x)) * _linear(layer.up, x)
            hidden = hidden + _linear(layer.down, gated)
        return _linear(self._head, _rms(*self._norm, hidden)).float()
