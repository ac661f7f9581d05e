"""A real vLLM server for the session: the CPU build from ``.venv-vllm`` (made by
``scripts/setup-vllm.sh``, which ``make test`` runs), serving the bundled SmolLM2 with runtime
LoRA loading and an API key, started by the product's own launch command
(``bot.testkit.vllm``, which the serving benchmark uses too). Missing vLLM skips
these tests on a developer's machine and fails them under ``CI=true``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.storage import Database
from bot.testkit.plugin import require_in_ci
from bot.testkit.vllm import VllmProcess
from serving.base_model import ResolvedModel

ROOT = Path(__file__).resolve().parents[2]
SERVED = "brandbot-base"
KEY = "vllm-test-key"
START_TIMEOUT = 420.0


def vllm_python() -> str:
    configured = os.environ.get("BRANDBOT_VLLM_PYTHON")
    python = Path(configured) if configured else ROOT / ".venv-vllm" / "bin" / "python"
    if not python.is_file():
        require_in_ci(f"vLLM is not set up ({python} is missing): run scripts/setup-vllm.sh")
    return str(python)


class VllmServer(VllmProcess):
    """The session's server; ``start()`` (again, after ``kill()``) waits until it is up."""

    def start(self) -> None:
        super().start()
        self.wait(START_TIMEOUT)


@pytest.fixture(scope="session")
def vllm(
    smollm2_model: ResolvedModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VllmServer]:
    server = VllmServer(
        python=vllm_python(),
        model_path=smollm2_model.path,
        served_name=SERVED,
        api_key=KEY,
        log=tmp_path_factory.mktemp("vllm") / "vllm.log",
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def smollm2_adapter(smollm2_model: ResolvedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A rank-8 LoRA adapter for SmolLM2 with small random B matrices: it visibly moves the
    model's answers without wrecking them."""
    from bot.testkit.models import build_tiny_adapter

    return build_tiny_adapter(
        smollm2_model.path,
        tmp_path_factory.mktemp("smollm2-adapter"),
        served_name=SERVED,
        rank=8,
        scale=0.02,
        seed=7,
    )


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    """A fresh SQLite database (the serving path does not depend on the database kind)."""
    database = Database(f"sqlite:///{tmp_path / 'brandbot.db'}")
    database.upgrade()
    yield database
    database.dispose()
