"""Readings of live state for the compliance report: each probe reads one thing as it is now
(the database's cipher, a listener's TLS, the purge's last run, the audit chain, ...) and says
pass, warn or fail with the evidence it read and the reason. None of them is a constant: each
has a test that flips the state it reads and sees the outcome change."""

from __future__ import annotations

import enum
import socket
import ssl
import subprocess
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509

from appliance.config.settings import Settings
from appliance.core.errors import ApplianceError
from appliance.guard.pii import redact
from appliance.retention.job import last_run, oldest_kept, overdue
from appliance.retention.policy import RetentionPolicy
from appliance.storage import reports
from appliance.storage.keys import default_key_path
from appliance.storage.repository import Storage


class Outcome(enum.StrEnum):
    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class Finding:
    outcome: Outcome
    evidence: str
    """What was read, in a line: the auditor's evidence."""
    reason: str
    """Why this outcome (for a pass: what it met)."""


@dataclass(frozen=True)
class Live:
    """What a probe reads: the running configuration, the store and the time of reading."""

    settings: Settings
    storage: Storage
    now: datetime
    """Naive UTC, as the store keeps its times."""


Probe = Callable[[Live], Finding]

CERT_WARN = timedelta(days=30)
RETENTION_RUN_WARN = timedelta(hours=2)
"""The purge timer runs hourly: two hours without a run is a timer that stopped."""
RETENTION_GRACE = timedelta(hours=2)
ACCESS_REVIEW_PERIOD = timedelta(days=90)
AUDIT_EXPORT_WARN = timedelta(days=31)
BACKUP_WARN = timedelta(days=7)
MASTER_KEY_WARN = timedelta(days=365)
"""NIST SP 800-57 Part 1 5.3.6: a key-encrypting key's cryptoperiod of up to a year or two."""
ERASURE_DUE = timedelta(days=30)
"""GDPR Art. 12(3): without undue delay and within one month."""

# A test number (Visa's test card, Luhn-valid) and a CVV, as a caller would say them.
CARD_PROBE = "my card is 4111 1111 1111 1111 and the code on the back is 123"


def worst(findings: list[Finding]) -> Outcome:
    order = [Outcome.PASS, Outcome.WARN, Outcome.FAIL]
    return max((f.outcome for f in findings), key=order.index, default=Outcome.PASS)


def combine(*findings: Finding) -> Finding:
    """One finding of several readings: the worst outcome, every evidence and reason."""
    outcome = worst(list(findings))
    reasons = [f.reason for f in findings if f.outcome is outcome]
    return Finding(outcome, "; ".join(f.evidence for f in findings), "; ".join(reasons))


def _age(then: datetime, now: datetime) -> str:
    days = (now - then).total_seconds() / 86_400
    return f"{days:.1f} days ago" if days >= 1 else f"{days * 24:.1f} h ago"


# --- encryption at rest -------------------------------------------------------------------


def database_cipher(live: Live) -> Finding:
    """Read from the database itself: SQLCipher's version and settings, and that the file is
    not readable as plain SQLite; on another server, the connection's TLS. Either way, the
    newest stored transcripts are in the AES-256-GCM envelope (the per-call sealing)."""
    storage = live.storage
    sealed, total = reports.sealing_sample(storage)
    sealing = Finding(
        Outcome.PASS if sealed == total else Outcome.FAIL,
        f"{sealed} of the {total} newest stored transcripts sealed (AES-256-GCM per call)",
        "every sampled transcript sealed" if sealed == total else "plain transcripts stored",
    )
    if not storage.encrypted:
        return combine(
            Finding(Outcome.FAIL, "no master key: plain values", "the store is not encrypted"),
            sealing,
        )
    facts = reports.database_facts(storage)
    if storage.engine.dialect.name == "sqlite":
        header = facts.get("file_header", "")
        if not facts.get("cipher_version"):
            return combine(
                Finding(Outcome.FAIL, "no SQLCipher (cipher_version empty)", "file not encrypted"),
                sealing,
            )
        plain = header.startswith("SQLite format 3")
        evidence = (
            f"SQLCipher {facts['cipher_version']} ({facts.get('cipher_provider', '?')}), "
            f"AES-256 pages, HMAC {facts.get('cipher_hmac_algorithm', '?')}, "
            f"page {facts.get('cipher_page_size', '?')} B; file header "
            + ("PLAIN" if plain else "unreadable without the key")
        )
        at_rest = Finding(
            Outcome.FAIL if plain else Outcome.PASS,
            evidence,
            "the file opens as plain SQLite" if plain else "the file is ciphertext",
        )
        return combine(at_rest, sealing)
    ssl_on = facts.get("ssl") == "true"
    mode = str(storage.engine.url.query.get("sslmode", "prefer"))
    unverified = ssl_on and bool(live.settings.storage.server_address) and mode != "verify-full"
    connection = Finding(
        Outcome.FAIL if not ssl_on else Outcome.WARN if unverified else Outcome.PASS,
        f"{storage.engine.dialect.name}: connection TLS "
        + (f"{facts.get('ssl_version')} {facts.get('ssl_cipher')}" if ssl_on else "OFF")
        + f" (sslmode={mode})",
        "the link is plain"
        if not ssl_on
        else "TLS, but the server's name is not verified (sslmode is not verify-full)"
        if unverified
        else "values sealed before they leave; the link is TLS",
    )
    return combine(connection, sealing)


