"""The test server helper survives losing its port to another process between free_port() and binding."""

from __future__ import annotations

import socket
import sys

import pytest

import mlflow_server
from mlflow_server import MlflowServer, PortInUse

# A stand-in for `mlflow server` (seconds to start) that binds like it does: an HTTP server with /health
# on 127.0.0.1:PORT, failing with "Address already in use" when the port is taken.
HEALTH = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"OK")
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


class QuickServer(MlflowServer):
    def command(self) -> list[str]:
        return [sys.executable, "-c", HEALTH, str(self.port)]


@pytest.fixture
def taken():
    """A port another process bound after free_port() returned it: bound, not listening (no answer)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]


@pytest.mark.processes  # a real mlflow server
def test_a_port_taken_before_the_server_binds_is_retried_on_another(tmp_path, monkeypatch, taken):
    ports = iter([taken])
    monkeypatch.setattr(mlflow_server, "free_port", lambda: next(ports, None) or socket_port())
    server = QuickServer(tmp_path)
    assert server.port == taken
    try:
        server.start(timeout=30)
        assert server.port != taken and server.uri == f"http://127.0.0.1:{server.port}"
        assert "Address already in use" in (tmp_path / "server.log").read_text()  # it did lose the race once
    finally:
        server.kill()


@pytest.mark.processes  # a real mlflow server
def test_a_port_the_caller_chose_is_kept(tmp_path, taken):
    server = QuickServer(tmp_path, port=taken)
    with pytest.raises(PortInUse):
        server.start(timeout=30)
    assert server.port == taken


def socket_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
