"""Security events to the organization's SIEM: syslog (RFC 5424) over TLS (RFC 5425).

What is sent: every audit event of the hash-chained trail (storage/audit.py), in its ``seq``
order, and so every incident (each opening, acknowledgement and resolution is an audit event;
an opening carries the incident's id, kind, severity and state). Identifiers only: the event's
seq, time, actor, action, object, outcome and hashes; of its ``details``, counts (whole
numbers, true/false) and the codes of ``SAFE_DETAIL_KEYS``, never free text (a legal hold's or
a read's ``reason`` is typed by staff and may name someone), never a transcript, a number or a
name.

Delivery: ``Forwarder`` (``appliance siem forward``, its own unit: a call never waits on the
SIEM, and the voice service opens no connection to it) reads the events after the last one
queued, writes them to a bounded queue file under ``APPLIANCE_HOME/siem``, and sends them in
order. Plain TLS syslog has no acknowledgement (no maintained pure-Python RELP client exists),
so each batch ends with a TLS close (``close_notify``) and counts as delivered only when the
collector closes in turn after reading everything (one that dies with data unread answers
with a reset); a batch not confirmed is sent again, whole, on the next connection. A collector
may also close after reading a batch and die before writing it (rsyslogd on SIGTERM does), so
after any failure the last ``RESEND`` messages confirmed go again too. Either way a duplicate
comes only across a reconnect, and each message's ``seq`` (also RFC 5424's ``meta
sequenceId``) shows it. When the queue is full (or its disk is), no more events are taken
(they wait in the store, the source of truth) and ONE ``siem_queue_full`` incident is opened
for the episode.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import errno
import json
import logging
import os
import re
import socket
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import select

from appliance.config.settings import SiemSettings
from appliance.core.errors import ApplianceError, SiemError, StorageError
from appliance.core.ports import IncidentState
from appliance.storage.audit import chain_start
from appliance.storage.base import StoreBase
from appliance.storage.incidents import Incidents
from appliance.storage.schema import AuditEvent, Incident

log = logging.getLogger(__name__)

FACILITY_LOG_AUDIT = 13
"""RFC 5424 6.2.1, table 1: facility 13 is "log audit"."""
ENTERPRISE = 32473
"""RFC 5424 7.2.2: an SD-ID of our own is NAME@<private enterprise number>; 32473 is the number
RFC 5612 reserves for documentation and examples (the appliance has none of its own)."""
META_SEQUENCE_MAX = 2_147_483_647
"""RFC 5424 7.3.1: ``meta sequenceId`` runs from 1 to 2147483647."""
SAFE_DETAIL_KEYS = frozenset({"role", "kind", "severity", "from", "state", "code", "tool", "note"})
"""Details whose values are codes (a role, an incident's kind and state, an error code, a
tool's name, a resolution's note code): sent when they look like one."""
QUEUE_FULL_KIND = "siem_queue_full"
STATE_AFTER = {
    "incident_opened": IncidentState.OPEN,
    "incident_ack": IncidentState.ACKNOWLEDGED,
    "incident_resolve": IncidentState.RESOLVED,
}
"""An incident's state just after the event (not when it is sent)."""
BATCH = 200
"""Messages sent on one connection before it is closed to learn they were read."""
RESEND = 200
"""Messages confirmed before a failure that are sent again after it. A collector that closes
after reading a batch has read it, not yet written it: one stopped at that moment loses it
(rsyslogd on SIGTERM does, tests/real/test_siem_rsyslog.py). So the last ``RESEND`` messages
sent are kept (``sent``, beside the bounded queue) and go again after any failure."""
_CODE = re.compile(r"[A-Za-z0-9_.:@-]{1,64}")
_SD_ESCAPE = re.compile(r'(["\\\]])')


class Severity(enum.IntEnum):
    """RFC 5424 6.2.1, table 2."""

    CRITICAL = 2
    ERROR = 3
    WARNING = 4
    NOTICE = 5


INCIDENT_SEVERITY = {"high": Severity.CRITICAL, "medium": Severity.ERROR, "low": Severity.WARNING}


@dataclass(frozen=True)
class IncidentFacts:
    """What a SIEM message says of an incident: its id and codes, never its summary."""

    id: str
    kind: str
    severity: str
    state: str


