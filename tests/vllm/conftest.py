"""A real vLLM server for the session: the CPU build from ``.venv-vllm`` (made by
``scripts/setup-vllm.sh``, which ``make test`` runs), serving the bundled SmolLM2 with runtime
LoRA loading and an API key, started by the product's own launch command
(``bot.testkit.vllm``, which the serving benchmark uses too). Missing vLLM skips
these tests on a developer's machine and fails them under ``CI=true``.

vLLM takes about a minute to come up, so when the session holds a test that needs it, the
server is launched in the background as the session's first test starts (``EarlyStart``, from
the autouse fixture ``vllm_early_start`` in tests/conftest.py) and the ``vllm`` fixture only
waits for what is left of its start-up.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.storage import Database
from bot.testkit.model_fixtures import bundled_smollm2
from bot.testkit.plugin import require_in_ci
from bot.testkit.vllm import VllmProcess
from serving.base_model import ResolvedModel

ROOT = Path(__file__).resolve().parents[2]
SERVED = "brandbot-base"
KEY = "vllm-test-key"
START_TIMEOUT = 420.0


def vllm_python_path() -> Path:
    configured = os.environ.get("BRANDBOT_VLLM_PYTHON")
    return Path(configured) if configured else ROOT / ".venv-vllm" / "bin" / "python"


def vllm_python() -> str:
    python = vllm_python_path()
    if not python.is_file():
        require_in_ci(f"vLLM is not set up ({python} is missing): run scripts/setup-vllm.sh")
    return str(python)


class VllmServer(VllmProcess):
    """The session's server; ``start()`` (again, after ``kill()``) waits until it is up,
    ``launch()`` returns at once."""

    def launch(self) -> None:
        super().start()

    def start(self) -> None:
        self.launch()
        self.wait(START_TIMEOUT)


def new_server(python: str, model: ResolvedModel, factory: pytest.TempPathFactory) -> VllmServer:
    return VllmServer(
        python=python,
        model_path=model.path,
        served_name=SERVED,
        api_key=KEY,
        log=factory.mktemp("vllm") / "vllm.log",
    )


class EarlyStart:
    """Launch the session's server from a background thread (converting the bundled SmolLM2
    first, shared with the ``smollm2_model`` fixture), so its start-up overlaps other tests.
    Anything that goes wrong here is left to the ``vllm`` fixture, which starts the server
    itself and reports (or skips) as usual."""

    def __init__(self, factory: pytest.TempPathFactory) -> None:
        self.factory = factory
        self.python = vllm_python_path()  # read here: in-process CLI tests swap os.environ
        self.server: VllmServer | None = None
        self.thread = threading.Thread(target=self._launch, name="vllm-early-start", daemon=True)
        self.thread.start()

    def _launch(self) -> None:
        if not self.python.is_file():
            return
        try:
            server = new_server(str(self.python), bundled_smollm2(self.factory), self.factory)
            server.launch()
        except Exception:  # the vllm fixture tries again and says what is wrong
            return
        self.server = server

    def take(self) -> VllmServer | None:
        """The launched server (once), or None if it could not be launched."""
        self.thread.join()
        server, self.server = self.server, None
        return server

    def stop(self) -> None:
        self.thread.join()
        if self.server is not None:
            self.server.stop()


#: the session's server, once the ``vllm`` fixture made it
_SESSION_SERVER: list[VllmServer] = []


@pytest.fixture(scope="session")
def vllm(
    smollm2_model: ResolvedModel,
    tmp_path_factory: pytest.TempPathFactory,
    vllm_early_start: EarlyStart | None,
) -> Iterator[VllmServer]:
    python = vllm_python()
    server = vllm_early_start.take() if vllm_early_start is not None else None
    if server is None:
        server = new_server(python, smollm2_model, tmp_path_factory)
        server.launch()
    _SESSION_SERVER.append(server)
    try:
        server.wait(START_TIMEOUT)
        yield server
    finally:
        _SESSION_SERVER.clear()
        server.stop()


def pytest_runtest_teardown(item: pytest.Item) -> None:
    """Stop the session's server after the last test that uses it, not at the end of the
    session: idle, it still holds about 3 GB and a few percent of a core for the minutes the
    worker spends on other tests. A later test that needs it after all starts it again."""
    if _SESSION_SERVER and "vllm" in getattr(item, "fixturenames", ()):
        users = [i for i in item.session.items if "vllm" in getattr(i, "fixturenames", ())]
        if item is users[-1]:
            _SESSION_SERVER[0].stop()


def pytest_runtest_setup(item: pytest.Item) -> None:
    if _SESSION_SERVER and "vllm" in getattr(item, "fixturenames", ()):
        server = _SESSION_SERVER[0]
        if server.proc is not None and server.proc.poll() is not None:
            server.start()


@pytest.fixture(scope="session")
def smollm2_adapter(smollm2_model: ResolvedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A rank-8 LoRA adapter for SmolLM2 with small random B matrices: it visibly moves the
    model's answers without wrecking them. It targets the modules the classify defaults train
    (attention and MLP projections), so vLLM serves the shape the product ships."""
    from bot.testkit.models import build_tiny_adapter
    from trainer.config import defaults_for

    return build_tiny_adapter(
        smollm2_model.path,
        tmp_path_factory.mktemp("smollm2-adapter"),
        served_name=SERVED,
        rank=8,
        scale=0.02,
        seed=7,
        targets=defaults_for("classify").target_modules,
    )


@pytest.fixture(scope="session")
def smollm2_trained_adapter(
    smollm2_model: ResolvedModel, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """An adapter the product's trainer wrote for SmolLM2 (config, weights, checksum manifest):
    one epoch over 12 of the sample brand's copy examples, seconds rather than the minutes of the
    full run (``sample_copy_run``, which the trainer tests judge; sharing it would tie this
    group of tests to that one on a single pytest-xdist worker)."""
    from bot.samples import sample_dir
    from trainer.config import defaults_for
    from trainer.data import TrainExample
    from trainer.lora import train_lora

    lines = (sample_dir() / "copy.jsonl").read_text(encoding="utf-8").splitlines()[:12]
    examples = []
    for line in lines:
        user, answer = json.loads(line)["messages"]
        examples.append(TrainExample("", user["content"], answer["content"]))
    config = defaults_for("draft", epochs=1, max_length=128, rank=8, min_preference_pairs=10**6)
    result = train_lora(
        smollm2_model.path,
        examples,
        config,
        tmp_path_factory.mktemp("smollm2-trained") / "adapter",
        served_model_name=SERVED,
        base_fingerprint=smollm2_model.fingerprint,
    )
    return result.adapter_dir


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    """A fresh SQLite database (the serving path does not depend on the database kind)."""
    database = Database(f"sqlite:///{tmp_path / 'brandbot.db'}")
    database.upgrade()
    yield database
    database.dispose()
