"""Real servers for the tests, on 127.0.0.1 only: an `mlflow server` (on SQLite or PostgreSQL) and a PostgreSQL
server of Debian's package (`initdb` + `postgres` as the `postgres` account, in a folder of the test's own)."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

MLFLOW = Path(sys.executable).with_name("mlflow")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 that can be stopped and started again on the same port and store."""

    def __init__(self, folder: Path, backend_uri: str | None = None) -> None:
        self.folder = folder
        self.backend_uri = backend_uri or f"sqlite:///{folder / 'server.db'}"
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.log = folder / "mlflow-server.log"

    def start(self, workers: int = 1) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(MLFLOW), "server", "--host", "127.0.0.1", "--port", str(self.port),
                 "--backend-store-uri", self.backend_uri,
                 "--artifacts-destination", str(self.folder / "server-artifacts"), "--workers", str(workers)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while not self.healthy():
            assert self.process.poll() is None, f"mlflow server exited: {self.log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        """Kill the server (SIGKILL: it goes away at once, as in a crash; the store keeps what was committed)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        self.process = None


def postgres_bin() -> Path | None:
    """The folder of Debian's PostgreSQL server programs (initdb, postgres), if installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


class PostgresServer:
    """A throw-away PostgreSQL cluster: trust authentication, listening on 127.0.0.1 only, database `mlflow`.
    PostgreSQL refuses to run as root, so as root it runs as the `postgres` account Debian's package creates, in a
    folder of its own directly under /tmp (pytest's folders are closed to other accounts); `stop` removes it."""

    def __init__(self) -> None:
        self.bin = postgres_bin()
        if self.bin is None:
            raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
        self.folder = Path(tempfile.mkdtemp(prefix="tfmamba-pg-"))
        self.data = self.folder / "pgdata"
        self.port = free_port()
        self.uri = f"postgresql://postgres@127.0.0.1:{self.port}/mlflow"
        self.process: subprocess.Popen | None = None

    def _as_owner(self, command: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command

    def start(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        subprocess.run(self._as_owner([str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                                       "--auth=trust", "-E", "UTF8"]), check=True, capture_output=True)
        self._serve()
        subprocess.run([str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "mlflow"], check=True,
                       capture_output=True)

    def _serve(self) -> None:
        """Start the server on the existing data folder and wait until it accepts connections."""
        self.process = subprocess.Popen(
            self._as_owner([str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
                            "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.folder}",
                            "-c", "max_connections=200", "-c", "fsync=off"]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            ready = subprocess.run([str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                                   capture_output=True)
            if ready.returncode == 0:
                break
            assert self.process.poll() is None and time.monotonic() < deadline, "postgres did not start"
            time.sleep(0.3)

    def shut_down(self) -> None:
        """Stop the server as a restart or a failover does, keeping its data (`restart` brings it back on the same
        port): a fast shutdown, which ends the open sessions, and wait until the postmaster has exited. (A SIGTERM
        to the process group reached `runuser`, which exited at once, and began a smart shutdown, which waits for
        every client to disconnect: a client holding a pool kept the old postmaster, and its lock, alive.)"""
        if self.process is None:
            return
        stopped = subprocess.run(self._as_owner([str(self.bin / "pg_ctl"), "stop", "-D", str(self.data), "-m", "fast",
                                                 "-w", "-t", "60"]), capture_output=True, text=True)
        if stopped.returncode != 0 and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None

    def restart(self) -> None:
        self._serve()

    def stop(self) -> None:
        self.shut_down()
        shutil.rmtree(self.folder, ignore_errors=True)