@dataclass(frozen=True)
class SiemEvent:
    """One audit event as it leaves the appliance (identifiers only)."""

    seq: int
    at: datetime
    """UTC (the store keeps naive UTC)."""
    actor: str
    action: str
    object: str
    outcome: str
    details: dict[str, int | bool | str] = field(default_factory=dict)
    prev_hash: str = ""
    hash: str = ""
    incident: IncidentFacts | None = None

    @property
    def msgid(self) -> str:
        return "incident" if self.incident is not None else "audit"

    @property
    def severity(self) -> Severity:
        if self.incident is not None and self.action == "incident_opened":
            return INCIDENT_SEVERITY.get(self.incident.severity, Severity.ERROR)
        return Severity.NOTICE if self.outcome == "ok" else Severity.WARNING


def safe_details(raw: str) -> dict[str, int | bool | str]:
    """The counts and codes of an audit event's details (its canonical JSON); the rest
    (free text, lists, nested values) is left out."""
    try:
        details = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    if not isinstance(details, dict):
        return {}
    kept: dict[str, int | bool | str] = {}
    for key, value in details.items():
        if not _CODE.fullmatch(str(key)):
            continue
        count = isinstance(value, bool | int)
        code = key in SAFE_DETAIL_KEYS and isinstance(value, str) and _CODE.fullmatch(value)
        if count or code:
            kept[str(key)] = value
    return kept


def _sd_value(value: object) -> str:
    """RFC 5424 6.3.3: '"', '\\' and ']' in a PARAM-VALUE are escaped with a backslash."""
    return _SD_ESCAPE.sub(r"\\\1", str(value))


def _header_field(value: str, limit: int) -> str:
    """A HEADER field (RFC 5424 6.2): printable US-ASCII without space, or the NILVALUE."""
    cleaned = "".join(c for c in value if "!" <= c <= "~")[:limit]
    return cleaned or "-"


def timestamp(at: datetime) -> str:
    """RFC 5424 6.2.3 (RFC 3339, UTC, "Z", microseconds: TIME-SECFRAC up to 6 digits)."""
    if at.tzinfo is not None:
        at = at.astimezone(UTC).replace(tzinfo=None)
    return at.isoformat(timespec="microseconds") + "Z"


def to_syslog(event: SiemEvent, hostname: str, app_name: str, procid: str) -> bytes:
    """The event as one RFC 5424 message: ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID
    [SD] MSG``, MSG a JSON object in ASCII (RFC 5424 6.4: MSG-ANY, so no BOM)."""
    pri = FACILITY_LOG_AUDIT * 8 + int(event.severity)  # RFC 5424 6.2.1
    elements = []
    if 1 <= event.seq <= META_SEQUENCE_MAX:
        elements.append(f'[meta sequenceId="{event.seq}"]')
    audit = {"seq": event.seq, "actor": event.actor, "action": event.action}
    audit |= {"object": event.object, "outcome": event.outcome}
    params = " ".join(f'{k}="{_sd_value(v)}"' for k, v in audit.items())
    elements.append(f"[audit@{ENTERPRISE} {params}]")
    body: dict[str, Any] = {
        "seq": event.seq,
        "at": timestamp(event.at),
        "actor": event.actor,
        "action": event.action,
        "object": event.object,
        "outcome": event.outcome,
        "details": event.details,
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }
    if event.incident is not None:
        facts = event.incident
        incident = {"id": facts.id, "kind": facts.kind, "severity": facts.severity}
        incident["state"] = facts.state
        params = " ".join(f'{k}="{_sd_value(v)}"' for k, v in incident.items())
        elements.append(f"[incident@{ENTERPRISE} {params}]")
        body["incident"] = incident
    header = " ".join(
        (
            f"<{pri}>1",
            timestamp(event.at),
            _header_field(hostname, 255),
            _header_field(app_name, 48),
            _header_field(procid, 128),
            _header_field(event.msgid, 32),
        )
    )
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return f"{header} {''.join(elements)} {text}".encode()


def frame(message: bytes) -> bytes:
    """RFC 5425 4.3: octet-counting, ``MSG-LEN SP SYSLOG-MSG`` (MSG-LEN in octets)."""
    return b"%d %s" % (len(message), message)


def unframe(stream: bytes) -> tuple[list[bytes], bytes]:
    """The whole messages at the start of an octet-counted ``stream``, and what is left."""
    messages: list[bytes] = []
    while True:
        length, space, rest = stream.partition(b" ")
        if not space or not length.isdigit() or len(rest) < int(length):
            return messages, stream
        messages.append(rest[: int(length)])
        stream = rest[int(length) :]


