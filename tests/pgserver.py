"""A real PostgreSQL 16 with pgvector for the sink tests, started by the suite on a Unix socket in a temp dir.

``pgserver`` (PyPI) bundles the server binaries and the pgvector extension; ``Postgres.start`` runs
``initdb`` and the server (as root it runs them as an unprivileged user it creates) and ``dsn``
connects over the socket. Nothing listens on TCP.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path


class Postgres:
    """One PostgreSQL server for a test module; ``database(name)`` gives each test its own database."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="batchembed-pg-"))
        self.server = None

    def start(self) -> Postgres:
        import pgserver

        self.server = pgserver.get_server(self.root / "data", cleanup_mode="stop")
        self.server.psql("CREATE EXTENSION IF NOT EXISTS vector;")
        return self

    @property
    def socket_dir(self) -> str:
        return str(self.server.get_uri()).split("host=", 1)[1]

    def database(self, name: str) -> str:
        """A fresh database ``name``; its DSN (a URI over the Unix socket)."""
        self.server.psql(f'DROP DATABASE IF EXISTS "{name}";')
        self.server.psql(f'CREATE DATABASE "{name}";')
        self.server.psql(f'\\c "{name}"\nCREATE EXTENSION IF NOT EXISTS vector;')
        return f"postgresql://postgres@/{name}?host={self.socket_dir}"

    def stop(self) -> None:
        """Stop the server and delete its data dir (about 185 MB a server; a run of the suite starts several)."""
        try:
            if self.server is not None:
                self.server.cleanup()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
