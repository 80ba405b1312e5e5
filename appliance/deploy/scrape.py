"""What both metrics listeners share (the voice service's, deploy/metrics.py; the admin
panel's, admin/metrics.py): the scrape token, its check, and a self-signed certificate.

The token is read once at start from ``[service] metrics_token_file``: a file anyone else may
read is refused (the process does not start), as a key file is. A request is let in only with
``Authorization: Bearer <token>`` (RFC 6750 2.1), compared in constant time.
"""

from __future__ import annotations

import datetime as dt
import hmac
import ipaddress
import logging
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily

from appliance.core.errors import ConfigError
from appliance.core.ports import IncidentState
from appliance.storage import reports
from appliance.storage.repository import Storage

log = logging.getLogger(__name__)

HEALTHY = b"ok\n"
UNHEALTHY = b"unavailable\n"


@dataclass(frozen=True)
class ScrapeToken:
    """The bearer token Prometheus sends (``authorization: {credentials_file: ...}``)."""

    value: str = ""

    @classmethod
    def read(cls, path: str) -> ScrapeToken:
        """The token of ``path`` (one line); an empty path: no token, so no scrape passes."""
        if not path:
            return cls()
        try:
            info = os.stat(path)
            text = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                "config.metrics_token", f"cannot read the scrape token file {path}"
            ) from exc
        if stat.S_IMODE(info.st_mode) & 0o077:
            raise ConfigError(
                "config.metrics_token",
                f"the scrape token file {path} may be read by others: chmod 600 it",
            )
        if len(text) < 16 or any(c.isspace() for c in text):
            raise ConfigError(
                "config.metrics_token",
                f"the scrape token in {path} must be one word of 16 characters at least",
            )
        return cls(text)

    @property
    def configured(self) -> bool:
        return bool(self.value)

    def allows(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header carries this token (constant time)."""
        if not self.value or not authorization:
            return False
        scheme, _, sent = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(sent.strip().encode(), self.value.encode())


def self_signed(folder: Path, host: str, what: str) -> tuple[Path, Path]:
    """A self-signed certificate and key (``tls.crt``, ``tls.key`` mode 0600) for ``host``,
    made once under ``folder`` and kept; ``what`` names the listener in the log."""
    cert, key = folder / "tls.crt", folder / "tls.key"
    if cert.is_file() and key.is_file():
        return cert, key
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"appliance {host}")])
    now = dt.datetime.now(dt.UTC)
    try:
        alt: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        alt = x509.DNSName(host)
    built = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
        .sign(private, hashes.SHA256())
    )
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    cert.write_bytes(built.public_bytes(serialization.Encoding.PEM))
    log.info("made a self-signed certificate for the %s: %s", what, cert)
    return cert, key


OTHER = "other"
"""The label value of anything outside a label's fixed set (no free text reaches a label)."""


def incident_family(storage: Storage, kinds: Iterable[str]) -> GaugeMetricFamily:
    """``appliance_incidents{kind,state}``: the incidents kept, from the store. ``kinds``: the
    incident kinds with a runbook ([incidents.runbooks]); any other kind counts as ``other``."""
    known = set(kinds)
    states = {s.value for s in IncidentState}
    counts: dict[tuple[str, str], int] = {}
    for (kind, state), n in reports.incident_counts(storage).items():
        key = (kind if kind in known else OTHER, state if state in states else OTHER)
        counts[key] = counts.get(key, 0) + n
    family = GaugeMetricFamily(
        "appliance_incidents", "Incidents kept, by kind and state", labels=["kind", "state"]
    )
    for (kind, state), n in sorted(counts.items()):
        family.add_metric([kind, state], n)
    return family