# -- the store's side -------------------------------------------------------------------------


def events_after(store: StoreBase, after: int, limit: int) -> list[SiemEvent]:
    """Up to ``limit`` audit events after ``after`` in ``seq`` order, with no hole: one that
    retention purged before it was sent is passed over (the receiver sees the gap by seq); a
    hole further on (a transaction not yet committed) ends the batch."""
    with store.session("siem read") as session:
        rows = session.scalars(
            select(AuditEvent).where(AuditEvent.seq > after).order_by(AuditEvent.seq).limit(limit)
        ).all()
        start = chain_start(session)
        expected = max(after + 1, start)
        if rows and rows[0].seq > expected:
            return []  # a hole before the first: not committed yet
        if rows and after + 1 < start:
            log.warning(
                "siem: events %d-%d were purged before they were sent", after + 1, start - 1
            )
        events: list[SiemEvent] = []
        for row in rows:
            if row.seq != expected:
                break
            expected += 1
            incident = None
            if row.object.startswith("incident:") and row.action.startswith("incident_"):
                found = session.get(Incident, row.object.removeprefix("incident:"))
                if found is not None:
                    state = found.state  # a refused change changed nothing
                    changed = row.action == "incident_opened" or row.outcome == "ok"
                    if changed and row.action in STATE_AFTER:
                        state = STATE_AFTER[row.action].value
                    incident = IncidentFacts(found.id, found.kind, found.severity, state)
            events.append(
                SiemEvent(
                    seq=row.seq,
                    at=row.at,
                    actor=row.actor,
                    action=row.action,
                    object=row.object,
                    outcome=row.outcome,
                    details=safe_details(row.details),
                    prev_hash=row.prev_hash,
                    hash=row.hash,
                    incident=incident,
                )
            )
        return events


# -- the on-disk queue ------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueState:
    delivered: int = 0
    """The last seq known read by the collector."""
    queued: int = 0
    """The last seq written to the queue."""
    full: bool = False
    """A ``siem_queue_full`` incident is open for this episode (one per episode)."""
    resend: bool = False
    """A delivery failed: the next connection sends the last ``RESEND`` messages the
    collector had confirmed again, before the rest."""


class DiskQueue:
    """Framed messages waiting for the collector, in seq order, in one file (``queue``, each
    record ``SEQ SP LEN SP MSG``), and what is known of them (``state.json``, replaced whole).
    The bound (``max_bytes``) is the forwarder's to keep."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.path = folder / "queue"
        self.state_path = folder / "state.json"

    def state(self) -> QueueState:
        """The saved state, and the queue file's last record when it is further (a crash
        between writing records and saving the state)."""
        try:
            data = json.loads(self.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            data = {}
        except (OSError, ValueError) as exc:
            raise SiemError("siem.state", f"{self.state_path} is unreadable") from exc
        delivered, queued = int(data.get("delivered", 0)), int(data.get("queued", 0))
        records = self.records()
        last = records[-1][0] if records else 0
        queued = max(queued, last, delivered)
        return QueueState(delivered, queued, bool(data.get("full")), bool(data.get("resend")))

    def save(self, state: QueueState) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        body = {"delivered": state.delivered, "queued": state.queued, "full": state.full}
        body["resend"] = state.resend
        temporary = self.state_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(body), encoding="utf-8")
        os.replace(temporary, self.state_path)

    def records(self, path: Path | None = None) -> list[tuple[int, bytes]]:
        """(seq, frame) of each whole record of the queue (or ``path``); a torn last one is
        left out."""
        try:
            data = (path or self.path).read_bytes()
        except FileNotFoundError:
            return []
        records: list[tuple[int, bytes]] = []
        at = 0
        while at < len(data):
            seq_end = data.find(b" ", at)
            length_end = data.find(b" ", seq_end + 1) if seq_end >= 0 else -1
            if length_end < 0:
                break
            seq, length = data[at:seq_end], data[seq_end + 1 : length_end]
            end = length_end + 1 + int(length) if length.isdigit() else len(data) + 1
            if not seq.isdigit() or end > len(data):
                break
            records.append((int(seq), data[seq_end + 1 : end]))
            at = end
        return records

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def append(self, records: Sequence[tuple[int, bytes]]) -> None:
        """Write ``records`` durably; OSError (ENOSPC) leaves the file as it was."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        before = self.size()
        data = b"".join(b"%d %s" % (seq, framed) for seq, framed in records)
        try:
            with self.path.open("ab") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
        except OSError:
            with contextlib.suppress(OSError):  # else a torn record is left out when read
                os.truncate(self.path, before)
            raise

    def pending(self, delivered: int) -> list[tuple[int, bytes]]:
        return [(seq, framed) for seq, framed in self.records() if seq > delivered]

    def compact(self, delivered: int) -> None:
        """Move what was delivered out of the queue, keeping the last ``RESEND`` of it (the
        ``sent`` file) for a resend after a failure."""
        records = self.records()
        done = [(seq, framed) for seq, framed in records if seq <= delivered]
        cut = done[0][0] if done else delivered + 1
        kept = [(seq, framed) for seq, framed in self.sent() if seq < cut]
        self._write(self.sent_path, (kept + done)[-RESEND:])
        self._write(self.path, [(seq, framed) for seq, framed in records if seq > delivered])

    @property
    def sent_path(self) -> Path:
        return self.folder / "sent"

    def sent(self) -> list[tuple[int, bytes]]:
        """The last messages delivered (at most ``RESEND``), oldest first."""
        return self.records(self.sent_path)

    def _write(self, path: Path, records: Sequence[tuple[int, bytes]]) -> None:
        temporary = path.with_suffix(".tmp")
        temporary.write_bytes(b"".join(b"%d %s" % (seq, framed) for seq, framed in records))
        os.replace(temporary, path)


