"""A throw-away PostgreSQL cluster for tests: initdb into a temporary folder, start on a free
loopback port, create one database per test, stop and delete at the end.

PostgreSQL refuses to run as root, so when the tests run as root the cluster is created and
started as the ``postgres`` account (``runuser``) in a folder that account owns.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

RUN_AS = os.environ.get("BRANDBOT_PG_USER", "postgres")


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries are not installed, or the cluster did not start."""


def find_pg_bin() -> Path | None:
    """The folder with ``initdb`` and ``pg_ctl``: $BRANDBOT_PG_BIN, Debian's layout, or PATH."""
    explicit = os.environ.get("BRANDBOT_PG_BIN")
    if explicit:
        return Path(explicit)
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
    )
    for folder in reversed(candidates):
        if (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    found = shutil.which("pg_ctl")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PostgresCluster:
    """One running server. Use ``start()``/``stop()`` or as a context manager."""

    def __init__(self) -> None:
        self.bin_dir = find_pg_bin()
        self.port = _free_port()
        self.base = Path(tempfile.mkdtemp(prefix="brandbot-pg-"))
        self.data_dir = self.base / "data"
        self.socket_dir = self.base / "sock"
        self.log_file = self.base / "server.log"
        self.as_other_user = os.geteuid() == 0
        self._options = ""

    def _cmd(self, *args: str) -> list[str]:
        assert self.bin_dir is not None
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self.as_other_user:
            return ["runuser", "-u", RUN_AS, "--", *command]
        return command

    def _run(self, *args: str) -> None:
        proc = subprocess.run(self._cmd(*args), capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            log = self.log_file.read_text() if self.log_file.exists() else ""
            raise PostgresUnavailable(
                f"{args[0]} failed ({proc.returncode}): {proc.stderr.strip()} {log[-2000:]}"
            )

    def start(self) -> PostgresCluster:
        if self.bin_dir is None:
            raise PostgresUnavailable(
                "PostgreSQL server binaries not found: install Debian's `postgresql` package "
                "(`make test` does) or set BRANDBOT_PG_BIN to the folder holding pg_ctl"
            )
        self.socket_dir.mkdir()
        self.base.chmod(0o755)
        if self.as_other_user:
            try:
                shutil.chown(self.base, RUN_AS)
                shutil.chown(self.socket_dir, RUN_AS)
            except LookupError:
                raise PostgresUnavailable(
                    f"running as root, but there is no {RUN_AS!r} account to run PostgreSQL as"
                ) from None
        self._run(
            "initdb", "-D", str(self.data_dir), "-U", "postgres", "--auth=trust",
            "-E", "UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        options = (
            f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200"
        )
        if self.as_other_user:
            self.log_file.touch()
            shutil.chown(self.log_file, RUN_AS)
        self._options = options
        self.resume()
        return self

    def pause(self) -> None:
        """Stop the server, keeping its data: the database is down until ``resume``."""
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop")

    def resume(self) -> None:
        """Start the server (again) on its port, with its data."""
        self._run(
            "pg_ctl", "-D", str(self.data_dir), "-o", self._options, "-l", str(self.log_file),
            "-w", "-t", "60", "start",
        )  # fmt: skip

    def stop(self) -> None:
        if self.bin_dir is not None and (self.data_dir / "postmaster.pid").exists():
            subprocess.run(
                self._cmd("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop"),
                capture_output=True,
                check=False,
            )
        shutil.rmtree(self.base, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database and return its SQLAlchemy URL."""
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
