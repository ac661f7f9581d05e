"""Continuous batching: admission, decode steps, sampling and streaming of generations.

Between decode steps the scheduler admits newly arrived requests (their prompts are prefilled
together, then their KV caches are merged into the running batch) and then runs ONE batched
forward pass for every active sequence, whatever adapter each one uses (peft's mixed-adapter
batches group rows by adapter inside each LoRA layer; a batch of one adapter runs it as merged
weights instead). Finished sequences leave at once.
"""

from __future__ import annotations

import logging
import queue
import time

import torch

from serving.engine.core import Seq
from serving.engine.cpu_pack import threads_for_rows
from serving.engine.kv_cache import (
    Cache,
    PromptKV,
    left_pad,
    new_cache,
    reused_cache,
    row_kv,
    shared_length,
    slots,
)
from serving.engine.lean_decode import LeanDecoder
from serving.engine.loras import LoraSlots
from serving.inference_types import (
    BASE,
    EngineError,
    FinishReason,
    GenerationEvent,
    GenerationResult,
    TokenLogprob,
)

log = logging.getLogger("serving.engine")

MIN_REUSE = 16  # shorter shared prefixes are recomputed: not worth a cache copy


class Batching(LoraSlots):
    """The scheduler thread's loop and everything a generation goes through."""

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self._active and self._inbox.empty() and self._jobs.empty():
                self._wake.wait(timeout=0.5)
                self._wake.clear()
                continue
            try:
                self._run_jobs()
                self._admit()
                if self._active:
                    self._decode()
            except Exception as exc:  # never let the thread die: fail the batch instead
                log.exception("engine step failed")
                for seq in self._active:
                    seq.handle._put(GenerationEvent(error=EngineError(f"generation failed: {exc}")))
                self._active, self._cache, self._mask = [], None, None
        stopped = EngineError("the engine stopped")
        for seq in self._active:
            seq.handle._put(GenerationEvent(error=stopped))
        self._active, self._cache, self._mask = [], None, None
        while not self._inbox.empty():
            self._inbox.get_nowait().handle._put(GenerationEvent(error=stopped))
        while not self._jobs.empty():
            _, future = self._jobs.get_nowait()
            if future.set_running_or_notify_cancel():
                future.set_exception(stopped)

    def _run_jobs(self) -> None:
        while True:
            try:
                job, future = self._jobs.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(job())
            except BaseException as exc:
                future.set_exception(exc)

    def _admit(self) -> None:
        """Prefill newly arrived requests together and merge them into the running batch."""
        room = self.max_batch_size - len(self._active)
        new: list[Seq] = []
        while room > 0:
            try:
                seq = self._inbox.get_nowait()
            except queue.Empty:
                break
            if seq.handle.cancelled:
                continue
            if seq.adapter != BASE and seq.adapter not in self._internal.values():
                error = EngineError("the adapter was unloaded before the request started")
                seq.handle._put(GenerationEvent(error=error))
                continue
            new.append(seq)
            room -= 1
        if not new:
            return
        if self.prefix_caching:
            self._prefill_shared_starts(new)
        reuse = [self._reusable(seq) for seq in new]
        fresh = [seq.prompt[n:] for seq, (n, _) in zip(new, reuse, strict=True)]
        width = max(len(f) for f in fresh)
        ids = torch.full((len(new), width), self._pad_id(), dtype=torch.long)
        mask = torch.zeros((len(new), width), dtype=torch.long)
        for row, tokens in enumerate(fresh):
            ids[row, width - len(tokens) :] = torch.tensor(tokens)
            mask[row, width - len(tokens) :] = 1
        offsets = torch.tensor([[n] for n, _ in reuse], dtype=torch.long)
        positions = (mask.cumsum(-1) - 1).clamp(min=0) + offsets
        if any(n for n, _ in reuse):
            cache, reused_mask = reused_cache(self.num_layers, reuse, spare=width + 64)
            mask = torch.cat([reused_mask, mask], dim=1)
            reused = sum(n for n, _ in reuse)
            self.metrics.prefix_tokens_reused += reused
            self.metrics.prefix_hits.inc(reused)
        else:
            cache = new_cache(self.num_layers)
        logits = self._step_forward(ids, mask, positions, cache, [s.adapter for s in new])
        if self.prefix_caching:
            self._remember_prompts(new, cache, mask)
        self._merge(cache, mask)
        self._active.extend(new)
        start = len(self._active) - len(new)
        self._sample_and_emit(logits[:, -1, :], range(start, len(self._active)))

    def _reusable(self, seq: Seq) -> tuple[int, PromptKV | None]:
        """How many of ``seq``'s prompt tokens a remembered prompt of its adapter has computed
        (never the last one: its logits start the generation), if enough to be worth it."""
        if not self.prefix_caching:
            return 0, None
        cached = self._prompt_kv.get(seq.adapter)
        if cached is None:
            return 0, None
        n = min(shared_length(cached.ids, seq.prompt), len(seq.prompt) - 1)
        return (n, cached) if n >= MIN_REUSE else (0, None)

    def _prefill_shared_starts(self, new: list[Seq]) -> None:
        """Prompts of one adapter admitted together that share a start (a dataset's system
        prompt) no remembered prompt covers: compute that start once, as one row, and remember
        it, so every row of the batch's prefill reuses it instead of computing it again."""
        groups: dict[str, list[list[int]]] = {}
        for seq in new:
            groups.setdefault(seq.adapter, []).append(seq.prompt)
        for adapter, prompts in groups.items():
            if len(prompts) < 2:
                continue
            first = prompts[0]
            common = min(min(shared_length(first, p) for p in prompts[1:]),
                         min(len(p) for p in prompts) - 1)  # fmt: skip
            cached = self._prompt_kv.get(adapter)
            if common < MIN_REUSE or (cached and shared_length(cached.ids, first) >= common):
                continue
            ids = torch.tensor([first[:common]], dtype=torch.long)
            cache = new_cache(self.num_layers)
            positions = torch.arange(common).unsqueeze(0)
            self._step_forward(ids, torch.ones_like(ids), positions, cache, [adapter])
            columns = torch.arange(common, device=self.device)
            self._prompt_kv[adapter] = PromptKV(first[:common], row_kv(cache, 0, columns))

    def _remember_prompts(self, new: list[Seq], cache: Cache, mask: torch.Tensor) -> None:
        """Keep the KV cache of the last admitted prompt of each adapter in this batch."""
        last: dict[str, int] = {}
        for row, seq in enumerate(new):
            last[seq.adapter] = row
        for adapter, row in last.items():
            columns = mask[row].nonzero().flatten().to(self.device)
            self._prompt_kv[adapter] = PromptKV(list(new[row].prompt), row_kv(cache, row, columns))

    def _merge(self, cache: Cache, mask: torch.Tensor) -> None:
        mask = mask.to(self.device)
        if self._cache is None or self._mask is None:
            self._cache, self._mask = cache, mask
            return
        width = max(self._mask.shape[1], mask.shape[1])
        for old, add in zip(slots(self._cache), slots(cache), strict=True):
            (ok, ov), (ak, av) = old.kv(), add.kv()
            keys = torch.cat([left_pad(ok, width), left_pad(ak, width)], dim=0)
            values = torch.cat([left_pad(ov, width), left_pad(av, width)], dim=0)
            old.set(keys, values)
        pad_old = self._mask.new_zeros((self._mask.shape[0], width - self._mask.shape[1]))
        pad_new = mask.new_zeros((mask.shape[0], width - mask.shape[1]))
        self._mask = torch.cat(
            [torch.cat([pad_old, self._mask], 1), torch.cat([pad_new, mask], 1)], 0
        )

    def _decode(self) -> None:
        assert self._cache is not None
        assert self._mask is not None
        batch = len(self._active)
        self.metrics.current_batch = batch
        self.metrics.batch_size.set(batch)
        self.metrics.batch_hist.observe(batch)
        if batch > self.metrics.max_batch_seen:
            self.metrics.max_batch_seen = batch
            self.metrics.batch_size_max.set(batch)
        last = torch.tensor([[s.out[-1]] for s in self._active], dtype=torch.long)
        self._mask = torch.cat([self._mask, self._mask.new_ones((batch, 1))], dim=1)
        positions = (self._mask.sum(-1, keepdim=True) - 1).cpu()
        adapters = [s.adapter for s in self._active]
        with threads_for_rows(batch, self.packed_linears > 0):
            logits = self._step_forward(last, self._mask, positions, self._cache, adapters)
        self._sample_and_emit(logits[:, -1, :], range(batch))

    def _step_forward(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Cache,
        adapters: list[str],
    ) -> torch.Tensor:
        """A prefill or decode step's forward pass, last logits only. A batch whose rows all
        use one adapter runs it as merged weights (``_merged_adapter``: no per-row LoRA work);
        a batch of several adapters takes peft's per-row path. A decode step of rows that all
        run as the base model takes the lean step when the CPU fast path has one."""
        first = adapters[0]
        if first != BASE and all(a == first for a in adapters):
            with self._merged_adapter(first) as run_as:
                return self._run_step(ids, mask, positions, cache, [run_as] * len(adapters))
        return self._run_step(ids, mask, positions, cache, adapters)

    def _run_step(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Cache,
        adapters: list[str],
    ) -> torch.Tensor:
        if self._lean_stale:
            self._lean = LeanDecoder.build(self._base)
            self._lean_stale = False
        if self._lean is not None and ids.shape[1] == 1 and all(a == BASE for a in adapters):
            with torch.inference_mode():
                return self._lean.step(ids, mask, positions, cache)
        return self._forward(ids, mask, positions, cache, adapters, True, quick_base=True)

    def _sample_and_emit(self, logits: torch.Tensor, rows: range) -> None:
        """Pick one token per row, stream it, and drop the sequences that finished."""
        wanted = any(self._active[r].params.logprobs for r in rows)
        logprobs = torch.log_softmax(logits, dim=-1) if wanted else logits
        done: list[int] = []
        for offset, row in enumerate(rows):
            seq = self._active[row]
            token = self._sample(logits[offset], seq)
            seq.out.append(token)
            if len(seq.out) == 1:
                seq.first_token_at = time.monotonic()
            self.metrics.tokens.inc()
            if seq.params.logprobs:
                seq.logprobs.append(self._token_logprob(logprobs[offset], token, seq))
            if self._advance(seq, token):
                done.append(row)
        if done:
            keep = [i for i in range(len(self._active)) if i not in set(done)]
            self._active = [self._active[i] for i in keep]
            self._shrink(keep)

    def _sample(self, logits: torch.Tensor, seq: Seq) -> int:
        params = seq.params
        if params.temperature <= 0:
            return int(torch.argmax(logits).item())
        probs = torch.softmax(logits / params.temperature, dim=-1)
        if params.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            cumulative = sorted_probs.cumsum(-1)
            cut = cumulative - sorted_probs > params.top_p
            sorted_probs[cut] = 0.0
            choice = torch.multinomial(sorted_probs, 1, generator=seq.generator)
            return int(order[choice].item())
        return int(torch.multinomial(probs, 1, generator=seq.generator).item())

    def _token_logprob(self, logprobs: torch.Tensor, token: int, seq: Seq) -> TokenLogprob:
        top: tuple[tuple[str, int, float], ...] = ()
        if seq.params.top_logprobs:
            values, ids = torch.topk(logprobs, seq.params.top_logprobs)
            top = tuple(
                (self.piece(int(i)), int(i), float(v))
                for v, i in zip(values.tolist(), ids.tolist(), strict=True)
            )
        return TokenLogprob(self.piece(token), token, float(logprobs[token]), top)

    def _advance(self, seq: Seq, token: int) -> bool:
        """Stream the new text; return True when the sequence is finished."""
        params = seq.params
        finish: FinishReason | None = None
        ids = seq.out
        if token in self.eos_ids and not params.ignore_eos:
            ids = seq.out[:-1]
            finish = "stop"
        text = str(self.tokenizer.decode(ids, skip_special_tokens=True))
        for stop in params.stop:
            at = text.find(stop)
            if stop and at >= 0:
                text, finish = text[:at], "stop"
        if finish is None and (
            len(seq.out) >= params.max_tokens
            or len(seq.prompt) + len(seq.out) >= self.max_model_len
        ):
            finish = "length"
        if seq.handle.cancelled:
            finish = finish or "stop"
        if finish is None:
            # hold back what could still become a stop string, and half a UTF-8 character
            hold = max((len(s) - 1 for s in params.stop), default=0)
            ready = text[: len(text) - hold] if hold else text
            ready = ready.rstrip("\ufffd")
            delta = ready[seq.emitted :]
        else:
            delta = text[seq.emitted :]
        pending_lp = seq.logprobs[seq.logprobs_sent :]
        seq.logprobs_sent = len(seq.logprobs)
        seq.emitted += len(delta)
        if finish is None:
            if delta or pending_lp:
                seq.handle._put(GenerationEvent(delta, list(pending_lp)))
            else:
                seq.logprobs_sent -= len(pending_lp)
            return False
        result = GenerationResult(
            text=text,
            finish_reason=finish,
            prompt_tokens=len(seq.prompt),
            completion_tokens=len(seq.out),
            logprobs=seq.logprobs if params.logprobs else None,
        )
        seq.handle._put(GenerationEvent(delta, list(pending_lp), result))
        return True

    def _shrink(self, keep: list[int]) -> None:
        """Drop finished rows from the cache and the all-padding columns on the left."""
        if not keep:
            self._cache, self._mask = None, None
            return
        assert self._cache is not None
        assert self._mask is not None
        index = torch.tensor(keep, device=self._mask.device)
        mask = self._mask.index_select(0, index)
        used = mask.any(dim=0).nonzero()
        start = int(used[0].item()) if len(used) else 0
        self._mask = mask[:, start:]
        for layer in slots(self._cache):
            keys, values = layer.kv()
            layer.set(
                keys.index_select(0, index)[:, :, start:],
                values.index_select(0, index)[:, :, start:],
            )