# -- the collector ----------------------------------------------------------------------------


class Collector(Protocol):
    def deliver(self, frames: Sequence[bytes]) -> None:
        """Send ``frames`` in order on one connection and return once they are known read;
        SiemError otherwise (then any of them may or may not have arrived)."""


def tls_context(settings: SiemSettings) -> ssl.SSLContext:
    """RFC 5425 5: TLS with the collector's certificate verified (``ca_file``, its name or
    address), TLS 1.2 or later; the appliance's own certificate when one is given."""
    try:
        context = ssl.create_default_context(cafile=settings.ca_file)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if settings.cert_file:
            context.load_cert_chain(settings.cert_file, settings.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise SiemError(
            "siem.tls_files", f"the CA or certificate files do not load: {exc}"
        ) from exc
    return context


class TlsCollector:
    """The collector at ``[siem] collector``, one connection per batch."""

    def __init__(self, settings: SiemSettings) -> None:
        self.address = (settings.host, settings.port)
        self.server_name = settings.server_name or settings.host
        self.timeout_s = settings.timeout_s
        self.context = tls_context(settings)

    def deliver(self, frames: Sequence[bytes]) -> None:
        where = f"{self.address[0]}:{self.address[1]}"
        try:
            raw = socket.create_connection(self.address, timeout=self.timeout_s)
        except OSError as exc:
            raise SiemError("siem.unreachable", f"the collector {where} did not answer") from exc
        try:
            tls = self.context.wrap_socket(raw, server_hostname=self.server_name)
        except ssl.SSLCertVerificationError as exc:
            raw.close()
            raise SiemError(
                "siem.certificate", f"the certificate of {where} does not verify"
            ) from exc
        except OSError as exc:
            raw.close()
            raise SiemError("siem.tls", f"no TLS session with {where}") from exc
        with tls:
            try:
                for framed in frames:
                    tls.sendall(framed)
            except OSError as exc:
                raise SiemError("siem.broken", f"the connection to {where} broke") from exc
            _confirm(tls, where)


def _confirm(tls: ssl.SSLSocket, where: str) -> None:
    """Close the TLS session (RFC 5246 7.2.1 close_notify, after everything sent) and wait for
    the collector's close: it reads up to our close_notify first, so a close (its own
    close_notify, or a plain end of stream) says everything sent was read; a reset says the
    collector went away with data unread."""
    try:
        tls.unwrap()
    except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
        return  # closed after reading everything, without a close_notify of its own
    except OSError as exc:
        raise SiemError(
            "siem.unconfirmed", f"{where} closed before what was sent was known read"
        ) from exc


# -- the forwarder ----------------------------------------------------------------------------


class Forwarder:
    """The store's audit events to the collector, through the disk queue. One thread drives
    it (``run``, or ``drain``): it keeps the queue's state in memory and saves each change."""

    def __init__(
        self,
        storage: Incidents,
        settings: SiemSettings,
        home: Path,
        collector: Collector | None = None,
        hostname: str | None = None,
    ) -> None:
        self.storage = storage
        self.settings = settings
        self.queue = DiskQueue(home / "siem", settings.queue_max_bytes)
        self.state = self.queue.state()
        self.collector = collector if collector is not None else TlsCollector(settings)
        self.hostname = hostname if hostname is not None else socket.gethostname()
        self.procid = str(os.getpid())

    def _save(self, state: QueueState) -> None:
        """Known here first, then on disk (a state file that cannot be written, the disk
        being full, costs at most a resend after a restart: ``DiskQueue.state`` recovers)."""
        self.state = state
        self.queue.save(state)

    def fill(self) -> int:
        """Queue the store's events after the last queued, as many as the bound allows;
        returns how many. A full queue or disk opens one incident and takes no more."""
        events = events_after(self.storage, self.state.queued, BATCH)
        room = self.settings.queue_max_bytes - self.queue.size()
        records: list[tuple[int, bytes]] = []
        bounded = False
        for event in events:
            framed = frame(to_syslog(event, self.hostname, self.settings.app_name, self.procid))
            needed = len(b"%d " % event.seq) + len(framed)
            if needed > room:
                self._full(f"the queue is full ({self.settings.queue_max_bytes} bytes)")
                bounded = True
                break
            room -= needed
            records.append((event.seq, framed))
        if not records:
            return 0
        try:
            self.queue.append(records)
        except OSError as exc:
            why = "no space left on its disk" if exc.errno == errno.ENOSPC else "not writable"
            self._full(f"the queue file is {why}")
            return 0
        # An episode of a full queue ends when what was read all fits.
        full = bounded and self.state.full
        self._save(dataclasses.replace(self.state, queued=records[-1][0], full=full))
        return len(records)

    def _full(self, why: str) -> None:
        if self.state.full:
            return  # one incident per episode
        log.warning("siem: %s; events wait in the store", why)
        try:
            self.storage.open_incident(
                QUEUE_FULL_KIND, "medium", f"SIEM forwarding: {why}; events wait in the store"
            )
        except StorageError as exc:
            log.warning("siem: the queue-full incident could not be opened (%s)", exc.code)
            return
        with contextlib.suppress(OSError):  # a full disk: remembered until this process ends
            self._save(dataclasses.replace(self.state, full=True))

    def send(self) -> int:
        """Send what is queued, a batch per connection (after a failure, the last messages
        confirmed before it first: ``RESEND``); returns how many new ones were delivered.
        SiemError when the collector is away (what it did not confirm stays queued)."""
        pending = self.queue.pending(self.state.delivered)
        if self.state.resend:
            again = [(seq, framed) for seq, framed in self.queue.sent()]
            pending = again + pending
        sent = 0
        try:
            for start in range(0, len(pending), BATCH):
                batch = pending[start : start + BATCH]
                try:
                    self.collector.deliver([framed for _, framed in batch])
                except SiemError:
                    if not self.state.resend:
                        self._save(dataclasses.replace(self.state, resend=True))
                    raise
                new = [seq for seq, _ in batch if seq > self.state.delivered]
                last = max(self.state.delivered, batch[-1][0])
                self._save(dataclasses.replace(self.state, delivered=last, resend=False))
                sent += len(new)
        finally:
            if sent:
                self.queue.compact(self.state.delivered)
        return sent

    def drain(self) -> int:
        """Fill and send until the store has nothing new (``appliance siem forward --once``)."""
        total = 0
        while True:
            queued = self.fill()
            sent = self.send()
            total += sent
            if not queued and not sent:
                return total

    def run(self, stop: threading.Event) -> None:
        """Until ``stop``: fill and send every ``poll_s``; after a failure wait 1 s, doubling
        up to ``retry_max_s``, and resend from the first message not known delivered."""
        failures = 0
        while not stop.is_set():
            try:
                self.drain()
                failures, wait = 0, self.settings.poll_s
            except (ApplianceError, OSError) as exc:
                failures += 1
                wait = min(self.settings.retry_max_s, 2.0 ** (failures - 1))
                code = getattr(exc, "code", None) or type(exc).__name__
                log.warning("siem: %s; next attempt in %.0f s", code, wait)
            stop.wait(wait)
