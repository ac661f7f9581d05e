"""Fixtures shared by the bot's end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.engine import LocalEngine


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Iterator[LocalEngine]:
    """The tiny real model behind the inference client, one per test module."""
    eng = LocalEngine(tiny_model_dir, served_name="brandbot-base")
    yield eng
    eng.close()
