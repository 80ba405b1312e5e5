"""The purge job: idempotent and resumable, batch by batch, each batch its own transaction."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, func, or_, select, update
from sqlalchemy.orm import Session

from appliance.core.ports import CallbackState, IncidentState
from appliance.retention.policy import DataClass, RetentionPolicy
from appliance.storage import audit, postgresql
from appliance.storage.repository import Storage
from appliance.storage.schema import (
    AuditEvent,
    Call,
    CallbackRequest,
    Incident,
    Recording,
    RetentionRun,
    ToolCall,
    Turn,
)

Progress = Callable[[DataClass, int, int], None]


@dataclass
class RetentionReport:
    dry_run: bool
    now: datetime
    purged: dict[str, int] = field(default_factory=dict)
    due_calls: list[str] = field(default_factory=list)
    """In a dry run: the ids of the calls that would go."""


def _not_held(query: Select[Any], call_column: Any) -> Select[Any]:
    held = select(Call.id).where(Call.legal_hold.is_(True))
    return query.where(call_column.not_in(held))


def _candidates(data_class: DataClass, cutoff: datetime) -> Select[Any]:
    if data_class is DataClass.RECORDINGS:
        return _not_held(
            select(Recording.id).where(Recording.created_at < cutoff), Recording.call_id
        )
    if data_class is DataClass.TRANSCRIPTS:
        query = select(Turn.id).where(Turn.created_at < cutoff, Turn.content_purged_at.is_(None))
        return _not_held(query, Turn.call_id)
    if data_class is DataClass.TOOL_CALLS:
        return _not_held(select(ToolCall.id).where(ToolCall.created_at < cutoff), ToolCall.call_id)
    if data_class is DataClass.CALLS:
        return select(Call.id).where(Call.started_at < cutoff, Call.legal_hold.is_(False))
    if data_class is DataClass.INCIDENTS:
        # An incident nobody resolved stays whatever its age, as an open callback request does
        # (someone still has to deal with it); a resolved one goes its period after resolution.
        resolved = Incident.state == IncidentState.RESOLVED.value
        return select(Incident.id).where(resolved, Incident.resolved_at < cutoff)
    if data_class is DataClass.CALLBACKS:
        handled = CallbackRequest.state != CallbackState.OPEN.value
        return select(CallbackRequest.id).where(handled, CallbackRequest.changed_at < cutoff)
    # Only a prefix of the chain can go (its last hash becomes the anchor): stop at the first
    # event that is still within its period, even if a later one looks older (clock steps).
    first_kept = select(func.min(AuditEvent.seq)).where(AuditEvent.at >= cutoff).scalar_subquery()
    return (
        select(AuditEvent.seq)
        .where(AuditEvent.at < cutoff, or_(first_kept.is_(None), AuditEvent.seq < first_kept))
        .order_by(AuditEvent.seq)
    )


def _purge(
    storage: Storage, session: Session, data_class: DataClass, ids: list[Any], now: datetime
) -> None:
    if data_class is DataClass.RECORDINGS:
        session.query(Recording).filter(Recording.id.in_(ids)).delete(synchronize_session=False)
    elif data_class is DataClass.TRANSCRIPTS:
        session.execute(
            update(Turn)
            .where(Turn.id.in_(ids))
            .values(transcript=None, reply=None, content_purged_at=now)
        )
    elif data_class is DataClass.TOOL_CALLS:
        session.query(ToolCall).filter(ToolCall.id.in_(ids)).delete(synchronize_session=False)
    elif data_class is DataClass.CALLS:
        calls = list(session.scalars(select(Call).where(Call.id.in_(ids))))
        storage.erase_calls_in(session, calls)
    elif data_class is DataClass.INCIDENTS:
        session.query(Incident).filter(Incident.id.in_(ids)).delete(synchronize_session=False)
    elif data_class is DataClass.CALLBACKS:
        rows = list(session.scalars(select(CallbackRequest).where(CallbackRequest.id.in_(ids))))
        storage.delete_callbacks_in(session, rows)
    else:
        events = list(
            session.scalars(
                select(AuditEvent).where(AuditEvent.seq.in_(ids)).order_by(AuditEvent.seq)
            )
        )
        if events:
            postgresql.serialize(session, "audit chain")  # no append reads a half-cut chain
            audit.set_anchor(session, events[-1])
            for event in events:
                session.delete(event)


def run_retention(
    storage: Storage,
    policy: RetentionPolicy,
    *,
    dry_run: bool = False,
    batch_size: int = 500,
    actor: str = "retention",
    progress: Progress | None = None,
) -> RetentionReport:
    now = storage.clock()
    report = RetentionReport(dry_run=dry_run, now=now)
    with storage.session("start retention run") as session:
        run = RetentionRun(started_at=now, dry_run=dry_run)
        session.add(run)
        session.flush()
        run_id = run.id
    for data_class in DataClass:
        cutoff = policy.cutoff(data_class, now)
        query = _candidates(data_class, cutoff)
        with storage.session("count due rows") as session:
            total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
            if dry_run and data_class is DataClass.CALLS:
                report.due_calls = [str(i) for i in session.scalars(query)]
        report.purged[data_class.value] = int(total)
        if dry_run or not total:
            continue
        done = 0
        while True:
            with storage.session(f"purge {data_class.value}") as session:
                # Nodes purging at once take turns, each batch chosen after the last one
                # committed (the same rows twice would fail the second delete).
                postgresql.serialize(session, "retention")
                ids = list(session.scalars(query.limit(batch_size)))
                if not ids:
                    break
                _purge(storage, session, data_class, ids, now)
            done += len(ids)
            if progress is not None:
                progress(data_class, min(done, total), total)
    with storage.session("finish retention run") as session:
        run_row = session.get(RetentionRun, run_id)
        assert run_row is not None
        run_row.finished_at = storage.clock()
        run_row.status = "done"
        run_row.purged = json.dumps(report.purged, sort_keys=True)
        storage.audit_in(
            session,
            actor,
            "retention_dry_run" if dry_run else "retention_run",
            f"retention_run:{run_id}",
            "ok",
            dict(report.purged),
        )
    if not dry_run and any(report.purged.values()):
        storage.after_erasure()
    return report


@dataclass(frozen=True)
class RunView:
    """The newest finished purge (not a dry run): when, and how many rows of each class."""

    finished_at: datetime
    purged: dict[str, int]


def last_run(storage: Storage) -> RunView | None:
    with storage.session("last retention run") as session:
        row = session.scalars(
            select(RetentionRun)
            .where(RetentionRun.dry_run.is_(False), RetentionRun.status == "done")
            .order_by(RetentionRun.finished_at.desc())
            .limit(1)
        ).first()
        if row is None or row.finished_at is None:
            return None
        return RunView(row.finished_at, {k: int(v) for k, v in json.loads(row.purged).items()})


def overdue(
    storage: Storage, policy: RetentionPolicy, now: datetime, grace: timedelta
) -> dict[DataClass, int]:
    """Rows still kept more than ``grace`` past their period (the purge runs hourly, so a row
    may outlive its period by up to an hour), per class; legal holds excepted, as the purge
    excepts them."""
    found: dict[DataClass, int] = {}
    with storage.session("overdue rows") as session:
        for data_class in DataClass:
            query = _candidates(data_class, policy.cutoff(data_class, now) - grace)
            count = session.scalar(select(func.count()).select_from(query.subquery())) or 0
            if count:
                found[data_class] = int(count)
    return found


# What each class's period counts from, and its key (the column _candidates selects).
_AGE_COLUMNS: dict[DataClass, tuple[Any, Any]] = {
    DataClass.RECORDINGS: (Recording.id, Recording.created_at),
    DataClass.TRANSCRIPTS: (Turn.id, Turn.created_at),
    DataClass.TOOL_CALLS: (ToolCall.id, ToolCall.created_at),
    DataClass.CALLS: (Call.id, Call.started_at),
    DataClass.INCIDENTS: (Incident.id, Incident.resolved_at),
    DataClass.CALLBACKS: (CallbackRequest.id, CallbackRequest.changed_at),
    DataClass.AUDIT: (AuditEvent.seq, AuditEvent.at),
}


def oldest_kept(storage: Storage, now: datetime) -> dict[DataClass, datetime]:
    """Per class, when its oldest row that the purge governs began its period (rows on legal
    hold, open callbacks and unresolved incidents excepted, as the purge excepts them)."""
    found: dict[DataClass, datetime] = {}
    with storage.session("oldest rows") as session:
        for data_class, (key, column) in _AGE_COLUMNS.items():
            governed = _candidates(data_class, now + timedelta(days=1)).order_by(None)
            oldest = session.scalar(select(func.min(column)).where(key.in_(governed)))
            if oldest is not None:
                found[data_class] = oldest
    return found
