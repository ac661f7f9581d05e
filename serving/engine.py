"""The local inference engine: transformers + peft, with continuous batching.

One scheduler thread owns the model. Requests (generation, label scoring, adapter changes) are
queued to it; between decode steps it admits newly arrived generation requests (their prompts
are prefilled together, then their KV caches are merged into the running batch) and then runs
ONE batched forward pass for every active sequence, whatever adapter each one uses (peft's
mixed-adapter batches group rows by adapter inside each LoRA layer). Finished sequences leave
the batch at once. There is no global request lock: a request never waits for another to end.

Why not transformers' own continuous batching (``transformers.generation.continuous_batching``)?
It packs every request into a single row over a paged cache, so peft's per-row ``adapter_names``
cannot address requests of different adapters, and it targets CUDA paged-attention kernels.

The KV cache is one left-padded tensor pair per layer with spare capacity (``_SlotLayer``), so a
decode step writes one column in place instead of re-concatenating the whole cache.
"""

from __future__ import annotations

import atexit
import contextlib
import inspect
import logging
import math
import os
import queue
import threading
import time
import types
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from transformers import cache_utils

from serving.tokens import answer_tokens, as_ids

log = logging.getLogger(__name__)

BASE = "__base__"  # peft's name for "no adapter" in a mixed batch
FinishReason = Literal["stop", "length"]
T = TypeVar("T")


class EngineError(Exception):
    """A request the engine cannot serve; the message is meant for the caller."""


class UnknownModel(EngineError):
    """The requested model/adapter name is not loaded; ``known`` lists the names that are."""

    def __init__(self, name: str, known: Sequence[str]) -> None:
        super().__init__(f"the model {name!r} does not exist; known models: {', '.join(known)}")
        self.name = name
        self.known = list(known)


class PromptTooLong(EngineError):
    """The prompt (plus at least one new token) does not fit the model's context."""

    def __init__(self, tokens: int, limit: int) -> None:
        super().__init__(
            f"the prompt has {tokens} tokens; this model's maximum context length is {limit} "
            "tokens (prompt plus at least one generated token)"
        )
        self.tokens = tokens
        self.limit = limit


class EngineBusy(EngineError):
    """``max_waiting`` generations already wait for a place in the batch; try again later."""

    def __init__(self, waiting: int) -> None:
        super().__init__(f"the server is busy ({waiting} requests waiting); try again in a minute")
        self.waiting = waiting


class AdapterError(EngineError):
    """An adapter cannot be loaded or unloaded (name taken, unknown, unreadable)."""


# --- requests and results -------------------------------------------------------------------


@dataclass(frozen=True)
class SamplingParams:
    """How to generate. ``temperature == 0`` is greedy; ``top_logprobs`` needs ``logprobs``."""

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    seed: int | None = None
    ignore_eos: bool = False  # as vLLM's: keep going past end-of-turn (benchmarks)


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token with its log-probability (raw model distribution) and alternatives."""

    token: str
    token_id: int
    logprob: float
    top: tuple[tuple[str, int, float], ...] = ()


@dataclass
class GenerationResult:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[TokenLogprob] | None = None


@dataclass
class Event:
    delta: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    result: GenerationResult | None = None
    error: BaseException | None = None


class GenerationHandle:
    """A running generation: iterate :meth:`deltas` to stream, or call :meth:`result`."""

    def __init__(self, sink: Callable[[Event], None] | None = None) -> None:
        self._queue: queue.Queue[Event] = queue.Queue()
        self._sink = sink
        self._result: GenerationResult | None = None
        self.cancelled = False

    def _put(self, event: Event) -> None:
        """Called on the engine thread; ``sink`` (e.g. an asyncio bridge) replaces the queue."""
        if self._sink is not None:
            self._sink(event)
        else:
            self._queue.put(event)

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Every event up to and including the final one (whose ``result`` is set)."""
        while True:
            event = self._queue.get(timeout=timeout)
            if event.error is not None:
                raise event.error
            yield event
            if event.result is not None:
                self._result = event.result
                return

    def deltas(self, timeout: float | None = None) -> Iterator[str]:
        for event in self.events(timeout):
            if event.delta:
                yield event.delta

    def result(self, timeout: float | None = None) -> GenerationResult:
        if self._result is None:
            for _ in self.events(timeout):
                pass
        assert self._result is not None
        return self._result

    def cancel(self) -> None:
        """Stop generating (a client went away); the sequence leaves the batch at the next step."""
        self.cancelled = True


