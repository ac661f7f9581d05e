"""LoRA adapters in the engine: loading into peft, unloading, and merged weights for scoring and
for generation batches of one adapter."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from serving.engine.core import EngineCore
from serving.engine.cpu_pack import packed_weight
from serving.inference_types import BASE, AdapterError


class LoraSlots(EngineCore):
    """Adapter bookkeeping on the scheduler thread (the public calls are ``LocalEngine``'s)."""

    @contextlib.contextmanager
    def _merged_adapter(self, adapter: str) -> Iterator[str]:
        """Run ``adapter`` as the base model with its LoRA merged into the packed weights.

        peft's per-request LoRA path (``adapter_names``) copies each projection's input and output
        rows by index and adds two small products per projection, a fifth of a scoring pass or a
        decode step on the CPU; a merged weight costs nothing extra. Used only when it is exact:
        vanilla LoRA on packed ``nn.Linear`` layers (no DoRA or other variant, no LoRA bias, not
        merged by peft); otherwise yields ``adapter`` for peft's path. The two most recently used
        adapters keep their merged weights (SmolLM2-135M: ~100 MB each); unloading an adapter
        drops them.
        """
        entries = self._merged.get(adapter)
        if entries is None and adapter not in self._unmergeable and adapter != BASE:
            built = self._merge_weights(adapter) if self.packed_linears else None
            if built is None:
                self._unmergeable.add(adapter)
            else:
                for stale in list(self._merged)[: max(0, len(self._merged) - 1)]:
                    del self._merged[stale]
                entries = self._merged[adapter] = built
        if entries is None:
            yield adapter
            return
        self._merged[adapter] = self._merged.pop(adapter)  # most recently used last
        originals = [(linear, linear._brandbot_packed) for linear, _ in entries]
        try:
            for linear, merged in entries:
                linear._brandbot_packed = merged
            yield BASE
        finally:
            for linear, packed in originals:
                linear._brandbot_packed = packed

    def _merge_weights(self, adapter: str) -> list[tuple[torch.nn.Linear, torch.Tensor]] | None:
        from peft.tuners.lora import Linear as LoraLinear
        from peft.tuners.lora import LoraLayer

        entries: list[tuple[torch.nn.Linear, torch.Tensor]] = []
        with torch.inference_mode():
            for module in self._peft.modules():
                if not isinstance(module, LoraLayer) or adapter not in module.lora_A:
                    continue
                lora: Any = module
                base = lora.get_base_layer()
                if (
                    type(lora) is not LoraLinear
                    or type(base) is not torch.nn.Linear
                    or not hasattr(base, "_brandbot_packed")
                    or adapter in lora.lora_variant
                    or getattr(lora, "lora_bias", {}).get(adapter, False)
                    or lora.merged
                ):
                    return None
                weight = base.weight.detach() + lora.get_delta_weight(adapter)
                entries.append((base, packed_weight(weight)))
        return entries

    def _load_adapter(self, name: str, folder: Path) -> None:
        if len(self.adapters) >= self.max_loras:
            raise AdapterError(
                f"{self.max_loras} adapters are already loaded (the maximum); unload one first"
            )
        # peft names are internal and never reused, so a name can be unloaded and loaded again
        self._serial += 1
        internal = f"lora{self._serial}"
        self._tuner_layers = None  # peft adds LoRA layers (even if the load then fails)
        self._lean_stale = self.packed_linears > 0
        try:
            if self._peft is None:
                from peft import PeftModel

                self._peft = PeftModel.from_pretrained(
                    self._base, str(folder), adapter_name=internal, is_trainable=False
                )
                self._peft.eval()
            else:
                self._peft.load_adapter(str(folder), adapter_name=internal, is_trainable=False)
        except Exception as exc:
            raise AdapterError(f"cannot load the adapter {name!r} from {folder}: {exc}") from exc
        self.adapters[name] = str(folder)
        self._internal[name] = internal
        for stale in [a for a in self._peft.peft_config if a not in self._internal.values()]:
            with contextlib.suppress(Exception), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._peft.delete_adapter(stale)

    def _unload_adapter(self, name: str) -> None:
        internal = self._internal.pop(name)
        self.adapters.pop(name)
        self._tuner_layers = None
        self._lean_stale = self.packed_linears > 0
        self._prefixes.pop(internal, None)
        self._prompt_kv.pop(internal, None)
        self._merged.pop(internal, None)
        self._unmergeable.discard(internal)
        for seq in self._active:
            if seq.adapter == internal:  # running sequences finish on the base, not crash
                seq.adapter = BASE
        # peft cannot delete its last adapter: that one stays, unused, until the next load
        if self._internal:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "adapter X was active, now Y": intended
                self._peft.delete_adapter(internal)
