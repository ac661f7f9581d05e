"""brandbot's test kit, installed with the package as a pytest plugin (``bot.testkit.plugin``).

Plugin authors get the same fixtures our own tests use: a real PostgreSQL server started for
the session, a fresh database per test, and (with the bot runtime) a fake Slack Web API.
"""

from bot.testkit.postgres import PostgresCluster, PostgresUnavailable, find_pg_bin

__all__ = ["PostgresCluster", "PostgresUnavailable", "find_pg_bin"]
