"""pytest fixtures for models: a tiny LLaMA-architecture model built from a config (fast).

- ``bundled_tokenizer_dir``: the bundled SmolLM2 tokenizer, extracted once per session.
- ``tiny_model_dir``: a random-weight 2-layer LLaMA with that tokenizer (session scoped; do not
  modify it: copy it first).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.testkit.models import build_tiny_llama, extract_bundled_tokenizer
from bot.testkit.plugin import require_in_ci


@pytest.fixture(scope="session")
def bundled_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        return extract_bundled_tokenizer(tmp_path_factory.mktemp("tokenizer"))
    except FileNotFoundError as exc:  # BaseModelMissing: the bundled model is not installed
        require_in_ci(str(exc))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, bundled_tokenizer_dir: Path) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), bundled_tokenizer_dir)
