"""Shared helpers for brandbot's tests. Database fixtures come from the test kit plugin."""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import pytest

from bot.storage import Database

if TYPE_CHECKING:
    from tests.vllm.conftest import EarlyStart

BRANDBOT = str(Path(sys.executable).parent / "brandbot")

T = TypeVar("T")


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


CliRunner = Callable[..., Result]


@pytest.fixture
def cli(tmp_path: Path, db_url: str) -> CliRunner:
    """Run the ``brandbot`` command line in this process against a fresh database (SQLite and
    PostgreSQL): its real entry point (``bot.cli:main``) with its own arguments, environment,
    working directory and standard streams, as the console script runs it."""
    return make_cli(tmp_path, db_url)


@pytest.fixture
def cli_sqlite(tmp_path: Path) -> CliRunner:
    return make_cli(tmp_path, None)


@pytest.fixture
def cli_process(tmp_path: Path, db_url: str) -> CliRunner:
    """The real ``brandbot`` console script as a subprocess, for tests whose point is the
    process (its logging set-up, its exit on a signal, its exit status after the interpreter
    shut down: a native thread still running then aborts the process with status 134)."""
    return make_cli(tmp_path, db_url, subprocess_=True)


@pytest.fixture
def cli_process_sqlite(tmp_path: Path) -> CliRunner:
    return make_cli(tmp_path, None, subprocess_=True)