def master_key_age(live: Live) -> Finding:
    master = live.storage.master
    path = (
        master.path
        if master is not None
        else default_key_path(live.settings.home, live.settings.storage.master_key_file)
    )
    try:
        mtime = path.stat().st_mtime
    except OSError as exc:
        return Finding(Outcome.FAIL, f"{path}: {exc.strerror}", "no master key file")
    written = datetime.fromtimestamp(mtime, UTC).replace(tzinfo=None)
    evidence = f"master key written or last rotated {_age(written, live.now)}"
    if live.now - written > MASTER_KEY_WARN:
        return Finding(Outcome.WARN, evidence, "older than a year: rotate it")
    return Finding(Outcome.PASS, evidence, "rotated within a year")


# --- transmission -------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsReading:
    """A listener as a client meets it."""

    version: str
    """The version the handshake settled on."""
    old_accepted: str | None
    """A version below TLS 1.2 the listener accepted, or None when it refused them."""
    not_after: datetime
    """The certificate's expiry (naive UTC)."""


def _client(old: bool) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # we read the certificate, we do not trust it
    if old:  # offer TLS 1.0 and 1.1 only: a listener with a 1.2 minimum must refuse
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
        with warnings.catch_warnings():  # deprecated (RFC 8996): the very thing we probe for
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = ssl.TLSVersion.TLSv1
            context.maximum_version = ssl.TLSVersion.TLSv1_1
    return context


