"""Calls and their turns: recorded as they happen, read back only with an audited reason;
legal holds."""

from __future__ import annotations

import fcntl
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from appliance.core.errors import KeyringError, StorageError
from appliance.core.ports import TurnRecord
from appliance.storage import postgresql
from appliance.storage.base import SYSTEM_ACTOR, StoreBase, storage_errors
from appliance.storage.schema import Call, Consent, Incident, Recording, ToolCall, Turn, new_id

INTERRUPTED = "ended:interrupted"
"""The end of a call its node did not live to give one (closed at the node's restart)."""


@dataclass(frozen=True)
class TurnView:
    index: int
    transcript: str | None
    reply: str | None
    interrupted: bool
    error_code: str | None
    timings_ms: dict[str, float]
    voice_to_voice_ms: float | None
    route: str = ""
    citations: tuple[str, ...] = ()


@dataclass(frozen=True)
class CallView:
    id: str
    channel: str
    status: str
    started_at: datetime
    ended_at: datetime | None
    legal_hold: bool
    hold_reason: str | None
    turns: list[TurnView] = field(default_factory=list)
    recordings: int = 0
    node: str | None = None
    """The voice node that took the call (``[service] node``)."""


class Calls(StoreBase):
    """Calls and turns in, audited reads out."""

    def start_call(self, caller_id: str | None, channel: str) -> CallHandle:
        hashed = self.caller_hash(caller_id) if caller_id else None
        with self.session("start call") as session:
            caller_row_id = None
            if hashed is not None:
                caller = self._caller_in(session, hashed)
                caller.last_seen_at = self.clock()
                caller_row_id = caller.id
            key_id, _ = self._new_data_key(session, "call")
            call = Call(
                caller_id=caller_row_id,
                data_key_id=key_id or None,
                channel=channel,
                started_at=self.clock(),
                node=self.node,
            )
            session.add(call)
            session.flush()
            call_id = call.id
        return CallHandle(self, call_id)

    def add_turn(self, call_id: str, record: TurnRecord) -> str:
        """Store one turn; returns its id once committed."""
        turn_id = new_id()
        with self.session("store turn") as session:
            call = session.get(Call, call_id)
            if call is None:
                raise StorageError("storage.no_call", f"call {call_id} does not exist")
            key = self._data_key(session, call.data_key_id)
            session.add(
                Turn(
                    id=turn_id,
                    call_id=call_id,
                    index=record.index,
                    created_at=self.clock(),
                    transcript=self._seal(
                        key, record.transcript.encode(), "turns", "transcript", turn_id
                    ),
                    reply=self._seal(key, record.reply.encode(), "turns", "reply", turn_id),
                    interrupted=record.interrupted,
                    error_code=record.error_code or None,
                    timings=json.dumps(dict(record.timings_ms), sort_keys=True),
                    voice_to_voice_ms=record.voice_to_voice_ms,
                    guard=json.dumps(dict(record.guard), sort_keys=True) if record.guard else None,
                    route=record.route or None,
                    citations=json.dumps(list(record.citations)) if record.citations else None,
                )
            )
            if record.escalation:
                incident = Incident(
                    call_id=call_id,
                    caller_id=call.caller_id,
                    kind=record.escalation,
                    severity="high",
                    summary=f"turn {record.index}: {record.escalation} path taken",
                    opened_at=self.clock(),
                )
                session.add(incident)
                session.flush()
                # Every incident leaves its audit event, as open_incident's do: the trail (and
                # the SIEM it feeds, deploy/siem.py) sees each one, in order.
                obj = f"incident:{incident.id}"
                self.audit_in(session, SYSTEM_ACTOR, "incident_opened", obj, record.escalation)
            if record.audio is not None:
                recording_id = new_id()
                session.add(
                    Recording(
                        id=recording_id,
                        call_id=call_id,
                        turn_id=turn_id,
                        created_at=self.clock(),
                        sample_rate_hz=record.audio_rate_hz,
                        audio=self._seal(key, record.audio, "recordings", "audio", recording_id),
                    )
                )
            call.turn_count = call.turn_count + 1
        return turn_id

    def claim_node(self) -> None:
        """Hold this node's name while the store is open, so that no second process serves
        under it (it would close the first one's live calls as interrupted): a session lock
        on the server, a file lock beside the SQLite file; a killed process's goes with it."""
        name = f"node\0{self.node or ''}"
        if self.engine.dialect.name == "postgresql":
            hold = postgresql.Hold(self.engine.connect(), name)
            with storage_errors("claim node"):
                held = hold.take()
            if held:
                self._node_claim = hold
                return
            hold.connection.close()
        elif self.path is not None:
            lock = self.path.with_name(f"{self.path.name}.node-{self.node or ''}.lock")
            handle = lock.open("a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
            else:
                self._node_claim = handle
                return
        else:
            return
        raise StorageError(
            "storage.node_taken",
            f"another process serves as node {self.node or '(unnamed)'} on this store: give "
            "each its own [service] node",
        )

    def close_interrupted(self) -> int:
        """At a node's start: its calls still active were cut off by a kill or a crash (a call
        that ended was given its end). Each is closed as ``ended:interrupted`` at its last
        stored turn (or its start); its turns stay. Only this node's calls: the others' may be
        live. Returns how many; audited once."""
        with self.session("close interrupted calls") as session:
            calls = list(
                session.scalars(select(Call).where(Call.status == "active", Call.node == self.node))
            )
            for call in calls:
                last = session.scalar(
                    select(func.max(Turn.created_at)).where(Turn.call_id == call.id)
                )
                call.status = INTERRUPTED
                call.ended_at = last or call.started_at
            if calls:
                self.audit_in(
                    session,
                    SYSTEM_ACTOR,
                    "calls_interrupted",
                    f"node:{self.node or 'default'}",
                    "ok",
                    {"calls": len(calls)},
                )
        return len(calls)

    def end_call(self, call_id: str, status: str) -> None:
        with self.session("end call") as session:
            call = session.get(Call, call_id)
            if call is not None:
                call.status = status
                call.ended_at = self.clock()

    def record_consent(
        self, call_id: str, decision: str, disclosure_version: str, method: str
    ) -> None:
        with self.session("record consent") as session:
            session.add(
                Consent(
                    call_id=call_id,
                    decision=decision,
                    disclosure_version=disclosure_version,
                    method=method,
                )
            )
            call = session.get(Call, call_id)
            if call is not None:
                call.disclosure_version = disclosure_version

    def record_tool_call(
        self, call_id: str, tool: str, arguments: Mapping[str, Any], outcome: str, actor: str
    ) -> None:
        row_id = new_id()
        with self.session("record tool call") as session:
            call = session.get(Call, call_id)
            key = self._data_key(session, call.data_key_id if call else None)
            sealed = self._seal(
                key, json.dumps(dict(arguments)).encode(), "tool_calls", "arguments", row_id
            )
            session.add(
                ToolCall(id=row_id, call_id=call_id, tool=tool, arguments=sealed, outcome=outcome)
            )
            self.audit_in(session, actor, "tool_call", f"call:{call_id}", outcome, {"tool": tool})

    def list_calls(self, limit: int = 100) -> list[CallView]:
        """Call metadata only: no content, so no audit event."""
        with self.session("list calls") as session:
            calls = session.scalars(
                select(Call).order_by(Call.started_at.desc()).limit(limit)
            ).all()
            return [self._call_view(c, []) for c in calls]

    def read_call(self, call_id: str, actor: str, reason: str = "") -> CallView:
        """Decrypt a call's turns; leaves an audit event (the read is recorded even if it fails)."""
        try:
            with self.session("read call") as session:
                call = session.get(Call, call_id)
                if call is None:
                    raise StorageError("storage.no_call", f"call {call_id} does not exist")
                key = self._data_key(session, call.data_key_id)
                turns = session.scalars(
                    select(Turn).where(Turn.call_id == call_id).order_by(Turn.index)
                ).all()
                views = [self._turn_view(key, t) for t in turns]
                recordings = (
                    session.scalar(
                        select(func.count())
                        .select_from(Recording)
                        .where(Recording.call_id == call_id)
                    )
                    or 0
                )
                self.audit_in(session, actor, "read", f"call:{call_id}", "ok", {"reason": reason})
                return self._call_view(call, views, int(recordings))
        except Exception as exc:
            with self.session("audit failed read") as session:
                self.audit_in(
                    session,
                    actor,
                    "read",
                    f"call:{call_id}",
                    "failed",
                    {"reason": reason, "error": getattr(exc, "code", type(exc).__name__)},
                )
            raise

    def _turn_view(self, key: bytes | None, turn: Turn) -> TurnView:
        def text(column: str, value: bytes | None) -> str | None:
            if value is None:
                return None
            return self._open(key, value, "turns", column, turn.id).decode()

        return TurnView(
            index=turn.index,
            transcript=text("transcript", turn.transcript),
            reply=text("reply", turn.reply),
            interrupted=turn.interrupted,
            error_code=turn.error_code,
            timings_ms=json.loads(turn.timings or "{}"),
            voice_to_voice_ms=turn.voice_to_voice_ms,
            route=turn.route or "",
            citations=tuple(json.loads(turn.citations or "[]")),
        )

    @staticmethod
    def _call_view(call: Call, turns: list[TurnView], recordings: int = 0) -> CallView:
        return CallView(
            call.id,
            call.channel,
            call.status,
            call.started_at,
            call.ended_at,
            call.legal_hold,
            call.hold_reason,
            turns,
            recordings,
            call.node,
        )

    def knowledge_gaps(self, actor: str, days: int = 30) -> list[tuple[str, int]]:
        """What callers asked that nothing in the knowledge base answered (turns routed to
        the honest unknown in the last ``days``): the stored wording, already redacted by the
        input guard, with how often it was asked, most asked first. Reading it is audited,
        like any read of transcripts; purged or erased turns are gone from it too."""
        since = self.clock() - timedelta(days=days)
        counts: dict[str, int] = {}
        with self.session("knowledge gaps") as session:
            rows = session.execute(
                select(Turn, Call.data_key_id)
                .join(Call, Call.id == Turn.call_id)
                .where(Turn.route == "unknown", Turn.created_at >= since)
            ).all()
            for turn, key_id in rows:
                if turn.transcript is None:
                    continue
                try:
                    key = self._data_key(session, key_id)
                except KeyringError:
                    continue  # erased: its key was shredded
                wording = self._open(key, turn.transcript, "turns", "transcript", turn.id)
                question = " ".join(wording.decode().split()).strip().lower().rstrip("?.! ")
                if question:
                    counts[question] = counts.get(question, 0) + 1
            self.audit_in(
                session, actor, "read", "knowledge_gaps", "ok", {"days": days, "turns": len(rows)}
            )
        return sorted(counts.items(), key=lambda item: (-item[1], item[0]))

    def read_recording(self, call_id: str, actor: str) -> list[bytes]:
        with self.session("read recording") as session:
            call = session.get(Call, call_id)
            if call is None:
                raise StorageError("storage.no_call", f"call {call_id} does not exist")
            key = self._data_key(session, call.data_key_id)
            rows = session.scalars(select(Recording).where(Recording.call_id == call_id)).all()
            audio = [self._open(key, r.audio, "recordings", "audio", r.id) for r in rows]
            self.audit_in(session, actor, "read_recording", f"call:{call_id}", "ok")
            return audio

    def set_legal_hold(self, call_id: str, reason: str | None, actor: str) -> None:
        """Hold (with a reason) or release a call: held data outlives retention and erasure."""
        with self.session("legal hold") as session:
            call = session.get(Call, call_id)
            if call is None:
                raise StorageError("storage.no_call", f"call {call_id} does not exist")
            if reason is not None and not reason.strip():
                raise StorageError("storage.hold_reason", "a legal hold needs a reason")
            call.legal_hold = reason is not None
            call.hold_reason = reason
            self.audit_in(
                session,
                actor,
                "legal_hold" if reason else "legal_hold_release",
                f"call:{call_id}",
                "ok",
                {"reason": reason or ""},
            )


class CallHandle:
    """A call's link to storage: the pipeline's CallRecorder."""

    def __init__(self, storage: Calls, call_id: str) -> None:
        self.storage = storage
        self.call_id = call_id

    def record_turn(self, turn: TurnRecord) -> None:
        self.storage.add_turn(self.call_id, turn)

    def finish(self, status: str) -> None:
        self.storage.end_call(self.call_id, status)
