"""The state every part of the engine shares, and the one forward pass they all run.

``LocalEngine`` is assembled from mixins, one per job (batching, scoring, LoRA slots); each
declares nothing of its own state: it is all here, typed, so a reader finds every field the
scheduler thread owns in one place. Only the scheduler thread touches the model and the caches.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from serving.engine.kv_cache import Cache, Prefix, PromptKV
from serving.engine.lean_decode import LeanDecoder
from serving.engine.metrics import EngineMetrics
from serving.inference_types import BASE, GenerationHandle, SamplingParams, TokenLogprob


@dataclass
class Seq:
    """A generation in the running batch (or waiting to join it)."""

    handle: GenerationHandle
    prompt: list[int]
    adapter: str
    params: SamplingParams
    generator: torch.Generator | None
    out: list[int] = field(default_factory=list)
    emitted: int = 0  # characters of text already sent
    logprobs: list[TokenLogprob] = field(default_factory=list)
    first_token_at: float = 0.0
    logprobs_sent: int = 0


class EngineCore:
    """Shared state (set by ``LocalEngine.__init__``) and the model call."""

    model_path: Path
    served_name: str
    device: torch.device
    dtype: torch.dtype
    tokenizer: Any
    packed_linears: int
    _base: Any
    _peft: Any  # a PeftModel once the first adapter is loaded
    adapters: dict[str, str]  # name -> path
    _internal: dict[str, str]  # name -> peft adapter name
    _serial: int
    max_batch_size: int
    max_loras: int
    max_waiting: int
    max_model_len: int
    num_layers: int
    eos_ids: set[int]
    metrics: EngineMetrics
    _cache_kwarg: str
    _admission: threading.Lock
    _inbox: queue.Queue[Seq]
    _jobs: queue.Queue[tuple[Callable[[], Any], Future[Any]]]
    _wake: threading.Event
    _stop: threading.Event
    _active: list[Seq]
    _cache: Cache | None
    _mask: torch.Tensor | None  # [batch, columns] 1 = real token
    fast_scoring: bool
    _prefixes: dict[str, Prefix]  # peft adapter name -> its last scored prompt
    _merged: dict[str, list[tuple[torch.nn.Linear, torch.Tensor]]]
    _tuner_layers: list[Any] | None  # peft's LoRA layers, listed once per adapter change
    _unmergeable: set[str]
    prefix_caching: bool
    _prompt_kv: dict[str, PromptKV]  # peft adapter name -> its last generated prompt
    _lean: LeanDecoder | None  # the CPU fast path's decode step, when the model allows it
    _lean_stale: bool  # peft changed the model's modules since ``_lean`` was built

    def _forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache: Cache,
        adapters: list[str],
        last_only: bool | torch.Tensor,
        quick_base: bool = False,
    ) -> torch.Tensor:
        """Logits of every position, of the last (``last_only=True``) or of the positions a
        1-D index tensor names (the vocabulary projection is skipped elsewhere).

        ``quick_base`` (label scoring) runs an all-base batch with the LoRA layers switched off
        by their flag alone: peft's ``disable_adapter()`` also collects every layer's status
        (printing each module), about an eighth of a scoring pass.
        """
        kwargs: dict[str, Any] = {
            "input_ids": input_ids.to(self.device),
            "attention_mask": attention_mask.to(self.device),
            "position_ids": position_ids.to(self.device),
            self._cache_kwarg: cache,
            "use_cache": True,
        }
        if isinstance(last_only, torch.Tensor):
            kwargs["logits_to_keep"] = last_only
        elif last_only:
            kwargs["logits_to_keep"] = 1
        with torch.inference_mode():
            if self._peft is not None and any(a != BASE for a in adapters):
                out = self._peft(**kwargs, adapter_names=adapters)
            elif self._peft is not None and quick_base:
                with self._lora_off():
                    out = self._base(**kwargs)
            elif self._peft is not None:
                with self._peft.disable_adapter():
                    out = self._peft(**kwargs)
            else:
                out = self._base(**kwargs)
        logits: torch.Tensor = out.logits
        return logits.float()

    @contextlib.contextmanager
    def _lora_off(self) -> Iterator[None]:
        """peft's LoRA layers call only their base layer while this lasts (the same flag as
        ``disable_adapter()`` sets; the adapters' weights are frozen already). The layers are
        listed once per adapter load or unload, not per step (a walk of every module)."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        if self._tuner_layers is None:
            self._tuner_layers = [m for m in self._base.modules() if isinstance(m, BaseTunerLayer)]
        layers = self._tuner_layers
        before = [layer._disable_adapters for layer in layers]
        try:
            for layer in layers:
                layer._disable_adapters = True
            yield
        finally:
            for layer, flag in zip(layers, before, strict=True):
                layer._disable_adapters = flag

    def piece(self, token: int) -> str:
        """The text of one token."""
        return str(self.tokenizer.decode([token]))

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else min(self.eos_ids))
