"""Real servers on 127.0.0.1 for the remote-slide tests and benchmarks/slide_formats.py.

- :class:`FileServer`: an HTTP server over a directory that answers byte ranges (``Range:`` ->
  206, as object stores and CDNs do; ``http.server`` alone sends the whole file), with an optional
  latency added to every request (to measure what prefetching hides).
- :class:`S3Server`: moto's S3 server mode on a free loopback port, optionally enforcing
  credentials (moto's IAM checks, switched on after the bucket is filled).

Both run in daemon threads, are bounded by the ``with`` block and stop at its end.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    latency_s = 0.0
    server_state: dict[str, int]  # {"fail_next": n}: the next n requests get 503

    def _failing(self) -> bool:
        if self.server_state["fail_next"] > 0:
            self.server_state["fail_next"] -= 1
            self.send_error(503, "Service Unavailable (FileServer.fail_next)")
            return True
        return False

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _file(self) -> Path | None:
        path = Path(self.translate_path(self.path))
        return path if path.is_file() else None

    def do_HEAD(self) -> None:
        time.sleep(self.latency_s)
        if not self._failing():
            super().do_HEAD()

    def do_GET(self) -> None:
        time.sleep(self.latency_s)
        if self._failing():
            return
        path = self._file()
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if path is None or match is None:
            return super().do_GET()
        size = path.stat().st_size
        start = int(match.group(1))
        end = min(int(match.group(2)) if match.group(2) else size - 1, size - 1)
        if start >= size:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.end_headers()
            return
        with path.open("rb") as fh:
            fh.seek(start)
            body = fh.read(end - start + 1)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self.wfile.write(body)


class FileServer:
    """``with FileServer(directory, latency_s=0.02) as srv: srv.url("a.svs")``; ``srv.fail_next(n)``
    answers the next ``n`` requests with 503 (a flaky store)."""

    def __init__(self, directory: str | Path, *, latency_s: float = 0.0) -> None:
        self._state = {"fail_next": 0}
        handler = type(
            "Handler", (_RangeHandler,), {"latency_s": float(latency_s), "server_state": self._state}
        )
        self._httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(handler, directory=str(directory))
        )
        self._httpd.daemon_threads = True
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def fail_next(self, n: int) -> None:
        self._state["fail_next"] = int(n)

    @property
    def failures_left(self) -> int:
        return self._state["fail_next"]

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)


class S3Server:
    """moto's S3 server on 127.0.0.1 (a free port). ``storage_options`` are fsspec's (s3fs) options
    with this server's endpoint and credentials; after :meth:`enforce_credentials` only those work."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.endpoint = ""
        self.key, self.secret = "testing", "testing"

    @property
    def storage_options(self) -> dict[str, Any]:
        return {
            "endpoint_url": self.endpoint,
            "key": self.key,
            "secret": self.secret,
            "skip_instance_cache": True,
        }

    def options(self, *, key: str, secret: str) -> dict[str, Any]:
        return {**self.storage_options, "key": key, "secret": secret}

    def put(self, local: str | Path, url: str, data: bytes | None = None) -> str:
        """Upload ``local`` (or ``data``) to ``s3://bucket/key`` (the bucket is made when missing)."""
        import fsspec

        fs = fsspec.filesystem("s3", **self.storage_options)
        bucket = url.split("://", 1)[1].split("/", 1)[0]
        if not fs.exists(bucket):
            fs.mkdir(bucket)
        if data is None:
            fs.put_file(str(local), url)
        else:
            fs.pipe_file(url, data)
        return url

    def enforce_credentials(self) -> None:
        """Make an IAM user with S3 rights, use its key from now on, and switch moto's checks on."""
        import boto3

        iam = boto3.client(
            "iam",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        iam.create_user(UserName="reader")
        iam.put_user_policy(
            UserName="reader",
            PolicyName="s3",
            PolicyDocument='{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}',
        )
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        self.key, self.secret = key["AccessKeyId"], key["SecretAccessKey"]
        self._reset_auth(b"0")

    def _reset_auth(self, count: bytes) -> None:
        """moto's switch: after ``count`` more unauthenticated actions, every request is checked."""
        req = urllib.request.Request(
            f"{self.endpoint}/moto-api/reset-auth",
            data=count,
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        urllib.request.urlopen(req, timeout=10).read()

    def __enter__(self) -> S3Server:
        os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._reset_auth(b"inf")  # moto's setting is process-wide: leave it as found
        finally:
            self._server.stop()
