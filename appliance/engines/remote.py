"""What the remote engines on the organization's GPU hosts share (engines.remote_llm, the
language model; engines.remote_stt, speech recognition): TLS pinned to one CA, the library's
failures as codes, and the fallback's state (the remote while it answers, the node's own model
for ``retry_s`` after it fails)."""

from __future__ import annotations

import enum
import http.client
import logging
import ssl
import threading
import time
from collections.abc import Callable

from appliance.core.errors import ApplianceError


def pinned_context(ca_file: str, error: type[ApplianceError], role: str) -> ssl.SSLContext:
    """A client context that trusts ``ca_file`` alone (not the system's CAs), TLS 1.2 at least,
    the certificate checked against the address connected to (RFC 6125, an IP
    subjectAltName). A CA that does not load is ``error`` with the code ``ROLE.remote_ca``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise error(f"{role}.remote_ca", f"cannot load the remote's CA {ca_file}: {exc}") from exc
    return context


def translated(
    exc: Exception, where: str, error: type[ApplianceError], role: str
) -> ApplianceError:
    """A library's failure as the code that says what went wrong, ``ROLE.remote_*`` (its text
    may not be sent further: only its class and the verification reason are)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return error(
            f"{role}.remote_certificate",
            f"{where}: the certificate does not verify against the pinned CA "
            f"({exc.verify_message})",
        )
    if isinstance(exc, ssl.SSLError):
        return error(f"{role}.remote_tls", f"{where}: TLS failed ({exc.reason})")
    if isinstance(exc, TimeoutError):
        return error(f"{role}.remote_timeout", f"{where}: no answer in time")
    if isinstance(exc, ConnectionRefusedError):
        return error(f"{role}.remote_refused", f"{where}: connection refused")
    if isinstance(exc, (OSError, http.client.HTTPException)):
        return error(f"{role}.remote_unreachable", f"{where}: unreachable ({type(exc).__name__})")
    return error(f"{role}.remote_protocol", f"{where}: {type(exc).__name__}")


class Backend(enum.StrEnum):
    """Which model answered: the label of ``appliance_llm_turns_total`` and
    ``appliance_stt_turns_total``."""

    REMOTE = "remote"
    LOCAL = "local"


class RemoteHealth:
    """Whether the remote answers: it is tried unless it failed less than ``retry_s`` ago;
    each answer is counted by the model that gave it. One line in ``log`` (the engine's own)
    per change of state, naming the code only (never what was asked or said)."""

    def __init__(
        self,
        what: str,
        where: str,
        log: logging.Logger,
        *,
        retry_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._what, self._where, self._log = what, where, log
        self.retry_s = retry_s
        self._clock = clock
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self.last_failure = ""
        """The code of the remote's last failure ("" while it answers)."""
        self._turns = dict.fromkeys(Backend, 0)

    @property
    def remote_up(self) -> bool:
        """False from a failure of the remote until it answers again."""
        with self._lock:
            return self._down_since is None

    def turns(self) -> dict[Backend, int]:
        """Answers so far, by the model that gave them (a redraft counts again)."""
        with self._lock:
            return dict(self._turns)

    def _try_remote(self) -> bool:
        with self._lock:
            since = self._down_since
            return since is None or self._clock() - since >= self.retry_s

    def _answered(self, backend: Backend) -> None:
        with self._lock:
            self._turns[backend] += 1
            if backend is Backend.REMOTE and self._down_since is not None:
                self._down_since = None
                self.last_failure = ""
                self._log.info("%s %s answers again", self._what, self._where)

    def _failed(self, code: str) -> None:
        with self._lock:
            was_up = self._down_since is None
            self._down_since = self._clock()
            self.last_failure = code
        if was_up:
            self._log.warning(
                "%s %s down (%s): the local model answers, retry in %.0f s",
                self._what,
                self._where,
                code,
                self.retry_s,
            )
