"""The client of any OpenAI-compatible server with vLLM's runtime LoRA API (vLLM itself, or
``brandbot serve``).

For label scores the client asks ``/tokenize`` for the exact token sequences, then
:mod:`serving.http_scoring` for their log-probabilities, in the one way that is safe on the
server at hand.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from serving.client.base import (
    ChatResult,
    Classification,
    InferenceClient,
    InferenceError,
    InferenceUnavailable,
    Message,
    ModelInfo,
    Usage,
    check_labels,
    classification,
)
from serving.http_scoring import (
    ScoringUnsupported,
    check_vllm_version,
    score_by_prompt_logprobs,
    score_by_reads,
)
from serving.tokens import answer_tokens


class HttpClient(InferenceClient):
    """An OpenAI-compatible server with vLLM's runtime LoRA API (vLLM or ``brandbot serve``).

    ``url`` may end in ``/v1`` or not. Connection errors, timeouts and 5xx answers are retried
    ``retries`` times with exponential backoff, then raise :class:`InferenceUnavailable`.
    """

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        served_model_name: str | None = None,
        timeout: float = 120.0,
        connect_timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.25,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/").removesuffix("/v1")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            transport=transport,
        )
        self.retries = retries
        self.backoff = backoff
        self._served = served_model_name
        self._scoring_safe: bool | None = None
        self._reads_pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._answers: dict[tuple[str, ...], tuple[list[int], list[list[int]]]] = {}

    # --- transport ---------------------------------------------------------------------------

    def _attempts(self) -> Iterator[int]:
        """Attempt numbers, 0 to ``retries``, sleeping with exponential backoff before each
        retry; the caller ``continue``s to retry and returns or raises to stop."""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            yield attempt

    def _unreachable(self, reason: str) -> InferenceUnavailable:
        return InferenceUnavailable(f"model server unreachable at {self.url}: {reason}")

    def _request(self, method: str, path: str, body: Any = None) -> httpx.Response:
        reason = "no attempt"
        for _ in self._attempts():
            try:
                response = self.http.request(method, path, json=body)
            except httpx.TransportError as exc:
                reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                continue
            if response.status_code >= 500:
                reason = f"HTTP {response.status_code}: {_message(response)}"
                continue
            if response.status_code >= 400:
                raise InferenceError(_message(response), response.status_code)
            return response
        raise self._unreachable(reason)

    def _json(self, method: str, path: str, body: Any = None) -> Any:
        return self._request(method, path, body).json()

    def _model(self, model: str | None) -> str:
        if model:
            return model
        if self._served is None:
            models = self.models()
            self._served = next((m.id for m in models if m.parent is None), models[0].id)
        return self._served

    # --- operations --------------------------------------------------------------------------

    def _chat_body(
        self,
        messages: Sequence[Message],
        model: str | None,
        max_tokens: int,
        temperature: float,
        top_p: float,
        stop: Sequence[str],
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self._model(model),
            "messages": list(messages),
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
        }
        if stop:
            body["stop"] = list(stop)
        return body

    def chat(
        self,
        messages: Sequence[Message],
        *,
        model: str | None = None,
        max_tokens: int = 256,
        temperature: float = 0.7,
        top_p: float = 1.0,
        stop: Sequence[str] = (),
        top_logprobs: int | None = None,
    ) -> ChatResult:
        body = self._chat_body(messages, model, max_tokens, temperature, top_p, stop)
        if top_logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = top_logprobs
        data = self._json("POST", "/v1/chat/completions", body)
        choice = data["choices"][0]
        usage = data.get("usage") or {}
        logprobs = None
        if top_logprobs and choice.get("logprobs"):
            logprobs = [
                {alt["token"]: float(alt["logprob"]) for alt in item.get("top_logprobs", [])}
                for item in choice["logprobs"].get("content") or []
            ]
        return ChatResult(
            text=choice["message"].get("content") or "",
            finish_reason=choice.get("finish_reason") or "stop",
            usage=Usage(
                usage.get("prompt_tokens", 0),
                usage.get("completion_tokens", 0),
                usage.get("total_tokens", 0),
            ),
            logprobs=logprobs,
        )

    def stream_chat(
        self,
        messages: Sequence[Message],
        *,
        model: str | None = None,
        max_tokens: int = 256,
        temperature: float = 0.7,
        top_p: float = 1.0,
        stop: Sequence[str] = (),
    ) -> Iterator[str]:
        body = self._chat_body(messages, model, max_tokens, temperature, top_p, stop)
        body["stream"] = True
        reason = "no attempt"
        for _ in self._attempts():
            try:
                with self.http.stream("POST", "/v1/chat/completions", json=body) as response:
                    if response.status_code >= 500:
                        response.read()
                        reason = f"HTTP {response.status_code}: {_message(response)}"
                        continue
                    if response.status_code >= 400:
                        response.read()
                        raise InferenceError(_message(response), response.status_code)
                    yield from _sse_deltas(response.iter_lines())
                    return
            except httpx.ConnectError as exc:  # only before anything was streamed
                reason = f"{type(exc).__name__}: {exc}"
            except httpx.TransportError as exc:
                raise self._unreachable(f"{type(exc).__name__}: {exc}") from exc
        raise self._unreachable(reason)

    def classify(
        self, messages: Sequence[Message], labels: Sequence[str], *, model: str | None = None
    ) -> Classification:
        names = check_labels(labels)
        name = self._model(model)
        prompt, answers = self._label_tokens(list(messages), names)
        try:
            if self._prompt_logprobs_safe():
                summed = score_by_prompt_logprobs(self._json_post, name, prompt, answers)
            else:
                summed = score_by_reads(self._json_post, name, prompt, answers, self._pool())
        except ScoringUnsupported as exc:
            raise InferenceError(str(exc)) from None
        return classification(names, summed)

    def _label_tokens(
        self, chat: list[Message], names: list[str]
    ) -> tuple[list[int], list[list[int]]]:
        """The prompt's tokens and each label's answer tokens (:func:`answer_tokens`).

        The prompt and the chat with the first label as the answer are tokenized for every
        call. The other renders (each label, and the empty answer that shows how the template
        closes a turn) are tokenized when the label set is new, or when the first label's
        answer does not come out as it did then (a template whose answers depend on the
        conversation): otherwise the answers are the ones learned for this label set.
        """
        probe = self._pool().map(
            lambda r: self._tokenize(r[0], add_generation_prompt=r[1]),
            [(chat, True), ([*chat, _assistant(names[0])], False)],
        )
        prompt, first = probe
        key = tuple(names)
        known = self._answers.get(key)
        if known is not None and first == prompt + known[0]:
            return prompt, known[1]
        renders = [[*chat, _assistant(c)] for c in ["", *names[1:]]]
        tokens = list(
            self._pool().map(lambda r: self._tokenize(r, add_generation_prompt=False), renders)
        )
        closing = tokens[0][len(prompt) :]
        try:
            answers = [answer_tokens(prompt, full, closing) for full in [first, *tokens[1:]]]
        except ValueError as exc:
            raise InferenceError(str(exc)) from None
        if len(self._answers) >= _KNOWN_LABEL_SETS:
            self._answers.clear()
        self._answers[key] = (first[len(prompt) :], answers)
        return prompt, answers

    def _json_post(self, path: str, body: dict[str, Any]) -> Any:
        return self._json("POST", path, body)

    def _prompt_logprobs_safe(self) -> bool:
        """Whether label scores may use ``prompt_logprobs``: only on ``brandbot serve``.

        Any other server (vLLM, or one that does not say) gets next-token reads; a vLLM too
        old for those is refused with a message that names the version to use.
        """
        if self._scoring_safe is None:
            base = next((m for m in self.models() if m.parent is None), None)
            safe = base is not None and base.owned_by == "brandbot"
            if not safe:
                try:
                    version = self.http.get("/version", timeout=10.0)
                except httpx.TransportError as exc:
                    raise self._unreachable(f"{type(exc).__name__}: {exc}") from exc
                if version.status_code == 200:
                    check_vllm_version(str(version.json().get("version", "")))
            self._scoring_safe = safe
        return self._scoring_safe

    def _pool(self) -> ThreadPoolExecutor:
        """Threads for the concurrent reads of one classification (several may share it)."""
        with self._pool_lock:
            if self._reads_pool is None:
                self._reads_pool = ThreadPoolExecutor(16, thread_name_prefix="label-reads")
            return self._reads_pool

    def _tokenize(self, messages: list[Message], *, add_generation_prompt: bool) -> list[int]:
        data = self._json(
            "POST",
            "/tokenize",
            {"messages": messages, "add_generation_prompt": add_generation_prompt},
        )
        return [int(t) for t in data["tokens"]]

    def models(self) -> list[ModelInfo]:
        data = self._json("GET", "/v1/models")
        return [
            ModelInfo(
                m["id"], m.get("parent"), m.get("root"), m.get("max_model_len"), m.get("owned_by")
            )
            for m in data.get("data", [])
        ]

    def count_tokens(self, messages: Sequence[Message]) -> int:
        return len(self._tokenize(list(messages), add_generation_prompt=True))

    def load_adapter(self, name: str, path: str) -> None:
        self._request("POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})

    def unload_adapter(self, name: str) -> None:
        self._request("POST", "/v1/unload_lora_adapter", {"lora_name": name})

    def health(self) -> bool:
        try:
            return self.http.get("/health", timeout=5.0).status_code == 200
        except httpx.TransportError:
            return False

    def close(self) -> None:
        if self._reads_pool is not None:
            self._reads_pool.shutdown(wait=True)
        self.http.close()


_KNOWN_LABEL_SETS = 64


def _assistant(content: str) -> Message:
    return {"role": "assistant", "content": content}


def _message(response: httpx.Response) -> str:
    """The error message of an OpenAI-shaped error body, or the body text."""
    try:
        data = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(data.get("message"), str):
            return str(data["message"])
    return json.dumps(data)[:500]


def _sse_deltas(lines: Iterator[str]) -> Iterator[str]:
    for line in lines:
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            return
        data = json.loads(payload)
        if "error" in data:
            raise InferenceError(_message_from(data), 500)
        for choice in data.get("choices", []):
            content = (choice.get("delta") or {}).get("content")
            if content:
                yield str(content)


def _message_from(data: dict[str, Any]) -> str:
    err = data.get("error")
    return str(err.get("message")) if isinstance(err, dict) else str(err)
