"""``LocalEngine``: transformers + peft behind a continuous-batching scheduler thread.

One scheduler thread owns the model. Requests (generation, label scoring, adapter changes) are
queued to it; there is no global request lock: a request never waits for another to end. The
work itself lives in the mixins: :mod:`serving.engine.batching` (generation),
:mod:`serving.engine.scoring` (labels, prompt log-probabilities), :mod:`serving.engine.loras`
(adapters), on the state declared in :mod:`serving.engine.core`.

Why not transformers' own continuous batching (``transformers.generation.continuous_batching``)?
It packs every request into a single row over a paged cache, so peft's per-row ``adapter_names``
cannot address requests of different adapters, and it targets CUDA paged-attention kernels.
"""

from __future__ import annotations

import atexit
import inspect
import os
import queue
import threading
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import torch
from prometheus_client import CollectorRegistry

from serving.engine.batching import Batching
from serving.engine.core import Seq
from serving.engine.cpu_pack import pack_linears
from serving.engine.metrics import make_metrics
from serving.engine.scoring import Scoring
from serving.inference_types import (
    BASE,
    AdapterError,
    EngineBusy,
    EngineError,
    GenerationEvent,
    GenerationHandle,
    PromptScores,
    PromptTooLong,
    SamplingParams,
    UnknownModel,
)
from serving.tokens import answer_tokens, as_ids

T = TypeVar("T")


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


class LocalEngine(Batching, Scoring):
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
        prefix_caching: bool = True,
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
            self.packed_linears = pack_linears(model)
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
        self.metrics = make_metrics(registry)
        self._inbox: queue.Queue[Seq] = queue.Queue()
        self._jobs: queue.Queue[tuple[Callable[[], Any], Future[Any]]] = queue.Queue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._active: list[Seq] = []
        self._cache = None
        self._mask = None
        self.fast_scoring = fast_scoring
        self.prefix_caching = prefix_caching
        self._prompt_kv = {}
        self._prefixes = {}
        self._merged: dict[str, list[tuple[torch.nn.Linear, torch.Tensor]]] = {}
        self._unmergeable: set[str] = set()
        self._tuner_layers = None
        self._lean = None
        self._lean_stale = self.packed_linears > 0
        self._thread = threading.Thread(target=self._loop, name="brandbot-engine", daemon=True)
        self._thread.start()
        _live_engines.add(self)

    # --- public API -------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """Whether the scheduler thread runs and was not asked to stop (only :meth:`close`
        stops it; a failed step does not)."""
        return self._thread.is_alive() and not self._stop.is_set()

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
        sink: Callable[[GenerationEvent], None] | None = None,
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
            self._inbox.put(Seq(handle, list(prompt_ids), adapter, params, gen))
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
        adapter = self._scoring_request(prefix, continuations, model)
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
        adapter = self._scoring_request(prefix, continuations, model)
        return self.run(
            lambda: self._prompt_logprobs(prefix, continuations, adapter, top, with_prefix)
        )

    def _scoring_request(
        self, prefix: list[int], continuations: list[list[int]], model: str | None
    ) -> str:
        """Check a scoring request (model, length, non-empty prompt), count it, and return
        the peft adapter name it runs under."""
        adapter = self.check_model(model)
        longest = len(prefix) + max((len(c) for c in continuations), default=0)
        if longest > self.max_model_len:
            raise PromptTooLong(longest, self.max_model_len)
        if not prefix:
            raise EngineError("the prompt must not be empty")
        self.metrics.requests.labels("score").inc()
        return adapter

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
