"""Servers the tests run as child processes on 127.0.0.1 (moto, Azurite): a free port, started and
waited for until the port accepts connections, killed at the end (their state is thrown away)."""

from __future__ import annotations

import socket
import subprocess
import time


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A server on ``127.0.0.1:port`` run as a child process; subclasses :meth:`launch` it in ``start``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def launch(self, cmd: list[str], name: str) -> None:
        """Start ``cmd`` (output discarded) and wait until it accepts connections on ``port``.

        Raises RuntimeError naming ``name`` if it exits first. It is waited for however long a loaded
        machine takes to start it (pytest-timeout ends a hang).
        """
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{name} exited at start-up") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Kill the server: its state is thrown away, so there is no need for a graceful exit."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
