"""``appliance admin serve``: the panel on cheroot (a production WSGI server) over TLS only,
TLS 1.2 at least; a self-signed certificate is made on first start unless one is configured.

Slow clients cannot starve it: the TLS handshake happens on a worker, not on the one thread
that accepts connections; each connection may spend ``READ_BUDGET_S`` in all waiting for what
it sends (handshake, request lines, headers, body: a client that trickles a byte at a time
is cut off when it is spent, while a keep-alive connection waits in cheroot's selector at no
cost); and one address holds ``CONNECTIONS_PER_ADDRESS`` connections at most."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
import weakref
from collections import Counter
from pathlib import Path
from typing import Any

from cheroot import errors, wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter

from appliance.admin.app import create_app
from appliance.config.settings import Settings
from appliance.deploy.scrape import self_signed
from appliance.storage.repository import Storage

log = logging.getLogger(__name__)


def certificate(settings: Settings) -> tuple[Path, Path]:
    """The configured certificate and key, or a self-signed pair under APPLIANCE_HOME/admin."""
    if settings.admin.tls_cert:
        return Path(settings.admin.tls_cert), Path(settings.admin.tls_key)
    host = settings.admin.listen.rpartition(":")[0]
    return self_signed(settings.home / "admin", host, "admin panel")


MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 1024 * 1024


def _strict(app: Any) -> Any:
    """Refuse, before the app sees it, a request a proxy and the panel could read two ways:
    both Content-Length and Transfer-Encoding (request smuggling), or a NUL in a header."""

    def guarded(environ: dict[str, Any], start_response: Any) -> Any:
        values = [str(v) for k, v in environ.items() if k.startswith("HTTP_")]
        both = "HTTP_TRANSFER_ENCODING" in environ and environ.get("CONTENT_LENGTH")
        if both or any("\x00" in v for v in values):
            start_response(
                "400 Bad Request", [("Content-Type", "text/plain"), ("Connection", "close")]
            )
            return [b"bad request\n"]
        return app(environ, start_response)

    return guarded


TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!SHA1:!SHA256:!SHA384"
WORKERS = 32
READ_BUDGET_S = 10.0
CONNECTIONS_PER_ADDRESS = 8


class _Budgeted:
    """A connection's TLS socket that may spend ``budget_s`` in all blocked in reads."""

    def __init__(self, sock: ssl.SSLSocket, budget_s: float, release: Any) -> None:
        self._sock = sock
        self._left = budget_s
        self._timeout = sock.gettimeout()
        self._release = weakref.finalize(self, release)  # once, on close or when collected

    def _read(self, call: Any, *args: Any) -> Any:
        # A spent budget, a timeout, a failed handshake or a broken record: the peer is
        # dropped at once (FatalSSLAlert), with no 408 written back over a TLS session that
        # may not exist yet (the write would try the handshake again, on this worker).
        if self._left <= 0:
            raise errors.FatalSSLAlert("the connection spent its time to send a request")
        self._sock.settimeout(
            self._left if self._timeout is None else min(self._timeout, self._left)
        )
        started = time.monotonic()
        try:
            return call(*args)
        except (ssl.SSLError, TimeoutError) as exc:
            raise errors.FatalSSLAlert(str(exc)) from exc
        finally:
            self._left -= time.monotonic() - started

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        return int(self._read(self._sock.recv_into, buffer, nbytes, flags))

    def recv(self, size: int, flags: int = 0) -> bytes:
        return bytes(self._read(self._sock.recv, size, flags))

    def settimeout(self, value: float | None) -> None:
        self._timeout = value
        self._sock.settimeout(value)

    def close(self) -> None:
        try:
            self._sock.close()
        finally:
            self._release()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class GuardedTlsAdapter(BuiltinSSLAdapter):
    """Cheroot's TLS adapter, with the handshake moved to the worker, a read budget per
    connection and a cap on connections per address."""

    def __init__(
        self,
        cert: str,
        key: str,
        *,
        budget_s: float = READ_BUDGET_S,
        per_address: int = CONNECTIONS_PER_ADDRESS,
    ) -> None:
        super().__init__(cert, key)
        self.budget_s = budget_s
        self.per_address = per_address
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()

    def wrap(self, sock: socket.socket) -> tuple[_Budgeted, dict[str, str]]:
        try:
            address = str(sock.getpeername()[0])
        except OSError as exc:
            raise errors.FatalSSLAlert(str(exc)) from exc
        with self._lock:
            if self._open[address] >= self.per_address:
                sock.close()
                raise errors.FatalSSLAlert(f"more than {self.per_address} connections at once")
            self._open[address] += 1
        try:
            wrapped = self.context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
        except (OSError, ValueError) as exc:
            self._release(address)
            raise errors.FatalSSLAlert(str(exc)) from exc
        # The handshake happens at the first read, on the worker, within the budget.
        budgeted = _Budgeted(wrapped, self.budget_s, lambda: self._release(address))
        return budgeted, {"wsgi.url_scheme": "https", "HTTPS": "on"}

    def _release(self, address: str) -> None:
        with self._lock:
            self._open[address] -= 1
            if self._open[address] <= 0:
                del self._open[address]


def server(settings: Settings, storage: Storage) -> wsgi.Server:
    host, _, port = settings.admin.listen.rpartition(":")
    cert, key = certificate(settings)
    app = create_app(settings, storage)
    httpd = wsgi.Server(
        (host, int(port)),
        _strict(app),
        numthreads=WORKERS,
        server_name="appliance-admin",
        timeout=10,
    )
    # A request line and headers of 16 KiB in all at most (431/414 past it), a body of 1 MiB.
    httpd.max_request_header_size = MAX_HEADER_BYTES
    httpd.max_request_body_size = MAX_BODY_BYTES
    adapter = GuardedTlsAdapter(
        str(cert), str(key), budget_s=READ_BUDGET_S, per_address=CONNECTIONS_PER_ADDRESS
    )
    adapter.context.minimum_version = ssl.TLSVersion.TLSv1_2
    # TLS 1.2 with forward secrecy and AEAD only (no CBC suites); TLS 1.3's are all AEAD.
    adapter.context.set_ciphers(TLS12_CIPHERS)
    httpd.ssl_adapter = adapter
    return httpd


def serve(settings: Settings) -> int:
    from appliance.service import open_storage

    storage = open_storage(settings)
    httpd = server(settings, storage)
    try:
        httpd.prepare()
        print(f"admin: https://{settings.admin.listen}/", flush=True)
        httpd.serve()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.stop()
        storage.close()
    return 0
