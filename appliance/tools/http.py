"""Tools declared in the configuration (``[[tools.http]]``) that call the organization's own
HTTPS services.

No name is looked up: the URL's host is one of ``[tools] allowed_hosts``, and the connection
goes to the address given with it, the certificate verified for the name (sent as SNI), TLS 1.2
at least, against ``ca_file`` (mutual TLS with ``client_cert``). The response is JSON; only the
fields that ``speak`` names are taken from it, and the rest is dropped at once: nothing else
of it reaches the model, the store, the audit trail or a log. A failure (timeout, refused
connection, certificate, a status outside 2xx, a body that is not JSON or lacks a field) is a
ToolError with its code (``tools.http.timeout``, ``tools.http.status``, ...), so the caller
hears the configured failed reply and the ToolBox audits the code; no error carries any of
the service's answer.
"""

from __future__ import annotations

import decimal
import http.client
import json
import logging
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from appliance.config.secrets import read_owner_only
from appliance.config.settings import (
    CALLER_PLACEHOLDER,
    IDEMPOTENT_METHODS,
    AllowedHost,
    HttpTool,
    ToolsSettings,
    placeholders,
)
from appliance.core.errors import ConfigError
from appliance.identity.levels import Assurance
from appliance.tools.registry import Param, Tool, ToolError

log = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 1 << 20
"""A larger answer is refused (``tools.http.bad_response``) without being read further."""
MAX_SPOKEN_FIELD = 200
"""Characters one spoken field may have."""
_RETRY_STATUSES = frozenset({502, 503, 504})
_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


class _PinnedConnection(http.client.HTTPSConnection):
    """HTTPS to a fixed address, the certificate verified for ``server_name`` (no lookup)."""

    def __init__(
        self, address: str, port: int, server_name: str, context: ssl.SSLContext, timeout_s: float
    ) -> None:
        super().__init__(address, port, timeout=timeout_s, context=context)
        self.server_name = server_name
        self.tls = context

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)  # TCP to the address ...
        self.sock = self.tls.wrap_socket(self.sock, server_hostname=self.server_name)  # ... TLS


def tls_context(settings: ToolsSettings) -> ssl.SSLContext:
    """Certificate and host name verified (``create_default_context``), TLS 1.2 at least, only
    ``ca_file``'s CAs when one is given; the client certificate for mutual TLS when set."""
    try:
        context = ssl.create_default_context(cafile=settings.ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            "config.unreadable", f"tools.ca_file: cannot load {settings.ca_file} ({exc})"
        ) from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.client_cert:
        read_owner_only(settings.client_key, "tools.client_key")  # refused if others can read
        try:
            context.load_cert_chain(settings.client_cert, settings.client_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                "config.unreadable",
                f"tools.client_cert: cannot load {settings.client_cert} with its key ({exc})",
            ) from exc
    return context


class TlsContext:
    """The TLS context of the HTTP tools, made once (on first use, or at once by
    ``http_tools``) and shared by them."""

    def __init__(self, settings: ToolsSettings) -> None:
        self.settings = settings
        self._context: ssl.SSLContext | None = None
        self._lock = threading.Lock()

    def get(self) -> ssl.SSLContext:
        with self._lock:
            if self._context is None:
                self._context = tls_context(self.settings)
            return self._context