def probe_tls(host: str, port: int, timeout_s: float = 3.0) -> TlsReading:
    """Connect twice: once as a normal client (the version and the certificate), once
    offering only TLS 1.0/1.1 (refused, or the old version it took). OSError when nothing
    listens."""
    with (
        socket.create_connection((host, port), timeout=timeout_s) as raw,
        _client(old=False).wrap_socket(raw) as tls,
    ):
        version = tls.version() or "?"
        der = tls.getpeercert(binary_form=True)
    if der is None:
        raise OSError(f"{host}:{port} sent no certificate")
    not_after = x509.load_der_x509_certificate(der).not_valid_after_utc.replace(tzinfo=None)
    old_accepted = None
    try:
        with (
            socket.create_connection((host, port), timeout=timeout_s) as raw,
            _client(old=True).wrap_socket(raw) as tls,
        ):
            old_accepted = tls.version()
    except (ssl.SSLError, ConnectionError):
        old_accepted = None
    return TlsReading(version, old_accepted, not_after)


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    return ("127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host), int(port)


def _cert_file_expiry(path: Path) -> datetime | None:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None
    return cert.not_valid_after_utc.replace(tzinfo=None)


def _tls_finding(name: str, address: str, cert: Path, now: datetime) -> Finding:
    try:
        reading = probe_tls(*_host_port(address))
    except OSError as exc:
        expiry = _cert_file_expiry(cert)
        evidence = f"{name} {address}: not listening now ({exc.__class__.__name__})"
        if expiry is None:
            return Finding(Outcome.WARN, evidence, f"{name}: no listener and no certificate read")
        evidence += f"; certificate file expires {expiry:%Y-%m-%d}"
        if expiry < now:
            return Finding(Outcome.FAIL, evidence, f"{name}: the certificate has expired")
        return Finding(Outcome.WARN, evidence, f"{name}: TLS minimum not measured (no listener)")
    evidence = (
        f"{name} {address}: {reading.version}, "
        + (f"ACCEPTS {reading.old_accepted}" if reading.old_accepted else "TLS 1.0/1.1 refused")
        + f", certificate expires {reading.not_after:%Y-%m-%d}"
    )
    if reading.old_accepted:
        return Finding(Outcome.FAIL, evidence, f"{name} accepts {reading.old_accepted}")
    if reading.not_after < now:
        return Finding(Outcome.FAIL, evidence, f"{name}: the certificate has expired")
    if reading.not_after - now < CERT_WARN:
        return Finding(Outcome.WARN, evidence, f"{name}: the certificate expires within 30 days")
    return Finding(Outcome.PASS, evidence, f"{name}: TLS 1.2 or later only")


def panel_tls(live: Live) -> Finding:
    admin = live.settings.admin
    cert = Path(admin.tls_cert) if admin.tls_cert else live.settings.home / "admin" / "tls.crt"
    return _tls_finding("panel", admin.listen, cert, live.now)


def sip_transport(live: Live) -> Finding:
    """The phone line: SIP over TLS (the SDES keys of SRTP travel in the signalling, so
    without TLS they are readable on the wire) and the SRTP mode."""
    sip = live.settings.sip
    if sip.srtp == "off":
        media = Finding(Outcome.FAIL, "SRTP off: media in clear RTP", "SRTP is off")
    elif sip.srtp == "optional":
        media = Finding(
            Outcome.WARN,
            "SRTP optional: used when the peer offers it, plain RTP accepted",
            "SRTP is optional, not required",
        )
    else:
        media = Finding(Outcome.PASS, "SRTP required (488 without it)", "SRTP required")
    if not sip.tls_listen:
        signalling = Finding(
            Outcome.WARN if sip.srtp != "off" else Outcome.FAIL,
            "no SIP TLS listener: signalling (and SDES keys) over UDP/TCP",
            "no SIPS (sip.tls_listen is empty)",
        )
    else:
        signalling = _tls_finding("SIP TLS", sip.tls_listen, Path(sip.tls_cert), live.now)
    return combine(media, signalling)


# --- what is kept -------------------------------------------------------------------------


def redaction(live: Live) -> Finding:
    """The configured redaction run on a spoken card number and code: nothing of them may
    remain (what reaches the model and the disk)."""
    kinds = live.settings.policy.redact
    cleaned = redact(CARD_PROBE, kinds).text
    left = [part for part in ("4111", "1111", "123") if part in cleaned]
    evidence = f"redaction classes on: {', '.join(kinds) or 'none'}; card probe -> {cleaned!r}"
    if left:
        return Finding(Outcome.FAIL, evidence, "a card number or its code survives redaction")
    return Finding(Outcome.PASS, evidence, "card number and code removed before model and disk")


def minimisation(live: Live) -> Finding:
    from appliance.guard.pii import ALL_KINDS

    hours = live.settings.retention.recordings_hours
    missing = sorted(set(ALL_KINDS) - set(live.settings.policy.redact))
    audio = f"raw audio kept {hours} h" if hours else "raw audio never stored"
    evidence = f"{audio}; redaction classes off: {', '.join(missing) or 'none'}"
    if missing:
        return Finding(Outcome.WARN, evidence, f"not redacted: {', '.join(missing)}")
    return Finding(Outcome.PASS, evidence, "every class of personal data redacted")


def retention(live: Live) -> Finding:
    """The purge's last run and what it purged; the rows kept past their period now."""
    policy = RetentionPolicy.from_settings(live.settings.retention)
    run = last_run(live.storage)
    late = overdue(live.storage, policy, live.now, RETENTION_GRACE)
    late_text = ", ".join(f"{n} {c.value}" for c, n in late.items()) or "none"
    if run is None:
        ran = Finding(Outcome.FAIL, "the purge has never run", "the retention job never ran")
    else:
        purged = ", ".join(f"{n} {c}" for c, n in run.purged.items() if n) or "nothing due"
        evidence = f"last purge {_age(run.finished_at, live.now)} ({purged})"
        stale = live.now - run.finished_at > RETENTION_RUN_WARN
        ran = Finding(
            Outcome.WARN if stale else Outcome.PASS,
            evidence,
            "the hourly purge has not run for over 2 h" if stale else "the purge runs",
        )
    oldest = oldest_kept(live.storage, live.now)
    ages = "; ".join(
        f"{c.value} {_age(at, live.now)} (period {policy.periods[c].days} d)"
        for c, at in oldest.items()
    )
    kept = Finding(
        Outcome.FAIL if late else Outcome.PASS,
        f"oldest rows: {ages or 'none'}; rows past their period: {late_text}",
        f"kept past their period: {late_text}" if late else "no row past its period",
    )
    return combine(ran, kept)


def erasure(live: Live) -> Finding:
    requests = reports.erasure_requests(live.storage)
    done = [r for r in requests if r.completed_at is not None]
    waiting = [r for r in requests if r.completed_at is None]
    late = [r for r in waiting if live.now - r.requested_at > ERASURE_DUE]
    evidence = f"{len(requests)} erasure requests: {len(done)} completed, {len(waiting)} open"
    if done:
        slowest = max((r.completed_at - r.requested_at) for r in done if r.completed_at)
        evidence += f" (slowest {slowest.total_seconds() / 3600:.1f} h)"
    if late:
        return Finding(Outcome.FAIL, evidence, f"{len(late)} open for over a month")
    if waiting:
        return Finding(Outcome.WARN, evidence, f"{len(waiting)} not yet completed")
    return Finding(Outcome.PASS, evidence, "every request completed")


# --- accountability -----------------------------------------------------------------------


def audit_chain(live: Live) -> Finding:
    chain = live.storage.verify_audit()
    export = reports.last_event(live.storage, "export", "audit_trail")
    exported = f"last export {_age(export.at, live.now)}" if export else "never exported"
    evidence = f"{chain.events} events, chain " + ("verified" if chain.ok else "BROKEN")
    evidence += f"; {exported}"
    if not chain.ok:
        return Finding(Outcome.FAIL, evidence, f"chain broken at event {chain.broken_seq}")
    if export is None or live.now - export.at > AUDIT_EXPORT_WARN:
        return Finding(Outcome.WARN, evidence, "no signed export within a month")
    return Finding(Outcome.PASS, evidence, "chain verified and exported within a month")


def mfa(live: Live) -> Finding:
    users = [u for u in live.storage.admin_users() if not u.disabled]
    without = [u.username for u in users if not u.totp_secret]
    evidence = f"{len(users)} active panel accounts, {len(users) - len(without)} with TOTP"
    if not users:
        return Finding(Outcome.WARN, evidence, "no panel account yet")
    if without:
        return Finding(Outcome.FAIL, evidence, f"no TOTP: {', '.join(without)}")
    return Finding(Outcome.PASS, evidence, "every active account has TOTP")


def access_review(live: Live) -> Finding:
    review = reports.last_event(live.storage, "access_review")
    if review is None:
        return Finding(Outcome.WARN, "no access review recorded", "no access review in 90 days")
    details = reports.event_details(review)
    confirmed, removed = details.get("confirmed", []), details.get("removed", [])
    evidence = (
        f"last review {_age(review.at, live.now)} by {review.actor}: "
        f"{len(confirmed)} confirmed, {len(removed)} removed"
    )
    if live.now - review.at > ACCESS_REVIEW_PERIOD:
        return Finding(Outcome.WARN, evidence, "no access review in 90 days")
    return Finding(Outcome.PASS, evidence, "reviewed within 90 days")


def backup(live: Live) -> Finding:
    event = reports.last_event(live.storage, "backup")
    if event is None:
        return Finding(Outcome.WARN, "no backup recorded", "no backup taken")
    evidence = f"last backup {_age(event.at, live.now)} ({event.object})"
    if live.now - event.at > BACKUP_WARN:
        return Finding(Outcome.WARN, evidence, "no backup within 7 days")
    return Finding(Outcome.PASS, evidence, "backed up within 7 days")


# --- change and boundary ------------------------------------------------------------------


def model_pins(live: Live) -> Finding:
    """Every model the configuration uses, hashed now against its SHA-256 pin."""
    from appliance.config.manifest import pin_problems

    names, bad = pin_problems(live.settings)
    evidence = f"{len(names)} models hashed now: {', '.join(names)}"
    if bad:
        return Finding(Outcome.FAIL, evidence, "; ".join(bad))
    return Finding(Outcome.PASS, evidence, "every model matches its SHA-256 pin")


UNITS = Path("/etc/systemd/system")
SERVICES = ("appliance-voice.service", "appliance-admin.service", "appliance-siem.service")
MAX_EXPOSURE = 2.0


def unit_hardening(live: Live, units: Path = UNITS) -> Finding:
    """``systemd-analyze security`` on the installed units: the exposure score of each (an
    installed unit whose score cannot be read fails)."""
    scores: dict[str, float | None] = {}
    for unit in SERVICES:
        if not (units / unit).is_file():
            continue
        result = subprocess.run(
            ["systemd-analyze", "security", "--offline=true", f"./{unit}"],
            cwd=units,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        scores[unit] = None
        marker = "Overall exposure level for "
        for line in (result.stdout + result.stderr).splitlines():
            if marker in line:
                scores[unit] = float(line.split(":")[-1].split()[0])
    if not scores:
        return Finding(Outcome.WARN, f"no installed units under {units}", "units not installed")
    evidence = ", ".join(
        f"{u} {s:.1f}" if s is not None else f"{u} score not read" for u, s in scores.items()
    )
    unread = [u for u, s in scores.items() if s is None]
    high = [u for u, s in scores.items() if s is not None and s > MAX_EXPOSURE]
    if unread or high:
        reasons = ([f"exposure above {MAX_EXPOSURE}: {', '.join(high)}"] if high else []) + (
            [f"score not read: {', '.join(unread)}"] if unread else []
        )
        return Finding(Outcome.FAIL, evidence, "; ".join(reasons))
    return Finding(Outcome.PASS, evidence, f"every unit's exposure {MAX_EXPOSURE} or lower")


def _directives(text: str, name: str) -> list[str]:
    """The values of ``name=`` in a unit's text, in order, comments left out."""
    values = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith(f"{name}="):
            values.append(line.split("=", 1)[1].strip())
    return values


def egress(live: Live, units: Path = UNITS) -> Finding:
    """The voice unit denies every address (``IPAddressDeny=any``, the last assignment of it
    counting) but those its ``IPAddressAllow=`` names, shown beside the in-process guard's
    allowed peers."""
    from appliance.deploy.egress import allowlist

    unit = units / SERVICES[0]
    allowed = ", ".join(allowlist(live.settings)) or "none"
    try:
        text = unit.read_text(encoding="utf-8")
        drop_ins = sorted((units / f"{SERVICES[0]}.d").glob("*.conf"))
        text += "".join(p.read_text(encoding="utf-8") for p in drop_ins)
    except OSError:
        return Finding(
            Outcome.WARN,
            f"allowed peers: {allowed}; {unit} not installed",
            "egress below Python not enforced here (no unit)",
        )
    # An empty assignment resets the list (systemd.resource-control): the last one counts.
    denies = _directives(text, "IPAddressDeny")
    denied = bool(denies) and denies[-1] == "any"
    unit_allows = " ".join(v for v in _directives(text, "IPAddressAllow") if v) or "none"
    evidence = (
        f"allowed peers: {allowed}; {unit.name} IPAddressDeny=any "
        + ("set" if denied else "MISSING")
        + f", IPAddressAllow={unit_allows}"
    )
    if not denied:
        return Finding(Outcome.FAIL, evidence, "the voice unit may reach any address")
    return Finding(Outcome.PASS, evidence, "the voice unit denies every address it does not name")


# --- the caller -----------------------------------------------------------------------------


def disclosure(live: Live) -> Finding:
    """The consent and disclosure script of every jurisdiction a call on this line can be
    under (its own, and each a caller's number can suggest), read from config/consent/: each
    must exist in English and say the caller speaks with an automated assistant."""
    from appliance.config.consent import configured_scripts, missing_scripts
    from appliance.config.settings import DISCLOSURE_SAYS_AUTOMATED

    try:
        scripts = configured_scripts(live.settings)
        missing = missing_scripts(live.settings)
    except ApplianceError as exc:
        return Finding(Outcome.FAIL, "consent scripts unreadable", exc.message)
    silent = [s.jurisdiction for s in scripts if not DISCLOSURE_SAYS_AUTOMATED.search(s.disclosure)]
    asked = sorted(s.jurisdiction for s in scripts if s.consent_required)
    evidence = (
        f"scripts: {', '.join(f'{s.jurisdiction}/{s.version}' for s in scripts)}; consent "
        f"asked under: {', '.join(asked) or 'none'}"
    )
    if missing or silent:
        reasons = ([f"no English script for {', '.join(missing)}"] if missing else []) + (
            [f"no AI disclosure in {', '.join(silent)}"] if silent else []
        )
        return Finding(Outcome.FAIL, evidence, "; ".join(reasons))
    return Finding(Outcome.PASS, evidence, "every jurisdiction has its script and AI disclosure")


def vendors(live: Live) -> Finding:
    """The vendor register behind the SBOM: every model in use pinned by SHA-256 with a
    licence and a source; packages whose licence is undeclared are named for review."""
    from appliance.compliance.sbom import LicenceSource, register

    found = register(live.settings)
    in_use = [m for m in found.models if m.configured]
    unpinned = [m.name for m in in_use if not m.files or not all(f.sha256 for f in m.files)]
    unlicensed = [m.name for m in in_use if not m.licence]
    undeclared = [p.name for p in found.packages if p.licence.source is LicenceSource.UNDECLARED]
    evidence = (
        f"{len(in_use)} models in use, {len(found.packages)} Python packages "
        f"({len(undeclared)} without a declared licence); SBOM at /vendors/sbom.json"
    )
    if unpinned or unlicensed:
        names = ", ".join(unpinned + unlicensed)
        return Finding(Outcome.FAIL, evidence, f"models without pins or licence: {names}")
    if undeclared:
        return Finding(Outcome.WARN, evidence, f"licence not declared: {', '.join(undeclared[:8])}")
    return Finding(Outcome.PASS, evidence, "every model pinned and licensed, every package too")


def incidents(live: Live) -> Finding:
    """Incidents not resolved within their severity's response time ([incidents]
    response_minutes), counted from when they were opened: open ones past it fail; ones
    resolved late within the last 90 days warn."""
    from appliance.core.ports import IncidentState
    from appliance.storage.incidents import overdue_incidents

    minutes = live.settings.incidents.response_minutes
    late = overdue_incidents(live.storage, minutes, live.now)
    states = (IncidentState.OPEN, IncidentState.ACKNOWLEDGED)
    unresolved = [i for s in states for i in live.storage.incidents(s, limit=100_000)]
    strictest = min(minutes.values(), default=0)
    resolved_late = [
        i
        for i in live.storage.incidents(IncidentState.RESOLVED, limit=100_000)
        if i.resolved_at is not None
        and live.now - i.resolved_at <= timedelta(days=90)
        and i.resolved_at - i.opened_at > timedelta(minutes=minutes.get(i.severity, strictest))
    ]
    evidence = (
        f"{len(unresolved)} unresolved incidents, {len(late)} past their response time; "
        f"{len(resolved_late)} resolved late in the last 90 days"
    )
    if late:
        kinds = sorted({i.kind for i in late})
        return Finding(Outcome.FAIL, evidence, f"past their response time: {', '.join(kinds)}")
    if resolved_late:
        return Finding(Outcome.WARN, evidence, f"{len(resolved_late)} resolved past their time")
    return Finding(Outcome.PASS, evidence, "every incident handled within its response time")


REDTEAM_WARN_DAYS = 90.0


def redteam(live: Live) -> Finding:
    """The red-team gate (gate.py): a passing report made with the fingerprint of what runs
    now (models, prompt and policy, knowledge, tools, guard), and its age."""
    from appliance.compliance.gate import GateStatus, gate_state, reports

    state = gate_state(live.settings, live.now.replace(tzinfo=UTC))
    age = f", {state.report_age_days:.0f} days old" if state.report_age_days is not None else ""
    evidence = f"red-team gate {state.status.value}: report {state.report or 'none'}{age}"
    if state.status is not GateStatus.PASSED:
        return Finding(Outcome.FAIL, evidence, state.reason)
    data = next((r.data for r in reports(live.settings.home) if r.name == state.report), {})
    if data.get("sample"):  # the gate takes a sample (tests stay fast); an auditor is told
        n = f"{data.get('n_attack', '?')} attacks, {data.get('n_benign', '?')} benign"
        return Finding(
            Outcome.WARN, f"{evidence} (a sample: {n})", "the passing red-team run was a sample"
        )
    if state.report_age_days is not None and state.report_age_days > REDTEAM_WARN_DAYS:
        return Finding(Outcome.WARN, evidence, "the passing red-team report is over 90 days old")
    return Finding(Outcome.PASS, evidence, state.reason)