def cli_env(tmp_path: Path, db_url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRANDBOT_", "SLACK_"))}
    env["BRANDBOT_DATA_DIR"] = str(tmp_path / "data")
    env["BRANDBOT_CONFIG"] = str(tmp_path / "brandbot.toml")
    env["COLUMNS"] = "200"
    if db_url:
        env["BRANDBOT_DATABASE_URL"] = db_url
    return env


def make_cli(tmp_path: Path, db_url: str | None, *, subprocess_: bool = False) -> CliRunner:
    env = cli_env(tmp_path, db_url)

    def run(
        *args: str, stdin: str | None = None, extra_env: dict[str, str] | None = None
    ) -> Result:
        full_env = {**env, **(extra_env or {})}
        if not subprocess_:
            return run_in_process(list(args), full_env, tmp_path, stdin or "")
        proc = subprocess.run(
            [BRANDBOT, *args],
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=full_env,
            cwd=tmp_path,
            timeout=600,  # a hang guard, not a speed limit
            check=False,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    return run


def _stream(text: str = "") -> io.TextIOWrapper:
    """A standard stream like a pipe's: UTF-8, not a terminal."""
    return io.TextIOWrapper(io.BytesIO(text.encode()), encoding="utf-8", write_through=True)


def _text(stream: io.TextIOWrapper) -> str:
    stream.flush()
    buffer = stream.buffer
    assert isinstance(buffer, io.BytesIO)
    return buffer.getvalue().decode("utf-8", errors="replace")


def run_in_process(args: list[str], env: dict[str, str], cwd: Path, stdin: str) -> Result:
    """``brandbot *args`` through ``bot.cli:main`` in this process, as a fresh process would run
    it: ``env`` is the whole environment, ``cwd`` the working directory, the streams are pipes,
    and the command's cached settings and database are dropped before and after. The exit status
    follows Python's: ``sys.exit``'s code, 1 and a traceback on stderr for an uncaught error.
    What a command changes in the process (the root logger, torch's thread count) is put back."""
    import logging
    import traceback

    from bot import cli as brandbot
    from bot.cli import common

    saved_env, saved_cwd, saved_argv = dict(os.environ), Path.cwd(), sys.argv
    saved_streams = sys.stdin, sys.stdout, sys.stderr
    root = logging.getLogger()
    saved_root = root.handlers[:], root.level
    saved_levels = {
        name: logger.level
        for name, logger in logging.Logger.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    torch = sys.modules.get("torch")
    saved_threads = torch.get_num_threads() if torch is not None else None
    out, err = _stream(), _stream()
    code = 0
    _drop_cached(common)
    try:
        os.environ.clear()
        os.environ.update(env)
        os.chdir(cwd)
        sys.argv = [BRANDBOT, *args]
        sys.stdin, sys.stdout, sys.stderr = _stream(stdin), out, err
        try:
            brandbot.main()
        except SystemExit as exc:
            if exc.code is None or isinstance(exc.code, int):
                code = exc.code or 0
            else:
                print(exc.code, file=sys.stderr)
                code = 1
        except Exception:  # what an uncaught error does to a process
            traceback.print_exc()
            code = 1
    finally:
        _drop_cached(common)
        sys.stdin, sys.stdout, sys.stderr = saved_streams
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        root.handlers[:] = saved_root[0]
        root.setLevel(saved_root[1])
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)
        if torch is not None and saved_threads is not None:
            torch.set_num_threads(saved_threads)
    return Result(code, _text(out), _text(err))


def _drop_cached(common: Any) -> None:
    """Forget the command line's cached settings and database, as a new process would."""
    if common.database.cache_info().currsize:
        common.database().dispose()
    common.database.cache_clear()
    common.settings.cache_clear()


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def not_none(values: Iterable[T | None]) -> list[T]:
    """``values`` as a list, each asserted to be set: nullable columns a test sorts or compares
    where it expects every row to have one."""
    out = []
    for value in values:
        assert value is not None
        out.append(value)
    return out


def free_port() -> int:
    """A port nothing listens on right now (for a server a test starts, or a closed one)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_up(url: str, proc: subprocess.Popen[str], timeout: float = 90) -> None:
    """Wait until ``url`` answers 200, failing with the process's output if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"the server exited: {out}{err}"[-3000:])
        with contextlib.suppress(httpx.HTTPError):  # not listening yet
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise AssertionError(f"{url} did not come up in {timeout:.0f} s")


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, share the cores among the workers: each worker (and every process it
    starts, which inherits ``OMP_NUM_THREADS``) computes on its share. Without this every
    worker's torch takes all the cores, and OpenMP threads that wait on each other in lock-step
    lose most of their time to a thread descheduled by the other worker."""
    if config.getoption("dist", "no") == "loadgroup":
        _require_working_loadgroup()
        config.option.loadscopereorder = False  # hand out in _hand_out_rank's order
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if not os.environ.get("PYTEST_XDIST_WORKER") or workers < 2:
        return
    from trainer.config import usable_cpus

    share = max(1, usable_cpus() // workers)
    os.environ["OMP_NUM_THREADS"] = str(share)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(share)


def _require_working_loadgroup() -> None:
    """Refuse ``--dist loadgroup`` where it would silently not group: xdist up to 3.8 marks a
    grouped test by rewriting its node id, which pytest 9.2's structured ids ignore
    (pytest-xdist issue 1386); every worker would then start its own vLLM server and its own
    SmolLM2 training."""
    from importlib.metadata import version

    from packaging.version import Version

    if Version(version("pytest")) >= Version("9.2") and Version(version("pytest-xdist")) <= Version(
        "3.8.0"
    ):
        raise pytest.UsageError(
            f"--dist loadgroup does not group tests with pytest {version('pytest')} and "
            f"pytest-xdist {version('pytest-xdist')}: install the versions pyproject.toml's "
            "dev extra asks for (pip install -e '.[dev]')"
        )


#: tests that share one expensive session resource, kept on one pytest-xdist worker
#: (``--dist loadgroup``, as ``make test`` runs the suite): fixture name -> group
XDIST_GROUPS = {"vllm": "vllm", "sample_copy_run": "smollm2-training"}
#: expensive module-scoped fixtures (a wheel installed in a fresh venv, trainings, servers): a
#: module's tests that use one stay on one worker, so the fixture is built once, not per worker
MODULE_FIXTURES = ("fresh_venv", "trained", "model_server", "adapters", "plain")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Group the tests of one shared resource; under pytest-xdist also set the order the
    scheduler hands them out in (``pytest_configure`` keeps xdist from reordering it)."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        group = next((g for name, g in XDIST_GROUPS.items() if name in names), None)
        if group is None and any(name in names for name in MODULE_FIXTURES):
            group = item.nodeid.split("::")[0]
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=_hand_out_rank)


def _hand_out_rank(item: pytest.Item) -> int:
    """The vLLM tests first (their server's start is the longest wait); then the tests that
    mostly wait on a clock or on other processes (``waits``), so that the other worker's vLLM
    start-up computes on the core they leave free; then the slow tests and the groups of
    shared fixtures, so that no long test starts last while the other worker sits idle."""
    if "vllm" in getattr(item, "fixturenames", ()):
        return 0
    if item.get_closest_marker("waits"):
        return 1
    slow = item.get_closest_marker("slow") or item.get_closest_marker("smollm2")
    return 2 if slow or item.get_closest_marker("xdist_group") else 3


@pytest.fixture(scope="session", autouse=True)
def vllm_early_start(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EarlyStart | None]:
    """Launch the session's vLLM server in the background as the first test starts, when any
    test of the session needs it (tests/vllm/conftest.py). Not under pytest-xdist: the tests
    that need it form one group, which the scheduler hands out first, so the worker that gets
    them starts the server at once, and the other worker must not start a second one."""
    if os.environ.get("PYTEST_XDIST_WORKER") or not any(
        "vllm" in getattr(item, "fixturenames", ()) for item in request.session.items
    ):
        yield None
        return
    from tests.vllm.conftest import EarlyStart

    early = EarlyStart(tmp_path_factory)
    try:
        yield early
    finally:
        early.stop()


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    """A fresh, migrated database: SQLite and PostgreSQL (through ``db_url``)."""
    database = Database(db_url)
    database.upgrade()
    yield database
    database.dispose()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    """With ``BRANDBOT_TEST_TIMELINE=DIR``, each worker appends when each test started and
    ended to DIR/<worker>.jsonl, with the CPU seconds it spent (``cpu``: the worker itself;
    ``children``: the processes it started, finished or still running, such as a server that a
    later test stops): where a run's time goes, not just its slowest tests. The suite keeps
    both cores busy from start to end, so CPU seconds, not wall time, are what it costs."""
    out = os.environ.get("BRANDBOT_TEST_TIMELINE")
    if not out:
        yield
        return
    began, cpu, children = time.time(), _own_cpu(), _children_cpu()
    yield
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    line = json.dumps(
        {
            "test": item.nodeid,
            "start": began,
            "end": time.time(),
            "cpu": round(_own_cpu() - cpu, 3),
            "children": round(_children_cpu() - children, 3),
        }
    )
    Path(out).mkdir(parents=True, exist_ok=True)
    with open(Path(out) / f"{worker}.jsonl", "a", encoding="utf-8") as f:
        f.write(line + "\n")


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _children_cpu() -> float:
    """CPU seconds of this process's descendants: those reaped so far and those still alive."""
    import psutil

    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = reaped.ru_utime + reaped.ru_stime
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            times = child.cpu_times()
            total += times.user + times.system
    return total
