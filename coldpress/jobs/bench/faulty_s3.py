"""A fault injector in front of an S3 server (moto's, in the tests and ``bench scale --faults``): an
HTTP proxy on 127.0.0.1 that forwards each request to the server, except for a chosen fraction,
which it answers with 503 SlowDown or 500 InternalError (S3's XML error bodies), drops (the
connection is reset with no answer), stalls (holds the request ``stall_s`` seconds, never forwarded,
then closes the connection: the client's read timeout must be shorter, see ``client_options``) or
truncates (forwards a GET and sends its headers with the whole Content-Length but only half the
body, then closes). The choice is a seeded random draw per request, so a run is reproducible;
``counts`` says what it did.

    with FaultyS3(upstream="http://127.0.0.1:5000", rate=0.05, seed=1) as proxy:
        encode_local(src, "s3://bucket/archive", storage_options={"client_kwargs": {"endpoint_url": proxy.url}})
        proxy.counts  # {"forwarded": ..., "503": ..., "500": ..., "reset": ...}
"""

from __future__ import annotations

import http.client
import random
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

FAULTS = ("503", "500", "reset", "stall", "truncate")
#: The client settings that make a stall a fault (a read timeout shorter than the stall) and leave
#: room for the retries: storage options for s3fs (``config_kwargs`` go to botocore's Config).
STALL_S = 2.0


def client_options(url: str) -> dict:
    return {"client_kwargs": {"endpoint_url": url}, "skip_instance_cache": True,
            "config_kwargs": {"read_timeout": STALL_S / 2, "connect_timeout": STALL_S / 2}}
_BODIES = {
    "503": (503, "SlowDown", "Please reduce your request rate."),
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
}
_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


class FaultyS3:
    def __init__(self, upstream: str, rate: float, seed: int = 0, faults: tuple[str, ...] = FAULTS,
                 stall_s: float = STALL_S, only: str | None = None) -> None:
        # ``only``: a path prefix ("/bucket/src/"); other requests are always forwarded.
        self.only = only
        self.upstream = urlsplit(upstream)
        self.rate = rate
        self.faults = faults
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        #: (method, path, fault) of every fault injected, in order.
        self.injections: list[tuple[str, str, str]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fault = proxy._draw(self.command, self.path) if proxy.only is None or self.path.startswith(proxy.only) else None
                if fault is None and proxy.only is not None and not self.path.startswith(proxy.only):
                    with proxy._lock:
                        proxy.counts["forwarded"] += 1
                if fault == "stall":
                    time.sleep(stall_s)
                    self.close_connection = True
                    self.connection.close()
                    return
                if fault == "reset":
                    self.close_connection = True
                    try:
                        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    finally:
                        self.connection.close()
                    return
                if fault in _BODIES:
                    status, code, message = _BODIES[fault]
                    payload = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                               f"<Message>{message}</Message><RequestId>faulty</RequestId></Error>").encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                self.send_response(response.status, response.reason)
                for k, v in response.getheaders():
                    if k.lower() not in _HOP and (k.lower() != "content-length" or self.command == "HEAD"):
                        self.send_header(k, v)  # a HEAD's Content-Length is the object's size
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if fault == "truncate":  # the whole length announced, half of it sent
                    self.wfile.write(data[:len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                elif self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _draw(self, method: str, path: str = "") -> str | None:
        with self._lock:
            if self._rng.random() < self.rate:
                fault = self._rng.choice(self.faults)
                if fault == "truncate" and method != "GET":  # only a body can be cut short
                    fault = "reset"
                self.injections.append((method, path, fault))
            else:
                fault = "forwarded"
            self.counts[fault] += 1
        return None if fault == "forwarded" else fault

    @property
    def injected(self) -> int:
        return sum(self.counts[f] for f in FAULTS)

    def __enter__(self) -> FaultyS3:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
