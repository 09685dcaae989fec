"""A real `mlflow server` on 127.0.0.1 for tests: started, killed mid-run and restarted on the same store.

free_port() only finds a port that was free a moment ago; another process may take it before the
server binds. The first start therefore retries on another port when the server could not bind;
a restart keeps its port (runs already know the server's URI).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PortInUse(RuntimeError):
    """The server could not bind its port: another process took it."""


class MlflowServer:
    """`mlflow server` with a SQLite backend and proxied artifacts in `folder`, bound to 127.0.0.1."""

    def __init__(self, folder: Path, port: int | None = None, workers: int = 1):
        self.folder = Path(folder)
        self.port = port or free_port()
        self.workers = workers
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self._fixed_port = port is not None  # a port the caller chose is never changed

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
            "--artifacts-destination", str(self.folder / "artifacts"),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers),
        ]

    def environment(self) -> dict[str, str] | None:
        return None  # this process's

    def start(self, timeout: float = 180, attempts: int = 4) -> "MlflowServer":
        for attempt in range(1, attempts + 1):
            try:
                return self._start(timeout)
            except PortInUse:
                if self._fixed_port or attempt == attempts:
                    raise
                self.port = free_port()
                self.uri = f"http://127.0.0.1:{self.port}"
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> "MlflowServer":
        self.folder.mkdir(parents=True, exist_ok=True)
        log_path = self.folder / "server.log"
        offset = log_path.stat().st_size if log_path.exists() else 0
        with socket.socket() as probe:  # taken already: do not mistake its owner's /health for ours
            if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                raise PortInUse(f"port {self.port} is taken")
        log = open(log_path, "a")
        # its own process group: uvicorn runs in a child, and kill() must take both down
        self.process = subprocess.Popen(self.command(), env=self.environment(), stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._exited(log_path, offset)
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2):
                    pass
            except OSError:
                time.sleep(0.5)
                continue
            self._fixed_port = True  # from now on clients know this URI
            return self
        self.kill()
        raise RuntimeError(f"mlflow server did not answer within {timeout} s")

    def _exited(self, log_path: Path, offset: int):
        with open(log_path, errors="replace") as f:
            f.seek(offset)
            text = f.read()
        self.process = None
        if re.search(r"address already in use|errno 98", text, re.IGNORECASE):
            raise PortInUse(f"port {self.port} is taken: {text[-500:]}")
        raise RuntimeError(f"mlflow server exited: {text[-2000:]}")

    def kill(self) -> None:
        """SIGKILL, as when a login node reboots: no clean shutdown."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        self.process = None


class AuthServer(MlflowServer):
    """slurm/mlflow_server.sh with MLFLOW_AUTH=1: MLflow's basic-auth app on 127.0.0.1, as a cluster's login node runs
    it. The owner's credentials file (made by the script, 0600) is `credentials`; a restart keeps users and port."""

    def __init__(self, folder: Path, port: int | None = None):
        super().__init__(folder, port)
        self.config_home = self.folder / "config"
        self.credentials = self.config_home / "le5" / "mlflow-credentials"

    def command(self) -> list[str]:
        return ["bash", str(Path(__file__).resolve().parents[1] / "slurm" / "mlflow_server.sh")]

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "LE5_"))}
        env.update(MLFLOW_AUTH="1", MLFLOW_PORT=str(self.port), MLFLOW_WORKERS="1",
                   XDG_CONFIG_HOME=str(self.config_home),
                   MLFLOW_BACKEND_STORE_URI=f"sqlite:///{self.folder / 'mlflow.db'}",
                   MLFLOW_ARTIFACTS_DESTINATION=str(self.folder / "artifacts"),
                   MLFLOW_AUTH_DIR=str(self.folder / "auth"))
        return env

    def username(self) -> str:
        return self._file()["username"]

    def password(self) -> str:
        return self._file()["password"]

    def _file(self) -> dict[str, str]:
        return dict(line.split("=", 1) for line in self.credentials.read_text().splitlines())