# --- KV cache -------------------------------------------------------------------------------


_DynamicLayer: Any = cache_utils.DynamicLayer
Cache: Any = cache_utils.Cache


class _SlotLayer(_DynamicLayer):  # type: ignore[misc]
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


def _new_cache(layers: int) -> Cache:
    return Cache(layers=[_SlotLayer() for _ in range(layers)])


def _slots(cache: Cache) -> list[_SlotLayer]:
    return [layer for layer in cache.layers if isinstance(layer, _SlotLayer)]


def _left_pad(t: torch.Tensor, length: int) -> torch.Tensor:
    """Pad a ``[b, h, n, d]`` tensor on the left of the sequence axis to ``length``."""
    n = t.shape[2]
    if n == length:
        return t
    pad = t.new_zeros((t.shape[0], t.shape[1], length - n, t.shape[3]))
    return torch.cat([pad, t], dim=2)


# --- the engine -----------------------------------------------------------------------------


@dataclass
class _Seq:
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


@dataclass
class EngineMetrics:
    """Prometheus metrics plus plain counters the tests and ``/metrics`` read."""

    registry: CollectorRegistry
    batch_size: Gauge
    batch_size_max: Gauge
    batch_hist: Histogram
    tokens: Counter
    requests: Counter
    max_batch_seen: int = 0
    current_batch: int = 0

    def reset_peak(self) -> None:
        """Start a new measurement of the largest batch (benchmarks, tests)."""
        self.max_batch_seen = 0
        self.batch_size_max.set(0)


def _make_metrics(registry: CollectorRegistry | None) -> EngineMetrics:
    reg = registry or CollectorRegistry()
    return EngineMetrics(
        registry=reg,
        batch_size=Gauge(
            "brandbot_engine_batch_size", "Sequences in the current step", registry=reg
        ),
        batch_size_max=Gauge(
            "brandbot_engine_batch_size_max", "Largest batch seen since start", registry=reg
        ),
        batch_hist=Histogram(
            "brandbot_engine_step_batch_size",
            "Sequences per decode step",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=reg,
        ),
        tokens=Counter("brandbot_engine_generated_tokens", "Tokens generated", registry=reg),
        requests=Counter("brandbot_engine_requests", "Requests served", ["kind"], registry=reg),
    )


def pick_device(device: str | None = None) -> tuple[torch.device, torch.dtype]:
    """CUDA with bf16 when available (fp16 on GPUs without bf16), else CPU with fp32."""
    if device:
        dev = torch.device(device)
    else:
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = torch.float32
    return dev, dtype


_live_engines: weakref.WeakSet[LocalEngine] = weakref.WeakSet()


@atexit.register
def _close_live_engines() -> None:
    """The safety net of ``LocalEngine.close``: atexit runs before daemon threads are killed."""
    for engine in list(_live_engines):
        engine.close()