@dataclass(frozen=True)
class HttpCall:
    """One declared tool's request, run for a caller with checked arguments."""

    tool: HttpTool
    host: AllowedHost
    tls: TlsContext
    bearer_file: str = ""

    def __call__(self, caller: str, values: Mapping[str, Any]) -> str:
        method, target, body = self.request(caller, values)
        headers = {
            "Host": self._authority(),
            "Accept": "application/json",
            "User-Agent": "appliance",
            "Connection": "close",
        }
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self.bearer_file:  # read at each request: a rotated token needs no restart
            try:
                token = read_owner_only(self.bearer_file, "tools.bearer_file")
            except ConfigError as exc:  # refused (or unreadable): nothing is sent
                raise ToolError(exc.code, exc.message) from exc
            if not token or not token.isprintable():  # one line: nothing to inject a header
                raise ToolError("tools.http.bearer", "tools.bearer_file: not a one-line token")
            headers["Authorization"] = f"Bearer {token}"
        attempts = 1 + (self.tool.retries if self.tool.method in IDEMPOTENT_METHODS else 0)
        for attempt in range(1, attempts + 1):
            started = time.monotonic()
            try:
                raw = self._exchange(method, target, body, headers)
            except _Retryable as exc:
                log.info("http tool %s: %s (attempt %d)", self.tool.name, exc.error.code, attempt)
                if attempt == attempts:
                    raise exc.error from exc.__cause__
                continue
            log.info(
                "http tool %s: answered in %.3f s (attempt %d)",
                self.tool.name,
                time.monotonic() - started,
                attempt,
            )
            return spoken(self.tool.speak, raw, self.tool.name)
        raise AssertionError("unreachable")  # pragma: no cover

    def request(self, caller: str, values: Mapping[str, Any]) -> tuple[str, str, bytes | None]:
        """The method, the request target (path and query, the placeholders filled
        URL-encoded) and the JSON body of the arguments the URL does not hold."""
        parts = urlsplit(self.tool.url)
        template = parts.path or "/"
        query = parts.query
        named = set(placeholders(f"{template}?{query}", "url"))
        if CALLER_PLACEHOLDER in named and not caller:
            raise ToolError("tools.http.no_caller", f"{self.tool.name}: the call has no caller ID")
        filled = {k: _text(v) for k, v in values.items()}
        filled[CALLER_PLACEHOLDER] = caller

        def fill(text: str) -> str:
            for name in named:
                text = text.replace("{" + name + "}", quote(filled.get(name, ""), safe=""))
            return text

        target = fill(template) + (f"?{fill(query)}" if query else "")
        rest = {k: _json_value(v) for k, v in values.items() if k not in named}
        if self.tool.method in _WITH_BODY:
            return self.tool.method, target, json.dumps(rest).encode()
        if rest:
            extra = urlencode({k: _text(v) for k, v in values.items() if k not in named})
            target += ("&" if "?" in target else "?") + extra
        return self.tool.method, target, None

    def _authority(self) -> str:
        port = urlsplit(self.tool.url).port
        return self.host.name if port in (None, 443) else f"{self.host.name}:{port}"

    def _exchange(
        self, method: str, target: str, body: bytes | None, headers: Mapping[str, str]
    ) -> bytes:
        """One request on a fresh connection; the body of a 2xx answer (at most
        MAX_RESPONSE_BYTES), or the error: _Retryable when sending again may help."""
        name = self.tool.name
        port = urlsplit(self.tool.url).port or 443
        try:
            context = self.tls.get()
        except ConfigError as exc:  # a CA bundle or client certificate that does not load
            raise ToolError(exc.code, exc.message) from exc
        connection = _PinnedConnection(
            self.host.ip, port, self.host.name, context, self.tool.timeout_s
        )
        response: http.client.HTTPResponse | None = None
        try:
            connection.request(method, target, body=body, headers=dict(headers))
            response = connection.getresponse()
            status = response.status
            if not 200 <= status < 300:
                error = ToolError("tools.http.status", f"{name}: the service answered {status}")
                if status in _RETRY_STATUSES:
                    raise _Retryable(error)
                raise error
            raw = response.read(MAX_RESPONSE_BYTES + 1)
        except (ToolError, _Retryable):
            raise
        except ssl.SSLCertVerificationError as exc:
            raise ToolError(
                "tools.http.certificate",
                f"{name}: the service's certificate does not verify ({exc.verify_message})",
            ) from exc
        except ssl.SSLError as exc:
            raise ToolError("tools.http.tls", f"{name}: TLS failed ({exc.reason})") from exc
        except TimeoutError as exc:
            error = ToolError("tools.http.timeout", f"{name}: no answer in time")
            raise _Retryable(error) from exc
        except (OSError, http.client.HTTPException) as exc:
            reason = type(exc).__name__
            error = ToolError("tools.http.unreachable", f"{name}: unreachable ({reason})")
            raise _Retryable(error) from exc
        finally:
            if response is not None:
                response.close()
            connection.close()
        if len(raw) > MAX_RESPONSE_BYTES:
            raise ToolError("tools.http.bad_response", f"{name}: the answer is too large")
        return raw


class _Retryable(Exception):
    """A failure that sending again may mend (a signal inside this module, never raised out)."""

    def __init__(self, error: ToolError) -> None:
        super().__init__(error.code)
        self.error = error


def spoken(template: str, raw: bytes, tool: str) -> str:
    """``template`` with each named field of the JSON answer ``raw``; nothing else of the
    answer leaves this function. Numbers keep the service's digits ("1250.40")."""
    try:
        document = json.loads(raw.decode("utf-8"), parse_float=decimal.Decimal)
    except (UnicodeDecodeError, json.JSONDecodeError):
        # from None: the decoding error holds the whole answer, which must be dropped now
        raise ToolError("tools.http.bad_response", f"{tool}: the answer is not JSON") from None
    if not isinstance(document, dict):
        raise ToolError("tools.http.bad_response", f"{tool}: the answer is not a JSON object")
    fields = {path: _field(document, path, tool) for path in placeholders(template, "speak")}
    del document
    text = template
    for path, value in fields.items():
        text = text.replace("{" + path + "}", value)
    return text


def _field(document: dict[str, Any], path: str, tool: str) -> str:
    node: Any = document
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ToolError("tools.http.missing_field", f"{tool}: the answer has no {path!r}")
        node = node[part]
    if isinstance(node, bool):
        return "yes" if node else "no"
    if isinstance(node, int | decimal.Decimal):
        return str(node)
    if isinstance(node, str) and len(node) <= MAX_SPOKEN_FIELD and node.isprintable():
        return node.strip()
    raise ToolError("tools.http.bad_response", f"{tool}: {path!r} is not a short value to say")


def _text(value: Any) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _json_value(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


def http_tools(settings: ToolsSettings, *, load_tls: bool = True) -> dict[str, Tool]:
    """The declared HTTP tools (all of them; ``[tools] enabled`` picks those in use). The TLS
    context is made here, once for all of them: a CA bundle or client certificate that does
    not load is a ConfigError naming its key. ``load_tls=False`` (a listing of the tools)
    leaves it to the first request."""
    if not settings.http:
        return {}
    tls = TlsContext(settings)
    if load_tls:
        tls.get()
    hosts = {host.name.lower().rstrip("."): host for host in settings.allowed_hosts}
    tools: dict[str, Tool] = {}
    for declared in settings.http:
        host = hosts[(urlsplit(declared.url).hostname or "").rstrip(".")]  # checked at load
        tools[declared.name] = Tool(
            name=declared.name,
            description=declared.description,
            params=tuple(
                Param(
                    p.name,
                    p.kind,
                    p.description or p.name.replace("_", " "),
                    required=p.required,
                    choices=p.choices,
                    minimum=p.minimum,
                    maximum=p.maximum,
                    max_length=p.max_length,
                    pattern=p.pattern,
                    ask=p.ask,
                )
                for p in declared.params
            ),
            scopes=declared.scopes,
            changes_data=declared.changes_data,
            required_level=Assurance(declared.required_level),
            handler=HttpCall(declared, host, tls, settings.bearer_file),
            triggers=declared.triggers,
        )
    return tools
