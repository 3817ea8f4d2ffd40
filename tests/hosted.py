"""An OpenAI-compatible endpoint the way hosted APIs are: ``/v1/models`` and no ``/health``.

A real HTTP server on a free loopback port (a thread of the test process), for the health
rule's other branch: OpenAI, OpenRouter and most proxies answer 404 on ``/health``. It can
require an API key (401 without it) and be told to answer ``/v1/models`` with an error.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

MODEL = "hosted/model-x"


class HostedApi:
    """``with HostedApi(api_key="k") as api: api.base_url``; ``api.models_status = 503``."""

    def __init__(self, *, api_key: str | None = None) -> None:
        self.api_key = api_key
        self.models_status = 200
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append(self.path)
                if self.path != "/v1/models":
                    return self._send(404, {"error": {"message": "not found", "code": 404}})
                wanted = f"Bearer {outer.api_key}"
                if outer.api_key and self.headers.get("Authorization") != wanted:
                    return self._send(401, {"error": {"message": "bad key", "code": 401}})
                if outer.models_status != 200:
                    return self._send(outer.models_status, {"error": {"message": "unwell"}})
                return self._send(200, {"object": "list", "data": [{"id": MODEL}]})

            def _send(self, status: int, body: object) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> HostedApi:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop answering and close the port (connections are refused from now on)."""
        if self._thread.is_alive():
            self.server.shutdown()
            self._thread.join(5)
        self.server.server_close()

    def __enter__(self) -> HostedApi:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