class LocalEngine:
    """transformers + peft behind a continuous-batching scheduler thread.

    ``served_name`` is the base model's name in requests; adapters are addressed by their names.
    All model work happens on the scheduler thread; public methods are thread-safe and block only
    their caller.
    """

    def __init__(
        self,
        model_path: Path,
        *,
        served_name: str,
        device: str | None = None,
        threads: int | None = None,
        max_batch_size: int = 32,
        max_loras: int = 8,
        max_model_len: int | None = None,
        max_waiting: int = 256,
        registry: CollectorRegistry | None = None,
        pack_weights: bool = True,
        fast_scoring: bool = True,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        # serving never downloads: make peft/transformers look-ups of names fail fast, offline
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        if threads:
            torch.set_num_threads(threads)
        self.model_path = Path(model_path)
        self.served_name = served_name
        self.device, self.dtype = pick_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_path))
        model: Any = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=self.dtype)
        model.to(self.device)
        model.eval()
        self.packed_linears = 0
        if pack_weights and self.device.type == "cpu" and self.dtype == torch.float32:
            self.packed_linears = _pack_linears(model)
        self._base = model
        self._peft: Any = None  # a PeftModel once the first adapter is loaded
        self.adapters: dict[str, str] = {}  # name -> path
        self._internal: dict[str, str] = {}  # name -> peft adapter name
        self._serial = 0
        self.max_batch_size = max_batch_size
        self.max_loras = max_loras
        self.max_waiting = max_waiting
        self._admission = threading.Lock()
        limit = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
        self.max_model_len = min(max_model_len or limit, limit)
        self.num_layers = int(model.config.num_hidden_layers)
        # transformers 5.x renamed ``past_key_values`` to ``cache``; support both
        params = inspect.signature(model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        eos = model.generation_config.eos_token_id if model.generation_config else None
        ids = {self.tokenizer.eos_token_id}
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, list):
            ids.update(int(e) for e in eos)
        self.eos_ids = {i for i in ids if i is not None}
        self.metrics = _make_metrics(registry)
        self._inbox: queue.Queue[_Seq] = queue.Queue()
        self._jobs: queue.Queue[tuple[Callable[[], Any], Future[Any]]] = queue.Queue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._active: list[_Seq] = []
        self._cache: Cache | None = None
        self._mask: torch.Tensor | None = None  # [batch, columns] 1 = real token
        self.fast_scoring = fast_scoring
        self._prefixes: dict[str, _Prefix] = {}  # peft adapter name -> its last scored prompt
        self._merged: dict[str, list[tuple[torch.nn.Linear, torch.Tensor]]] = {}
        self._unmergeable: set[str] = set()
        self._thread = threading.Thread(target=self._loop, name="brandbot-engine", daemon=True)
        self._thread.start()
        _live_engines.add(self)

    # --- public API -------------------------------------------------------------------------

    @property
    def model_names(self) -> list[str]:
        return [self.served_name, *self.adapters]

    def check_model(self, name: str | None) -> str:
        """The peft adapter name for a request's ``model`` (``BASE`` for the base model)."""
        if name is None or name == self.served_name:
            return BASE
        if name in self._internal:
            return self._internal[name]
        raise UnknownModel(name, self.model_names)

    def chat_prompt(self, messages: Sequence[dict[str, Any]]) -> list[int]:
        """Token ids of ``messages`` through the chat template, ending with the assistant cue."""
        return self.render(messages, add_generation_prompt=True)

    def render(
        self, messages: Sequence[dict[str, Any]], *, add_generation_prompt: bool
    ) -> list[int]:
        """Token ids of ``messages`` through the tokenizer's chat template."""
        ids = self.tokenizer.apply_chat_template(
            list(messages),
            add_generation_prompt=add_generation_prompt,
            tokenize=True,
            return_dict=False,
        )
        return as_ids(ids)

    def label_continuations(
        self, messages: Sequence[dict[str, Any]], labels: Sequence[str]
    ) -> tuple[list[int], list[list[int]]]:
        """The prompt ids and, per label, the tokens of the assistant turn that answers it:
        the label's tokens and the end-of-turn token (:func:`serving.tokens.answer_tokens`).
        The HTTP client builds the same sequences through ``/tokenize``, which is why vLLM
        gives the same numbers.
        """
        prompt = self.chat_prompt(messages)
        closing = self.render(
            [*messages, {"role": "assistant", "content": ""}], add_generation_prompt=False
        )[len(prompt) :]
        out = []
        for label in labels:
            full = self.render(
                [*messages, {"role": "assistant", "content": label}], add_generation_prompt=False
            )
            try:
                out.append(answer_tokens(prompt, full, closing))
            except ValueError as exc:
                raise EngineError(str(exc)) from None
        return prompt, out

    def generate(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        model: str | None = None,
        sink: Callable[[Event], None] | None = None,
    ) -> GenerationHandle:
        """Queue a generation; returns at once. Raises UnknownModel, PromptTooLong, or
        EngineBusy when ``max_waiting`` generations already wait to join the batch (the
        queue is bounded; scoring is bounded by its callers' threads, as it blocks them).

        Events (text deltas, then the result, or an error) go to the handle's queue, or to
        ``sink`` when given; ``sink`` runs on the engine thread and must not block.
        """
        adapter = self.check_model(model)
        if self._stop.is_set():
            raise EngineError("the engine stopped")
        if len(prompt_ids) + 1 > self.max_model_len:
            raise PromptTooLong(len(prompt_ids), self.max_model_len)
        if params.max_tokens < 1:
            raise EngineError("max_tokens must be at least 1")
        gen = None
        if params.seed is not None:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(params.seed)
        handle = GenerationHandle(sink)
        with self._admission:
            waiting = self._inbox.qsize()
            if waiting >= self.max_waiting:
                raise EngineBusy(waiting)
            self._inbox.put(_Seq(handle, list(prompt_ids), adapter, params, gen))
        self.metrics.requests.labels("generate").inc()
        self._wake.set()
        return handle

    def chat(
        self,
        messages: Sequence[dict[str, Any]],
        params: SamplingParams,
        model: str | None = None,
    ) -> GenerationHandle:
        return self.generate(self.chat_prompt(messages), params, model)

    def score_labels(
        self,
        messages: Sequence[dict[str, Any]],
        labels: Sequence[str],
        model: str | None = None,
    ) -> list[float]:
        """Summed log-probability of each label's continuation (prompt computed once)."""
        prompt, conts = self.label_continuations(messages, labels)
        return self.score_continuations(prompt, conts, model)

    def score_continuations(
        self, prefix: list[int], continuations: list[list[int]], model: str | None = None
    ) -> list[float]:
        """Summed log-probability of each continuation after ``prefix``.

        With ``fast_scoring`` (the default) this is one forward pass of only the tokens that
        matter (see ``_score_sums``); without it, the general ``prompt_logprobs`` path, which the
        tests compare it with.
        """
        if not self.fast_scoring:
            scored = self.prompt_logprobs(prefix, continuations, model)
            return [sum(t.logprob for t in row) for row in scored.rows]
        adapter = self.check_model(model)
        longest = len(prefix) + max((len(c) for c in continuations), default=0)
        if longest > self.max_model_len:
            raise PromptTooLong(longest, self.max_model_len)
        if not prefix:
            raise EngineError("the prompt must not be empty")
        self.metrics.requests.labels("score").inc()
        return self.run(lambda: self._score_sums(prefix, continuations, adapter))

    def prompt_logprobs(
        self,
        prefix: list[int],
        continuations: list[list[int]],
        model: str | None = None,
        top: int = 0,
        with_prefix: bool = False,
    ) -> PromptScores:
        """Log-probability of every continuation token given all before it (and, with
        ``with_prefix``, of every prefix token after the first), plus each sequence's greedy
        next token. The shared prefix is run once; its KV cache serves every continuation.
        """
        adapter = self.check_model(model)
        longest = len(prefix) + max((len(c) for c in continuations), default=0)
        if longest > self.max_model_len:
            raise PromptTooLong(longest, self.max_model_len)
        if not prefix:
            raise EngineError("the prompt must not be empty")
        self.metrics.requests.labels("score").inc()
        return self.run(
            lambda: self._prompt_logprobs(prefix, continuations, adapter, top, with_prefix)
        )

    def load_adapter(self, name: str, path: str | Path) -> None:
        if name == self.served_name or name == BASE:
            raise AdapterError(f"the adapter name {name!r} is the base model's name")
        if name in self.adapters:
            raise AdapterError(f"the adapter {name!r} is already loaded")
        folder = Path(path)
        if not (folder / "adapter_config.json").is_file():
            raise AdapterError(f"no adapter_config.json in {folder}")
        self.run(lambda: self._load_adapter(name, folder))

    def unload_adapter(self, name: str) -> None:
        if name not in self.adapters:
            raise AdapterError(
                f"the adapter {name!r} is not loaded; loaded: {', '.join(self.adapters) or 'none'}"
            )
        self.run(lambda: self._unload_adapter(name))

    def run(self, job: Callable[[], T]) -> T:
        """Run ``job`` on the scheduler thread between two steps and return its result."""
        if self._stop.is_set():
            raise EngineError("the engine stopped")
        future: Future[T] = Future()
        self._jobs.put((job, future))
        self._wake.set()
        return future.result()

    def close(self, timeout: float = 30.0) -> None:
        """Stop the scheduler thread and wait for it (idempotent).

        Call this before the process ends (or use the engine as a context manager): a scheduler
        thread still alive at interpreter shutdown is killed inside torch's C++ code, which
        aborts the process (``terminate called without an active exception``, exit 134). An
        atexit hook closes engines nobody closed, as a safety net. Requests still queued or
        running fail with EngineError("the engine stopped").
        """
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        _live_engines.discard(self)

    def __enter__(self) -> LocalEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- scheduler thread -------------------------------------------------------------------

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
                    seq.handle._put(Event(error=EngineError(f"generation failed: {exc}")))
                self._active, self._cache, self._mask = [], None, None
        stopped = EngineError("the engine stopped")
        for seq in self._active:
            seq.handle._put(Event(error=stopped))
        self._active, self._cache, self._mask = [], None, None
        while not self._inbox.empty():
            self._inbox.get_nowait().handle._put(Event(error=stopped))
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

    def _admit(self) -> None:
        """Prefill newly arrived requests together and merge them into the running batch."""
        room = self.max_batch_size - len(self._active)
        new: list[_Seq] = []
        while room > 0:
            try:
                seq = self._inbox.get_nowait()
            except queue.Empty:
                break
            if seq.handle.cancelled:
                continue
            if seq.adapter != BASE and seq.adapter not in self._internal.values():
                error = EngineError("the adapter was unloaded before the request started")
                seq.handle._put(Event(error=error))
                continue
            new.append(seq)
            room -= 1
        if not new:
            return
        width = max(len(s.prompt) for s in new)
        ids = torch.full((len(new), width), self._pad_id(), dtype=torch.long)
        mask = torch.zeros((len(new), width), dtype=torch.long)
        for row, seq in enumerate(new):
            ids[row, width - len(seq.prompt) :] = torch.tensor(seq.prompt)
            mask[row, width - len(seq.prompt) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = _new_cache(self.num_layers)
        logits = self._forward(ids, mask, positions, cache, [s.adapter for s in new], True)
        self._merge(cache, mask)
        self._active.extend(new)
        start = len(self._active) - len(new)
        self._sample_and_emit(logits[:, -1, :], range(start, len(self._active)))

    def _merge(self, cache: Cache, mask: torch.Tensor) -> None:
        mask = mask.to(self.device)
        if self._cache is None or self._mask is None:
            self._cache, self._mask = cache, mask
            return
        width = max(self._mask.shape[1], mask.shape[1])
        for old, add in zip(_slots(self._cache), _slots(cache), strict=True):
            (ok, ov), (ak, av) = old.kv(), add.kv()
            keys = torch.cat([_left_pad(ok, width), _left_pad(ak, width)], dim=0)
            values = torch.cat([_left_pad(ov, width), _left_pad(av, width)], dim=0)
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
        logits = self._forward(
            last, self._mask, positions, self._cache, [s.adapter for s in self._active], True
        )
        self._sample_and_emit(logits[:, -1, :], range(batch))

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

    def _sample(self, logits: torch.Tensor, seq: _Seq) -> int:
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

    def _token_logprob(self, logprobs: torch.Tensor, token: int, seq: _Seq) -> TokenLogprob:
        top: tuple[tuple[str, int, float], ...] = ()
        if seq.params.top_logprobs:
            values, ids = torch.topk(logprobs, seq.params.top_logprobs)
            top = tuple(
                (self.piece(int(i)), int(i), float(v))
                for v, i in zip(values.tolist(), ids.tolist(), strict=True)
            )
        return TokenLogprob(self.piece(token), token, float(logprobs[token]), top)

    def piece(self, token: int) -> str:
        """The text of one token."""
        return str(self.tokenizer.decode([token]))

    def _advance(self, seq: _Seq, token: int) -> bool:
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
                seq.handle._put(Event(delta, list(pending_lp)))
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
        seq.handle._put(Event(delta, list(pending_lp), result))
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
        for layer in _slots(self._cache):
            keys, values = layer.kv()
            layer.set(
                keys.index_select(0, index)[:, :, start:],
                values.index_select(0, index)[:, :, start:],
            )

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else min(self.eos_ids))

    def _prompt_logprobs(
        self,
        prefix: list[int],
        continuations: list[list[int]],
        adapter: str,
        top: int,
        with_prefix: bool,
    ) -> PromptScores:
        n = len(continuations)
        cache = _new_cache(self.num_layers)
        ids = torch.tensor([prefix], dtype=torch.long)
        mask = torch.ones_like(ids)
        positions = torch.arange(len(prefix)).unsqueeze(0)
        plogits = self._forward(ids, mask, positions, cache, [adapter], not with_prefix)[0]
        first = plogits[-1]
        result = PromptScores()
        if with_prefix:
            lp = torch.log_softmax(plogits[:-1], dim=-1)
            result.prefix = [_score(lp[j], prefix[j + 1], top) for j in range(len(prefix) - 1)]
        width = max((len(c) for c in continuations), default=0)
        if n == 0 or width == 0:
            result.rows = [[] for _ in continuations]
            result.next_token = [int(torch.argmax(first).item())] * n
            return result
        for layer in _slots(cache):
            keys, values = layer.kv()
            layer.set(keys.expand(n, -1, -1, -1), values.expand(n, -1, -1, -1), width)
        ids = torch.full((n, width), self._pad_id(), dtype=torch.long)
        cmask = torch.zeros((n, len(prefix) + width), dtype=torch.long)
        cmask[:, : len(prefix)] = 1
        for row, cont in enumerate(continuations):
            if cont:
                ids[row, : len(cont)] = torch.tensor(cont)
                cmask[row, len(prefix) : len(prefix) + len(cont)] = 1
        positions = torch.arange(len(prefix), len(prefix) + width).unsqueeze(0).expand(n, -1)
        logits = self._forward(ids, cmask, positions, cache, [adapter] * n, False)
        # the logits that predict continuation token j: the prefix's last for j=0, else step j-1
        predict = torch.cat([first.expand(n, 1, -1), logits], dim=1)
        for row, cont in enumerate(continuations):
            lp = torch.log_softmax(predict[row, : len(cont)], dim=-1)
            result.rows.append([_score(lp[j], token, top) for j, token in enumerate(cont)])
            result.next_token.append(int(torch.argmax(predict[row, len(cont)]).item()))
        return result

    def _score_sums(
        self, prefix: list[int], continuations: list[list[int]], adapter: str
    ) -> list[float]:
        """Label scoring in one forward pass over a single row, with nothing computed twice.

        A ticket's scoring is small enough (a few dozen tokens) that the fixed cost of a forward
        pass and the padding of a batch dominate, so the row holds only what is not known yet:
        the part of the prompt not shared with this adapter's previous scored prompt (tickets of
        a dataset share its system prompt; that prompt's KV cache is kept, like vLLM's prefix
        caching), then the continuations as a token tree (labels sharing a first word share its
        tokens; a continuation's last token is never fed, as nothing is predicted from it),
        under a 4-D attention mask that lets every token see the prompt and its own ancestors.
        The vocabulary projection runs only where a log-probability is read. A LoRA adapter
        runs as merged weights (``_merged_adapter``). The results equal ``prompt_logprobs``'
        up to float rounding (tests/serving/test_engine.py checks 1e-4).
        """
        if not continuations:
            return []
        nodes: dict[tuple[int, ...], int] = {}  # a continuation prefix -> its position in the row
        parents: list[int] = []
        tokens: list[int] = []
        for cont in continuations:
            for depth in range(1, len(cont)):
                path = tuple(cont[:depth])
                if path not in nodes:
                    nodes[path] = len(tokens)
                    parents.append(nodes[path[:-1]] if depth > 1 else -1)
                    tokens.append(cont[depth - 1])
        with self._merged_adapter(adapter) as run_as:
            cached = self._prefixes.get(adapter)
            reuse = 0
            if cached is not None:
                limit = min(len(cached.ids), len(prefix))
                while reuse < limit and cached.ids[reuse] == prefix[reuse]:
                    reuse += 1
                if cached.ids != prefix:
                    reuse = min(reuse, len(prefix) - 1)  # the prompt's last logits are needed
            fresh = prefix[reuse:]
            if not fresh and not tokens:
                assert cached is not None
                first = cached.last_logits
                logits = first[:0]
            else:
                first, logits = self._tree_forward(
                    prefix, reuse, cached, tokens, parents, run_as, adapter
                )
        first_lp = torch.log_softmax(first, dim=-1)
        node_lp = torch.log_softmax(logits, dim=-1)
        sums = []
        for cont in continuations:
            total = 0.0
            for depth, token in enumerate(cont):
                row = first_lp if depth == 0 else node_lp[nodes[tuple(cont[:depth])]]
                total += float(row[token])
            sums.append(total)
        return sums

    def _tree_forward(
        self,
        prefix: list[int],
        reuse: int,
        cached: _Prefix | None,
        tokens: list[int],
        parents: list[int],
        run_as: str,
        adapter: str,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The forward pass of ``_score_sums``: logits at the prompt's last token and at every
        tree token; keeps the prompt's KV cache for ``adapter``'s next request."""
        fresh = prefix[reuse:]
        cache = _new_cache(self.num_layers)
        if reuse:
            assert cached is not None
            for layer, (keys, values) in zip(_slots(cache), cached.kv, strict=True):
                layer.set(keys[:, :, :reuse], values[:, :, :reuse], len(fresh) + len(tokens))
        width = len(fresh) + len(tokens)
        total = reuse + width
        allowed = torch.zeros((width, total), dtype=torch.bool)
        allowed[:, :reuse] = True
        allowed[: len(fresh), reuse : reuse + len(fresh)] = torch.ones(
            (len(fresh), len(fresh)), dtype=torch.bool
        ).tril()
        allowed[len(fresh) :, : len(prefix)] = True
        positions = list(range(reuse, len(prefix)))
        for i, parent in enumerate(parents):
            row = len(fresh) + i
            allowed[row, len(prefix) + i] = True
            depth = 1
            while parent >= 0:
                allowed[row, len(prefix) + parent] = True
                parent, depth = parents[parent], depth + 1
            positions.append(len(prefix) + depth - 1)
        mask = torch.zeros((1, 1, width, total), dtype=self.dtype)
        mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)
        keep = torch.tensor([len(fresh) - 1] if fresh else [], dtype=torch.long)
        keep = torch.cat([keep, torch.arange(len(fresh), width)])
        logits = self._forward(
            torch.tensor([fresh + tokens], dtype=torch.long),
            mask,
            torch.tensor([positions], dtype=torch.long),
            cache,
            [run_as],
            keep.to(self.device),
            quick_base=True,
        )[0]
        if fresh:
            first, rest = logits[0], logits[1:]
            kv = [(k[:, :, : len(prefix)], v[:, :, : len(prefix)]) for k, v in (
                layer.kv() for layer in _slots(cache))]  # fmt: skip
            self._prefixes[adapter] = _Prefix(list(prefix), kv, first)
        else:
            assert cached is not None
            first, rest = cached.last_logits, logits
        return first, rest

    @contextlib.contextmanager
    def _lora_off(self) -> Iterator[None]:
        """peft's LoRA layers call only their base layer while this lasts (the same flag as
        ``disable_adapter()`` sets; the adapters' weights are frozen already)."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        layers: list[Any] = [m for m in self._base.modules() if isinstance(m, BaseTunerLayer)]
        before = [layer._disable_adapters for layer in layers]
        try:
            for layer in layers:
                layer._disable_adapters = True
            yield
        finally:
            for layer, flag in zip(layers, before, strict=True):
                layer._disable_adapters = flag

    @contextlib.contextmanager
    def _merged_adapter(self, adapter: str) -> Iterator[str]:
        """Run ``adapter`` as the base model with its LoRA merged into the packed weights.

        peft's per-request LoRA path (``adapter_names``) copies each projection's input and output
        rows by index and adds two small products per projection, a fifth of a scoring pass on
        the CPU; a merged weight costs nothing extra. Used only when it is exact: vanilla LoRA on
        packed ``nn.Linear`` layers (no DoRA or other variant, no LoRA bias, not merged by peft);
        otherwise yields ``adapter`` for peft's path. The two most recently scored adapters keep
        their merged weights (SmolLM2-135M: ~100 MB each); unloading an adapter drops them.
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
                entries.append((base, torch.ops.mkldnn._reorder_linear_weight(weight, _PACK_HINT)))
        return entries

    def _load_adapter(self, name: str, folder: Path) -> None:
        if len(self.adapters) >= self.max_loras:
            raise AdapterError(
                f"{self.max_loras} adapters are already loaded (the maximum); unload one first"
            )
        # peft names are internal and never reused, so a name can be unloaded and loaded again
        self._serial += 1
        internal = f"lora{self._serial}"
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
        self._prefixes.pop(internal, None)
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


@dataclass
class _Prefix:
    """A scored prompt's ids, its KV cache (``[1, kv_heads, len(ids), head_dim]`` per layer) and
    the logits after its last token: what the next prompt sharing its start need not recompute."""

    ids: list[int]
    kv: list[tuple[torch.Tensor, torch.Tensor]]
    last_logits: torch.Tensor


@dataclass(frozen=True)
class TokenScore:
    """A prompt token's log-probability, its rank (1 = most likely) and the top alternatives."""

    token_id: int
    logprob: float
    rank: int
    top: tuple[tuple[int, float], ...] = ()


@dataclass
class PromptScores:
    prefix: list[TokenScore] = field(default_factory=list)
    rows: list[list[TokenScore]] = field(default_factory=list)
    next_token: list[int] = field(default_factory=list)


def _score(logprobs: torch.Tensor, token: int, top: int) -> TokenScore:
    value = logprobs[token]
    rank = int((logprobs > value).sum().item()) + 1
    alts: tuple[tuple[int, float], ...] = ()
    if top:
        values, idx = torch.topk(logprobs, top)
        alts = tuple(zip(idx.tolist(), values.tolist(), strict=True))
    return TokenScore(token, float(value), rank, alts)


def _packed_linear_forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    packed: torch.Tensor = self._brandbot_packed  # type: ignore[assignment]
    out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, packed, self.bias, "none", [], "")
    return out


_PACK_HINT = 8  # rows the prepacked weights are laid out for: a decode step's batch


def _pack_linears(model: torch.nn.Module, batch_hint: int = _PACK_HINT) -> int:
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


def softmax(scores: Sequence[float]) -> list[float]:
    """Label confidences from summed log-probabilities (numerically stable)."""
    if not scores:
        return []
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    total = sum(exps)
    return [e / total for e in exps]
