"""A real S3 server on loopback for benchmarks and tests: moto's standalone server, with dummy credentials
in the environment and nothing of the user's AWS settings let in."""

from __future__ import annotations

import logging
import os
from typing import Any

from coldpress.errors import ColdpressError


class LocalS3Server:
    """moto's standalone S3 server on 127.0.0.1 with dummy credentials in the environment (restored on exit);
    ``with LocalS3Server() as endpoint_url``. ``missing``: the message of the ColdpressError raised when
    moto's server is not installed (what the caller needs it for, and how to install it)."""

    ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}

    def __init__(self, missing: str = "moto's S3 server is not installed: pip install 'moto[server]'") -> None:
        self.missing = missing

    def __enter__(self) -> str:
        try:
            from moto.server import ThreadedMotoServer
        except ImportError as exc:
            raise ColdpressError(self.missing) from exc
        # Only the dummy credentials: a profile, endpoint, retry or CA setting of the user's must not leak in.
        self._saved = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
        for k in self._saved:
            del os.environ[k]
        os.environ.update(self.ENV)
        try:
            logging.getLogger("werkzeug").setLevel(logging.ERROR)  # not a line per request
            self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            self._server.start()
            host, port = self._server.get_host_and_port()
        except BaseException:
            self._restore()
            raise
        return f"http://{host}:{port}"

    def __exit__(self, *exc: Any) -> None:
        try:
            self._server.stop()
        finally:
            self._restore()

    def _restore(self) -> None:
        for k in [k for k in os.environ if k.startswith("AWS_")]:
            del os.environ[k]
        os.environ.update(self._saved)
