"""The wheel, installed into a fresh virtual environment with the bot image's install line
(``pip install ".[postgres]"``), runs: `brandbot run` in Socket Mode (against the test kit's
fake Socket Mode server) and in HTTP mode, and `brandbot worker --once`.

The environment sees nothing of ours or of the test environment (no system site-packages, no
PYTHONPATH); pip resolves every dependency from the package index or its cache. Only torch, a
multi-GB download the images install on their own line, is linked in from this environment
when its version satisfies pyproject.toml, as the image's earlier ``pip install torch`` does."""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement

from bot.testkit.plugin import require_in_ci
from bot.testkit.slack import FakeSlack
from bot.testkit.socket_mode import FakeSocketMode
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "bot", "plugins", "trainer", "serving")

pytestmark = pytest.mark.slow


def bot_image_extras() -> str:
    line = re.search(
        r'pip install "\.\[([^\]]*)\]"', (ROOT / "deploy" / "Dockerfile.bot").read_text()
    )
    assert line
    return line.group(1)


def _link_torch(site_packages: Path) -> None:
    """Link this environment's torch in, if pyproject.toml's range admits it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = next(Requirement(r) for r in project["dependencies"] if r.startswith("torch"))
    try:
        dist = md.distribution("torch")
    except md.PackageNotFoundError:
        return
    if not wanted.specifier.contains(dist.version, prereleases=True):
        return
    here = Path(str(dist.locate_file("")))
    tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
    for top in tops:
        if (here / top).exists() and not top.endswith(".data"):
            (site_packages / top).symlink_to(here / top)


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("packaging")
    src = work / "src"
    src.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / name)
    wheels = work / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(src)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = wheels.glob("brandbot-*.whl")
    venv = work / "venv"
    base_python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base_python, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    _link_torch(Path(purelib))
    install = subprocess.run(
        # --no-compile: the run imports a fraction of what pip would byte-compile up front
        [str(python), "-m", "pip", "install", "-q", "--no-compile", f"{wheel}[{bot_image_extras()}]"],
        capture_output=True, text=True, timeout=1200, env=_clean_env(),
    )  # fmt: skip
    if install.returncode != 0:
        if "No matching distribution" in install.stderr or "connection" in install.stderr.lower():
            require_in_ci(f"the package index is unreachable: {install.stderr[-300:]}")
        pytest.fail(install.stderr[-3000:])
    return venv


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in {"PYTHONPATH", "VIRTUAL_ENV"} and not k.startswith(("BRANDBOT_", "SLACK_"))}  # fmt: skip
    env.update(extra)
    return env


def _start(venv: Path, args: list[str], cwd: Path, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(venv / "bin" / "brandbot"), *args], cwd=cwd, env=_clean_env(**env),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _wait_healthy(proc: subprocess.Popen[str], port: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"brandbot exited {proc.returncode}:\n{out[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):  # not listening yet
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    pytest.fail("brandbot did not answer /healthz")


@pytest.fixture
def stopper() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_fresh_install_has_no_access_to_the_test_environment(fresh_venv: Path) -> None:
    probe = (
        "import importlib.util as u, bot; "
        "print(u.find_spec('pytest') is None, u.find_spec('mypy') is None, bot.__file__)"
    )
    out = subprocess.run([str(fresh_venv / "bin" / "python"), "-c", probe], cwd=fresh_venv,
                         capture_output=True, text=True, env=_clean_env(), check=True)  # fmt: skip
    no_pytest, no_mypy, bot_file = out.stdout.split()
    assert no_pytest == no_mypy == "True"
    assert Path(bot_file).is_relative_to(fresh_venv)


def test_socket_mode_runs_from_the_wheel(
    fresh_venv: Path, tmp_path: Path, fake_slack: FakeSlack, fake_socket_mode: FakeSocketMode,
    stopper: list[subprocess.Popen[str]],
) -> None:  # fmt: skip
    port = free_port()
    proc = _start(
        fresh_venv, ["run", "--port", str(port)], tmp_path,
        SLACK_BOT_TOKEN=fake_slack.bot_token, SLACK_APP_TOKEN=fake_slack.app_token,
        SLACK_API_URL=fake_slack.api_url, BRANDBOT_DATA_DIR=str(tmp_path / "data"),
        BRANDBOT_DATABASE_URL=f"sqlite:///{tmp_path / 'bot.db'}",
    )  # fmt: skip
    stopper.append(proc)
    _wait_healthy(proc, port)
    fake_socket_mode.wait_for_connection(timeout=60)


def test_http_mode_runs_from_the_wheel(
    fresh_venv: Path, tmp_path: Path, fake_slack: FakeSlack, stopper: list[subprocess.Popen[str]]
) -> None:
    port = free_port()
    proc = _start(
        fresh_venv, ["run", "--http", "--port", str(port)], tmp_path,
        SLACK_BOT_TOKEN=fake_slack.bot_token, SLACK_SIGNING_SECRET="s3cret",
        SLACK_API_URL=fake_slack.api_url, BRANDBOT_DATA_DIR=str(tmp_path / "data"),
        BRANDBOT_DATABASE_URL=f"sqlite:///{tmp_path / 'bot.db'}",
    )  # fmt: skip
    stopper.append(proc)
    _wait_healthy(proc, port)


def test_worker_once_runs_from_the_wheel(fresh_venv: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [str(fresh_venv / "bin" / "brandbot"), "worker", "--once"], cwd=tmp_path,
        env=_clean_env(BRANDBOT_DATA_DIR=str(tmp_path / "data"),
                       BRANDBOT_DATABASE_URL=f"sqlite:///{tmp_path / 'w.db'}"),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
