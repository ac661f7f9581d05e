"""pytest fixtures of the test kit (registered through the ``pytest11`` entry point).

- ``postgres_server``: one PostgreSQL cluster for the test session. Missing binaries skip the
  test, except with ``CI=true``, where they fail it: CI must never silently skip PostgreSQL.
- ``postgres_url`` / ``sqlite_url``: a fresh, empty database for one test.
- ``db_url``: parametrized over both, so a storage test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from bot.testkit.postgres import PostgresCluster, PostgresUnavailable

# The other fixture modules of the kit, registered with this plugin.
pytest_plugins = ["bot.testkit.model_fixtures", "bot.testkit.slack_fixtures"]


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_in_ci(reason: str) -> NoReturn:
    """Skip a test whose prerequisite is missing, but fail it under ``CI=true``: in CI a
    missing part must never pass silently."""
    if _in_ci():
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster()
    try:
        cluster.start()
    except PostgresUnavailable as exc:
        cluster.stop()
        require_in_ci(f"PostgreSQL not available: {exc}")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresCluster) -> str:
    return postgres_server.create_database()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'brandbot.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        url: str = request.getfixturevalue("sqlite_url")
    else:
        url = request.getfixturevalue("postgres_url")
    return url
