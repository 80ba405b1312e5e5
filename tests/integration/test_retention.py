"""Retention on a real store with a clock that the test moves."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from appliance.config.settings import RetentionSettings
from appliance.core.ports import CallbackState, TurnRecord
from appliance.retention.job import run_retention
from appliance.retention.policy import DataClass, RetentionPolicy
from appliance.storage.keys import load_or_create
from appliance.storage.repository import Storage
from appliance.storage.schema import AuditEvent, DataKey, Recording, RetentionRun
from tests.conftest import Backend
from tests.integration.test_storage import Clock

POLICY = RetentionPolicy.from_settings(
    RetentionSettings(recordings_hours=2, transcripts_days=30, calls_days=90, audit_years=1)
)


@pytest.fixture
def clock() -> Clock:
    return Clock()


pytestmark = pytest.mark.backends


@pytest.fixture
def store(backend: Backend, tmp_path: Path, clock: Clock) -> Iterator[Storage]:
    storage = backend.open(load_or_create(tmp_path / "k"), clock=clock)
    yield storage
    storage.close()


def call_with_audio(store: Storage, words: str) -> str:
    handle = store.start_call("+1555", "test")
    handle.record_turn(TurnRecord(1, words, "ok", audio=b"\x01\x00" * 800))
    return handle.call_id


def count(store: Storage, model: type) -> int:
    with store.session("count") as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_each_class_goes_at_its_time_and_not_before(store: Storage, clock: Clock) -> None:
    call_id = call_with_audio(store, "what was said")
    assert count(store, Recording) == 1
    clock.advance(hours=1)
    assert run_retention(store, POLICY).purged["recordings"] == 0
    clock.advance(hours=2)
    report = run_retention(store, POLICY)
    assert report.purged == {**{c.value: 0 for c in DataClass}, "recordings": 1}
    assert count(store, Recording) == 0
    assert store.read_call(call_id, "t", "t").turns[0].transcript == "what was said"
    clock.advance(days=31)
    assert run_retention(store, POLICY).purged["transcripts"] == 1
    turn = store.read_call(call_id, "t", "t").turns[0]
    assert (turn.transcript, turn.reply) == (None, None)
    assert turn.timings_ms == {}  # metadata stays, content is gone
    clock.advance(days=60)
    assert run_retention(store, POLICY).purged["calls"] == 1
    assert store.list_calls() == []
    assert count(store, DataKey) == 1  # only the pseudonymization key is left


def test_a_run_is_idempotent_and_a_dry_run_only_lists(store: Storage, clock: Clock) -> None:
    ids = [call_with_audio(store, f"call {i}") for i in range(3)]
    clock.advance(days=100)
    dry = run_retention(store, POLICY, dry_run=True)
    assert dry.purged["calls"] == 3 and sorted(dry.due_calls) == sorted(ids)
    assert len(store.list_calls()) == 3
    seen: list[tuple[str, int, int]] = []
    first = run_retention(
        store, POLICY, batch_size=2, progress=lambda c, d, t: seen.append((c.value, d, t))
    )
    assert first.purged["calls"] == 3
    assert ("calls", 2, 3) in seen and ("calls", 3, 3) in seen  # committed batch by batch
    again = run_retention(store, POLICY)
    assert not any(again.purged.values())
    with store.session("runs") as session:
        runs = list(session.scalars(select(RetentionRun)))
    assert len(runs) == 3 and all(r.status == "done" for r in runs)


def test_legal_hold_keeps_a_call_past_every_period(store: Storage, clock: Clock) -> None:
    held = call_with_audio(store, "evidence")
    call_with_audio(store, "ordinary")
    store.set_legal_hold(held, "regulator inquiry", "admin")
    clock.advance(days=400)
    run_retention(store, POLICY)
    calls = store.list_calls()
    assert [c.id for c in calls] == [held]
    assert store.read_call(held, "admin", "inquiry").turns[0].transcript == "evidence"
    assert count(store, Recording) == 1


def test_purging_old_audit_events_keeps_the_chain_verifiable(store: Storage, clock: Clock) -> None:
    call_id = call_with_audio(store, "x")
    for _ in range(5):
        store.read_call(call_id, "op", "check")
    clock.advance(days=370)
    store.read_call(call_id, "op", "recent check")
    report = run_retention(store, POLICY)
    assert report.purged["audit_events"] >= 5
    chain = store.verify_audit()
    assert chain.ok, chain
    with store.session("events") as session:
        actions = list(session.scalars(select(AuditEvent.action).order_by(AuditEvent.seq)))
    assert actions[0] in ("read", "retention_run") and actions[-1] == "retention_run"


def test_audit_purge_takes_only_a_prefix_of_the_chain(store: Storage, clock: Clock) -> None:
    call_id = call_with_audio(store, "x")
    store.read_call(call_id, "op", "old")
    clock.advance(days=400)
    store.read_call(call_id, "op", "recent")
    clock.now -= timedelta(days=400)  # the clock stepped back
    store.read_call(call_id, "op", "stamped in the past")
    clock.advance(days=400)
    run_retention(store, POLICY)
    assert store.verify_audit().ok
    with store.session("events") as session:
        reasons = [e.details for e in session.scalars(select(AuditEvent).order_by(AuditEvent.seq))]
    assert not any('"old"' in r for r in reasons)
    assert any("stamped in the past" in r for r in reasons)


def test_handled_callback_requests_go_after_their_period_open_ones_stay(
    store: Storage, clock: Clock
) -> None:
    policy = RetentionPolicy.from_settings(RetentionSettings(callbacks_days=30))
    open_id = store.request_callback("", "+15550100", "transfer")
    handled = store.request_callback("", "+15550101", "transfer")
    closed = store.request_callback("", "+15550102", "transfer")
    keys = count(store, DataKey)
    clock.advance(days=20)
    store.set_callback_state(handled, CallbackState.CALLED_BACK, "admin:test")
    store.set_callback_state(closed, CallbackState.CLOSED, "admin:test")
    clock.advance(days=25)  # 45 days after the requests, 25 after they were handled
    assert run_retention(store, policy).purged["callback_requests"] == 0
    clock.advance(days=6)
    assert run_retention(store, policy).purged["callback_requests"] == 2
    assert [r.id for r in store.callbacks("admin:test")] == [open_id]
    # Their sealed numbers' keys went with them (each request has its own).
    assert count(store, DataKey) == keys - 2
    clock.advance(days=365)
    assert [r.id for r in store.callbacks("admin:test")] == [open_id]  # never while open
