"""A throwaway PostgreSQL cluster for the tests: made with the installed server's own
``initdb`` in a temporary folder, started with ``pg_ctl`` on a free 127.0.0.1 port and a
private Unix socket, stopped and removed after. As root it runs as the ``postgres`` user (the
server refuses to run as root). Only for tests; never the system cluster."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text

USER = "appliance"
PASSWORD = "test-only-password"


def binaries() -> Path:
    """The newest installed server's bin folder (Debian keeps each version apart)."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if not found:
        raise RuntimeError("PostgreSQL is not installed (Debian postgresql): run scripts/setup")
    return found[-1].parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Cluster:
    root: Path
    port: int
    bin: Path
    _names: Iterator[int]

    def url(self, database: str = "postgres", **query: str) -> str:
        tail = "&".join(f"{k}={v}" for k, v in query.items())
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{database}" + (
            f"?{tail}" if tail else ""
        )

    def admin(self, sql: str) -> None:
        """One statement outside a transaction (CREATE and DROP DATABASE need that)."""
        engine = create_engine(self.url().replace("postgresql://", "postgresql+psycopg://"))
        try:
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                connection.execute(text(sql))
        finally:
            engine.dispose()

    def create_database(self) -> str:
        name = f"t{os.getpid()}_{next(self._names)}"
        self.admin(f"CREATE DATABASE {name}")
        return name

    def drop_database(self, name: str) -> None:
        self.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def client(self, tool: str, *args: str) -> subprocess.CompletedProcess[bytes]:
        """A client program of the same version (pg_dump, psql) over TCP, as the test user."""
        return subprocess.run(
            [str(self.bin / tool), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, *args],
            env={**os.environ, "PGPASSWORD": PASSWORD},
            capture_output=True,
            check=True,
            timeout=60,
        )

    def ctl(self, *args: str) -> None:
        _as_server([str(self.bin / "pg_ctl"), "-D", str(self.root / "data"), *args])


def _as_server(command: list[str]) -> None:
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=120)


def _own(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")


@contextlib.contextmanager
def cluster(tls: tuple[Path, Path] | None = None) -> Iterator[Cluster]:
    """A running cluster: password (SCRAM) logins over 127.0.0.1, and TLS with ``tls``'s
    certificate and key when given (a client then chooses with ``sslmode``)."""
    bin_dir = binaries()
    root = Path(tempfile.mkdtemp(prefix="appliance-pg-"))
    try:
        root.chmod(0o700)
        _own(root)
        password = root / "pw"
        password.write_text(PASSWORD + "\n")
        _own(password)
        initdb = [str(bin_dir / "initdb"), "-D", str(root / "data"), "-U", USER, "-E", "UTF8"]
        logins = ["--auth-local=scram-sha-256", "--auth-host=scram-sha-256"]
        _as_server([*initdb, *logins, f"--pwfile={password}", "--no-sync", "--no-instructions"])
        options = [
            f"-k {root}",
            "-c listen_addresses=127.0.0.1",
            "-c fsync=off",
            "-c max_connections=200",
        ]
        if tls is not None:
            for source, name in zip(tls, ("server.crt", "server.key"), strict=True):
                shutil.copyfile(source, root / name)
                (root / name).chmod(0o600)
                _own(root / name)
            options += ["-c ssl=on", f"-c ssl_cert_file={root}/server.crt"]
            options += [f"-c ssl_key_file={root}/server.key"]
        port = free_port()
        running = Cluster(root, port, bin_dir, itertools.count(1))
        log = str(root / "log")
        running.ctl("start", "-w", "-t", "60", "-l", log, "-o", " ".join([f"-p {port}", *options]))
        try:
            yield running
        finally:
            with contextlib.suppress(subprocess.SubprocessError):
                running.ctl("stop", "-m", "immediate", "-w")
    finally:
        shutil.rmtree(root, ignore_errors=True)
