"""The caller's right of access (GDPR Art. 15): one caller's calls, transcripts and replies,
consent records, tool calls, callback requests and directory entry, decrypted into one file for
them; nobody else's; the PIN's hash and the TOTP secret withheld; the export audited without
content. From the store, the CLI (a 0600 file) and the panel (admins only)."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from appliance.core.ports import CredentialKind, TurnRecord
from appliance.identity.directory import new_totp_secret, pin_record
from appliance.storage.keys import load_or_create
from appliance.storage.repository import Storage
from appliance.storage.schema import AuditEvent
from tests.integration.test_admin import client, csrf_of, log_in, world  # noqa: F401
from tests.integration.test_storage_cli import cli

SUBJECT = "+15550142"
OTHER = "+15550199"
SAID = ("I'd like to move my appointment to Friday", "what is my balance on account 4471")
REPLIED = ("Your appointment is now on Friday.", "Your balance is 12 pounds.")

pytestmark = pytest.mark.backends


def seed(storage: Storage) -> dict[str, str]:
    """The subject: two calls, a consent, a tool call, a callback request and a directory
    entry with a PIN, an authenticator and a contact; another caller with a call of their own."""
    ids = {}
    for n, (said, replied) in enumerate(zip(SAID, REPLIED, strict=True)):
        handle = storage.start_call(SUBJECT, "sip")
        if n == 0:
            storage.record_consent(handle.call_id, "granted", "us-en-3", "dtmf")
        handle.record_turn(TurnRecord(1, said, replied))
        handle.finish("ended")
        ids[f"call{n}"] = handle.call_id
    storage.record_tool_call(
        ids["call1"], "account_balance", {"account": "4471"}, "ok", "system:agent"
    )
    ids["callback"] = storage.request_callback(ids["call1"], SUBJECT, "transfer")
    storage.add_caller(SUBJECT, "Ada Lovelace", "admin:test")
    storage.set_credential(SUBJECT, CredentialKind.PIN, pin_record("402913"), "admin:test")
    storage.set_credential(SUBJECT, CredentialKind.TOTP, new_totp_secret(), "admin:test")
    storage.set_credential(SUBJECT, CredentialKind.CONTACT, b"ada@example.org", "admin:test")
    other = storage.start_call(OTHER, "sip")
    other.record_turn(TurnRecord(1, "the other caller's secret words", "noted"))
    storage.record_tool_call(other.call_id, "account_balance", {"account": "9999"}, "ok", "x")
    storage.request_callback(other.call_id, OTHER, "transfer")
    ids["other"] = other.call_id
    return ids


def exports(storage: Storage) -> list[AuditEvent]:
    with storage.session("check") as db:
        query = select(AuditEvent).where(AuditEvent.action == "access_export")
        return list(db.scalars(query.order_by(AuditEvent.seq)))


def check_document(document: dict[str, Any], ids: dict[str, str]) -> None:
    calls = document["calls"]
    assert [c["id"] for c in calls] == [ids["call0"], ids["call1"]]
    assert [c["turns"][0]["transcript"] for c in calls] == list(SAID)
    assert [c["turns"][0]["reply"] for c in calls] == list(REPLIED)
    assert calls[0]["consents"] == [
        {
            "decision": "granted",
            "disclosure_version": "us-en-3",
            "method": "dtmf",
            "decided_at": calls[0]["consents"][0]["decided_at"],
        }
    ]
    (tool,) = calls[1]["tool_calls"]
    assert (tool["tool"], tool["arguments"], tool["outcome"]) == (
        "account_balance",
        {"account": "4471"},
        "ok",
    )
    (callback,) = document["callback_requests"]
    assert (callback["number"], callback["state"], callback["call_id"]) == (
        SUBJECT,
        "open",
        ids["call1"],
    )
    entry = document["directory_entry"]
    assert (entry["number"], entry["name"], entry["contact_for_codes"]) == (
        SUBJECT,
        "Ada Lovelace",
        "ada@example.org",
    )
    assert entry["factors_enrolled"] == ["contact", "pin", "totp"]
    assert "PIN's hash and the authenticator secret are not in this file" in entry["withheld"]
    assert any("PIN's hash" in w for w in document["withheld"])
    text = json.dumps(document)
    assert ids["other"] not in text and "secret words" not in text and "9999" not in text
    assert OTHER not in text
    assert document["counts"] == {
        "calls": 2,
        "turns": 2,
        "consents": 1,
        "tool_calls": 1,
        "callbacks": 1,
        "incidents": 0,
        "directory_entry": True,
    }


def check_audited(storage: Storage, actor: str) -> None:
    event = exports(storage)[-1]
    assert (event.actor, event.outcome) == (actor, "ok")
    assert event.object == f"caller:{storage.caller_hash(SUBJECT)[:16]}"
    details = json.loads(event.details)
    assert details["calls"] == 2 and details["tool_calls"] == 1 and len(details["callers"]) == 1
    recorded = f"{event.object} {event.details}"
    for content in (*SAID, *REPLIED, SUBJECT, "Ada", "ada@example.org", "4471"):
        assert content not in recorded
    assert storage.verify_audit().ok


def test_the_export_holds_the_callers_data_decrypted_and_no_one_elses(store: Storage) -> None:
    ids = seed(store)
    document = store.caller_access_export(SUBJECT, "admin:dpo")
    check_document(document, ids)
    check_audited(store, "admin:dpo")
    # The number typed with separators finds the same caller.
    spaced = store.caller_access_export("+1 555 0142", "admin:dpo")
    assert [c["id"] for c in spaced["calls"]] == [ids["call0"], ids["call1"]]
    assert spaced["directory_entry"]["number"] == SUBJECT


def test_a_caller_with_nothing_held_gets_an_empty_export_and_it_is_audited(
    store: Storage,
) -> None:
    seed(store)
    document = store.caller_access_export("+15550000", "admin:dpo")
    assert document["found"] is False and document["calls"] == []
    assert document["directory_entry"] is None and document["callback_requests"] == []
    assert exports(store)[-1].outcome == "not_found"


def test_an_erased_callers_export_is_empty(store: Storage) -> None:
    seed(store)
    store.erase_caller(SUBJECT, "admin:dpo")
    document = store.caller_access_export(SUBJECT, "admin:dpo")
    assert document["found"] is False and document["calls"] == []


def test_the_cli_writes_an_owner_only_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = Storage.open_sqlite(home / "appliance.db", load_or_create(home / "keys" / "master.key"))
    try:
        ids = seed(store)
    finally:
        store.close()
    out = tmp_path / "subject.json"
    done = cli(home, "calls", "export-caller", SUBJECT, "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "2 call(s)" in done.stdout and SAID[0] not in done.stdout
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    check_document(json.loads(out.read_text(encoding="utf-8")), ids)
    store = Storage.open_sqlite(home / "appliance.db", load_or_create(home / "keys" / "master.key"))
    try:
        assert exports(store)[-1].actor.startswith("cli:")
        check_audited(store, exports(store)[-1].actor)
    finally:
        store.close()


@pytest.mark.parametrize("who", ["olga", "audrey"])
def test_the_panel_download_is_for_admins_only(world: tuple[Flask, Storage], who: str) -> None:  # noqa: F811
    app, storage = world
    seed(storage)
    c = client(app)
    log_in(c, storage, who)
    page = c.get("/").get_data(as_text=True)
    refused = c.post("/callers/export", data={"csrf": csrf_of(page), "number": SUBJECT})
    assert refused.status_code == 403
    assert exports(storage) == []


def test_the_panel_download_is_the_same_export_and_audited(world: tuple[Flask, Storage]) -> None:  # noqa: F811
    app, storage = world
    ids = seed(storage)
    c = client(app)
    log_in(c, storage, "root")
    page = c.get("/callers").get_data(as_text=True)
    assert 'id="access-export"' in page
    answer = c.post("/callers/export", data={"csrf": csrf_of(page), "number": SUBJECT})
    assert answer.status_code == 200
    assert "attachment" in answer.headers["Content-Disposition"]
    assert answer.headers["Cache-Control"] == "no-store"
    check_document(json.loads(answer.get_data(as_text=True)), ids)
    check_audited(storage, "admin:root")
    empty = c.post("/callers/export", data={"csrf": csrf_of(page), "number": " "})
    assert empty.status_code == 400
