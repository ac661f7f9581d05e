"""Serving fixtures: one tiny-model engine and one real HTTP server per test session."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.testkit.models import build_tiny_adapter
from bot.testkit.servers import BackgroundServer
from serving.base_model import read_fingerprint
from serving.engine import LocalEngine
from serving.server import create_app

SERVED = "brandbot-base"
API_KEY = "test-key"
_names = itertools.count(1)


@pytest.fixture(scope="session")
def engine(tiny_model_dir: Path) -> Iterator[LocalEngine]:
    with LocalEngine(tiny_model_dir, served_name=SERVED, max_batch_size=32) as eng:
        yield eng


@pytest.fixture(scope="session")
def server_url(engine: LocalEngine) -> Iterator[str]:
    with BackgroundServer(create_app(engine, api_key=API_KEY)) as url:
        yield url


@pytest.fixture(scope="session")
def base_fingerprint(tiny_model_dir: Path) -> str:
    value = read_fingerprint(tiny_model_dir)
    assert value
    return value


AdapterFactory = Callable[..., Path]


@pytest.fixture(scope="session")
def make_adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AdapterFactory:
    """Build a peft adapter for the tiny model: ``make_adapter(scale=0.5, rank=4, **lora)``."""

    def build(**options: Any) -> Path:
        options.setdefault("served_name", SERVED)
        target = tmp_path_factory.mktemp("adapter")
        return build_tiny_adapter(tiny_model_dir, target, **options)

    return build


@pytest.fixture(scope="session")
def good_adapter(make_adapter: AdapterFactory) -> Path:
    return make_adapter()


def unique_name(prefix: str = "brand") -> str:
    """Adapter names are never reused (vLLM's rule), so every test takes a fresh version."""
    return f"{prefix}-v{next(_names)}"
