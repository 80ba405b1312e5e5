"""The caller directory: sealed per entry, tamper-evident, lockable, shredded on removal and
erasure, audited without personal data; its commands; and calls that verify against it."""

from __future__ import annotations

import base64
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from appliance.config.settings import CredentialSource, TransferSettings, load_settings
from appliance.core.errors import ConfigError, DirectoryError, IntegrityError
from appliance.core.ports import CredentialKind, EntryState, TurnRecord
from appliance.identity.directory import DirectoryCredentials, NoDirectory, pin_record
from appliance.identity.factors import (
    AttemptLimiter,
    SecretFactor,
    TotpFactor,
    hash_secret,
    totp,
)
from appliance.identity.voice import VoiceTemplate
from appliance.service import VoiceService
from appliance.storage.keys import load_or_create
from appliance.storage.migrations import LATEST
from appliance.storage.repository import Storage
from appliance.storage.schema import (
    AuditEvent,
    CallerCredential,
    DataKey,
    DirectoryEntry,
    SchemaMigration,
)
from appliance.testing.fakes import FakeTranscriber, ToneSynthesizer
from appliance.tools.agent import CallerFactors
from tests.conftest import Backend
from tests.integration.helpers import (
    NoToolModel,
    agent_said,
    cli,
    fake_service,
    serve_utterances,
    tool_settings,
    upgraded,
)

pytestmark = pytest.mark.backends
ALICE, BOB = "+15550100", "+15550199"  # ALICE is also the demo caller (demo PIN 4921)
NAME = "Alice Pelican-Canary"
CONTACT = "alice.pelican@example.org"
SECRET = b"directory-totp-secret-20"  # 24 bytes, over the 128 bits RFC 4226 asks for
FROZEN_S = 1_764_590_400.0  # the authenticator's clock stands still in the in-call tests


def enrol(store: Storage, number: str = ALICE, pin: str = "1357", name: str = NAME) -> None:
    store.add_caller(number, name, "admin:test")
    store.set_credential(number, CredentialKind.PIN, pin_record(pin), "admin:test")
    store.set_credential(number, CredentialKind.TOTP, SECRET, "admin:test")
    store.set_credential(number, CredentialKind.CONTACT, CONTACT.encode(), "admin:test")


def count(store: Storage, table: type[Any]) -> int:
    with store.session("count") as session:
        return int(session.scalar(select(func.count()).select_from(table)) or 0)


# -- storage -----------------------------------------------------------------------------------


def test_each_entry_is_sealed_under_its_own_key_and_nothing_is_readable_inside(
    store: Storage, backend: Backend, tmp_path: Path
) -> None:
    enrol(store, ALICE)
    enrol(store, BOB, pin="2468", name="Bob")
    with store.session("look") as session:
        entries = list(session.scalars(select(DirectoryEntry)))
        keys = session.scalars(select(DataKey).where(DataKey.purpose == "directory")).all()
        sealed = [e.number for e in entries] + [e.name or b"" for e in entries]
        sealed += list(session.scalars(select(CallerCredential.value)))
    assert len({e.data_key_id for e in entries}) == 2 and len(keys) == 2
    pin = store.credential(ALICE, CredentialKind.PIN)
    assert pin is not None and hash_secret("1357", pin[:16]) == (pin[:16], pin[16:])
    assert store.credential(ALICE, CredentialKind.TOTP) == SECRET
    assert store.credential("+1 555-0100", CredentialKind.CONTACT) == CONTACT.encode()
    assert store.credential("+15550111", CredentialKind.PIN) is None  # not enrolled
    assert store.credential("not a number", CredentialKind.PIN) is None
    # Inside the decrypted database (or the server's dump): the pseudonym and ciphertext
    # only, never the values.
    dump = backend.plain_view(store, tmp_path)
    for value in (b"15550100", b"15550199", b"Pelican", SECRET, CONTACT.encode(), pin):
        assert value not in dump, value
    assert all(b"Pelican" not in v and SECRET not in v for v in sealed)
    assert store.caller_hash(ALICE).encode() in dump
    for path in tmp_path.iterdir():  # and the file itself is ciphertext
        if path.name.startswith("a.db"):
            assert b"Pelican" not in path.read_bytes() and SECRET not in path.read_bytes()


def test_an_entry_opens_only_for_the_number_sealed_in_it(store: Storage) -> None:
    """Rows moved from one caller onto another (in SQL, past the application) open nothing:
    the number is found by its pseudonym, then the sealed number must be it."""
    enrol(store, ALICE)
    enrol(store, BOB, pin="2468", name="Bob")
    alice, bob = store.caller_hash(ALICE), store.caller_hash(BOB)
    move = text("UPDATE directory_entries SET caller_hash = :to WHERE caller_hash = :at")
    with store.session("tamper") as session:  # swap the pseudonyms: each finds the other's row
        session.execute(move, {"at": alice, "to": "x"})
        session.execute(move, {"at": bob, "to": alice})
        session.execute(move, {"at": "x", "to": bob})
    for number in (ALICE, BOB):
        with pytest.raises(IntegrityError) as refused:
            store.credential(number, CredentialKind.PIN)
        assert refused.value.code == "directory.integrity"
        assert DirectoryCredentials(store).pin(number) is None  # the call fails closed
        assert DirectoryCredentials(store).totp_secret(number) is None
        assert not DirectoryCredentials(store).usable(number)
    with pytest.raises(IntegrityError):
        store.directory_entry(ALICE, "admin:test")


def test_a_row_copied_onto_another_entry_and_a_moved_credential_open_nothing(
    store: Storage,
) -> None:
    enrol(store, ALICE)
    enrol(store, BOB, pin="2468", name="Bob")
    with store.session("ids") as session:
        ids = {e.caller_hash: e.id for e in session.scalars(select(DirectoryEntry))}
    alice, bob = ids[store.caller_hash(ALICE)], ids[store.caller_hash(BOB)]
    with store.session("tamper") as session:  # Bob's credential now hangs on Alice's entry
        session.execute(
            text("DELETE FROM caller_credentials WHERE entry_id = :a AND kind = 'pin'"),
            {"a": alice},
        )
        session.execute(
            text(
                "UPDATE caller_credentials SET entry_id = :a WHERE entry_id = :b AND kind = 'pin'"
            ),
            {"a": alice, "b": bob},
        )
    with pytest.raises(IntegrityError):
        store.credential(ALICE, CredentialKind.PIN)
    assert store.credential(BOB, CredentialKind.PIN) is None  # gone from Bob's, as moved
    with store.session("tamper") as session:  # Alice's key, number and name onto Bob's row
        session.execute(
            text(
                "UPDATE directory_entries SET (data_key_id, number, name) = (SELECT data_key_id, "
                "number, name FROM directory_entries WHERE id = :a) WHERE id = :b"
            ),
            {"a": alice, "b": bob},
        )
    with pytest.raises(IntegrityError):
        store.credential(BOB, CredentialKind.TOTP)
    assert store.credential(ALICE, CredentialKind.TOTP) == SECRET  # Alice's own still opens
    with store.session("look") as session:
        failed = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "directory_integrity")
        ).all()
    assert len(failed) == 2 and {e.outcome for e in failed} == {"failed"}


def test_a_locked_entry_yields_no_credential_until_unlocked(store: Storage) -> None:
    enrol(store, ALICE)
    credentials = DirectoryCredentials(store)
    assert credentials.usable(ALICE) and credentials.pin(ALICE) is not None
    assert store.set_locked(ALICE, True, "admin:test") is True
    assert store.set_locked(ALICE, True, "admin:test") is False  # already locked
    assert store.entry_state(ALICE) is EntryState.LOCKED
    assert [credentials.pin(ALICE), credentials.totp_secret(ALICE)] == [None, None]
    assert credentials.contact(ALICE) is None and not credentials.usable(ALICE)
    assert store.directory_entry(ALICE, "admin:test").state is EntryState.LOCKED
    store.set_locked(ALICE, False, "admin:test")
    assert credentials.totp_secret(ALICE) == SECRET and credentials.usable(ALICE)
    assert store.entry_state(BOB) is EntryState.ABSENT
    nobody = DirectoryCredentials(NoDirectory())
    assert nobody.pin(ALICE) is None and not nobody.usable(ALICE)


def test_refusals_are_named_and_change_nothing(store: Storage) -> None:
    enrol(store, ALICE)
    before = store.credential(ALICE, CredentialKind.TOTP)

    def code(call: Any) -> str:
        with pytest.raises(DirectoryError) as refused:
            call()
        return refused.value.code

    assert code(lambda: store.add_caller("12", "", "a")) == "directory.bad_number"
    assert code(lambda: store.add_caller("+1555abc", "", "a")) == "directory.bad_number"
    assert code(lambda: store.add_caller("+1 555 0100", "again", "a")) == "directory.exists"
    assert code(lambda: store.set_credential(BOB, CredentialKind.PIN, pin_record("1357"), "a")) == (
        "directory.unknown"
    )
    assert code(lambda: store.set_credential(ALICE, CredentialKind.TOTP, os.urandom(20), "a")) == (
        "directory.credential_exists"
    )
    assert code(lambda: store.set_credential(ALICE, CredentialKind.PIN, b"1357", "a")) == (
        "directory.bad_pin"
    )
    assert code(lambda: store.set_credential(ALICE, CredentialKind.TOTP, b"short", "a")) == (
        "directory.bad_totp"
    )
    for pin in ("12", "12345678901234", "12a4", "１２３４", "1111", "4321"):
        with pytest.raises(DirectoryError, match=r"directory\.(bad|weak)_pin"):
            pin_record(pin)
    assert code(lambda: store.set_locked(BOB, True, "a")) == "directory.unknown"
    assert code(lambda: store.remove_caller(BOB, "a")) == "directory.unknown"
    assert code(lambda: store.directory_entry(BOB, "a")) == "directory.unknown"
    assert store.credential(ALICE, CredentialKind.TOTP) == before
    assert [v.number for v in store.directory("a")] == [ALICE]
    fresh = os.urandom(20)
    assert store.set_credential(ALICE, CredentialKind.TOTP, fresh, "a", replace=True) is True
    assert store.credential(ALICE, CredentialKind.TOTP) == fresh


def test_removal_and_erasure_shred_the_entry_key_and_delete_its_rows(store: Storage) -> None:
    keys_before = count(store, DataKey)
    enrol(store, ALICE)
    enrol(store, BOB, pin="2468", name="Bob")
    assert count(store, DataKey) == keys_before + 2 + 1  # one per entry, the pseudonym key
    assert (count(store, DirectoryEntry), count(store, CallerCredential)) == (2, 6)
    with store.session("key") as session:
        bob_key = session.scalars(
            select(DirectoryEntry.data_key_id).where(
                DirectoryEntry.caller_hash == store.caller_hash(BOB)
            )
        ).one()
    store.remove_caller(BOB, "admin:test")
    assert count(store, DataKey) == keys_before + 2
    assert (count(store, DirectoryEntry), count(store, CallerCredential)) == (1, 3)
    with store.session("key") as session:
        assert session.get(DataKey, bob_key) is None
    # Erasing a caller (appliance erase --caller) takes their calls and their entry with them.
    handle = store.start_call(ALICE, "test")
    handle.record_turn(TurnRecord(1, "hello", "hi"))
    handle.finish("ended")
    keys_with_call = count(store, DataKey)
    report = store.erase_caller(ALICE, "admin:test")
    assert (report.calls_erased, report.caller_erased, report.directory_removed) == (1, True, True)
    assert count(store, DataKey) == keys_with_call - 2  # the call's key and the entry's
    assert (count(store, DirectoryEntry), count(store, CallerCredential)) == (0, 0)
    assert store.credential(ALICE, CredentialKind.PIN) is None
    # An enrolled caller who never called is erased too (no call record to find them by).
    enrol(store, BOB, pin="2468", name="Bob")
    assert store.erase_caller("+1 (555) 0199", "admin:test").directory_removed
    assert count(store, DirectoryEntry) == 0 and count(store, DataKey) == keys_before + 1
    assert store.verify_audit().ok


def test_a_database_at_the_previous_schema_gains_the_directory_and_keeps_its_data(
    tmp_path: Path,
) -> None:
    assert LATEST >= 6
    before_the_directory = (  # as the appliance before the directory left it
        "DROP TABLE caller_credentials",
        "DROP TABLE directory_entries",
        "DROP TABLE callback_requests",  # migration 7 came later still
        "DELETE FROM schema_migrations WHERE version >= 6",
    )
    with upgraded(tmp_path, ALICE, *before_the_directory) as (store, _):
        enrol(store, ALICE)
        assert store.credential(ALICE, CredentialKind.TOTP) == SECRET
        with store.session("look") as session:
            row = session.get(SchemaMigration, 6)
            assert row is not None and "directory" in row.description
        assert store.verify_audit().ok


def test_every_change_and_read_is_audited_without_personal_data(store: Storage) -> None:
    enrol(store, ALICE)
    store.directory("admin:test")
    store.directory_entry(ALICE, "admin:test")
    store.set_locked(ALICE, True, "admin:test")
    store.set_locked(ALICE, False, "admin:test")
    with pytest.raises(DirectoryError):
        store.add_caller(ALICE, NAME, "admin:test")
    store.remove_caller(ALICE, "admin:test")
    with store.session("look") as session:
        events = session.scalars(select(AuditEvent).order_by(AuditEvent.seq)).all()
        trail = [(e.action, e.outcome, json.loads(e.details)) for e in events]
        raw = json.dumps([[e.actor, e.action, e.outcome, e.details] for e in events])
        objects = {e.object for e in events}
    # Objects are pseudonyms (a keyed hash of the number) or the directory as a whole.
    assert all(re.fullmatch(r"caller:[0-9a-f]{16}|directory", o) for o in objects), objects
    assert [(a, o) for a, o, _ in trail if a.startswith("directory")] == [
        ("directory_add", "ok"),
        ("directory_credential", "ok"),
        ("directory_credential", "ok"),
        ("directory_credential", "ok"),
        ("directory_list", "ok"),
        ("directory_read", "ok"),
        ("directory_lock", "ok"),
        ("directory_unlock", "ok"),
        ("directory_add", "exists"),
        ("directory_remove", "ok"),
    ]
    assert [d["kind"] for a, _, d in trail if a == "directory_credential"] == [
        "pin",
        "totp",
        "contact",
    ]
    pin = pin_record("1357")
    for personal in ("15550100", "5550100", "Alice", "Pelican", "1357", CONTACT, "alice"):
        assert personal not in raw, personal
    assert base64.b32encode(SECRET).decode()[:16] not in raw and pin.hex()[:16] not in raw
    assert store.verify_audit().ok


# -- settings and the voice factor ---------------------------------------------------------------


def test_the_credentials_setting_is_an_enum_and_a_bad_value_names_its_key(tmp_path: Path) -> None:
    env = {"APPLIANCE_HOME": str(tmp_path)}
    assert load_settings(environ=env).tools.credentials is CredentialSource.DIRECTORY
    demo = load_settings(environ={**env, "APPLIANCE_TOOLS__CREDENTIALS": "demo"})
    assert demo.tools.credentials is CredentialSource.DEMO  # the demo configuration's
    with pytest.raises(ConfigError, match=r"tools\.credentials: one of \"demo\", \"directory\""):
        load_settings(environ={**env, "APPLIANCE_TOOLS__CREDENTIALS": "ldap"})


def test_the_voice_template_comes_only_for_an_enrolled_unlocked_caller(
    tmp_path: Path, store: Storage
) -> None:
    template = VoiceTemplate((0.6, 0.8), 3)
    store.save_voiceprint(ALICE, template.to_bytes(), "enrolment")
    store.save_voiceprint(BOB, template.to_bytes(), "enrolment")  # a voice, no directory entry
    demo = service_for(tmp_path, CredentialSource.DEMO, [])
    directory = service_for(tmp_path, CredentialSource.DIRECTORY, [])
    assert demo.voice_template(store, BOB) == template  # the demo configuration: as before
    assert directory.voice_template(store, BOB) is None  # unknown to the directory
    assert directory.voice_template(store, ALICE) is None
    enrol(store, ALICE)
    assert directory.voice_template(store, ALICE) == template
    assert "voice" in store.directory_entry(ALICE, "admin:test").factors
    store.set_locked(ALICE, True, "admin:test")
    assert directory.voice_template(store, ALICE) is None  # a lock fails voice too
    assert directory.voice_template(store, "") is None


# -- in a call -----------------------------------------------------------------------------------


def service_for(tmp_path: Path, source: CredentialSource, texts: list[str]) -> VoiceService:
    model, tts = NoToolModel(["We open at nine."]), ToneSynthesizer(2)
    settings = tool_settings(tmp_path, source)
    return fake_service(settings, FakeTranscriber(texts), model, tts, output_sample_rate_hz=16_000)


def call(tmp_path: Path, store: Storage, texts: list[str]) -> list[str]:
    """One call of ALICE on fake engines, verified against the directory; the authenticator's
    clock stands still, so a slow machine cannot age the code. Returns what the agent said."""
    service = service_for(tmp_path, CredentialSource.DIRECTORY, texts)
    tools = service.settings.tools
    limiter = AttemptLimiter(
        tools.max_factor_attempts, float(tools.lockout_s), clock=time.time, counters=store
    )
    service._factors = CallerFactors(
        SecretFactor("pin", limiter), TotpFactor(limiter, clock=lambda: FROZEN_S)
    )
    service._factors_store = store
    return agent_said(serve_utterances(service, store, len(texts), ALICE).turns)


def test_a_caller_enrolled_in_the_directory_passes_pin_and_totp_and_hears_the_balance(
    tmp_path: Path, store: Storage
) -> None:
    enrol(store, ALICE, pin="1357")
    code = " ".join(totp(SECRET, int(FROZEN_S // 30)))
    said = call(tmp_path, store, ["What's my account balance?", "one three five seven", code])
    tools = service_for(tmp_path, CredentialSource.DIRECTORY, []).settings.tools
    assert said == [
        f"step_up.pin: {tools.pin_prompt}",
        f"step_up.totp: {tools.totp_prompt}",
        "tool.ok: Your current account balance is 1250.40 pounds.",
    ]


def test_the_demo_pin_is_refused_for_a_directory_caller_and_a_lock_stops_every_factor(
    tmp_path: Path, store: Storage
) -> None:
    enrol(store, ALICE, pin="1357")
    tools = service_for(tmp_path, CredentialSource.DIRECTORY, []).settings.tools
    said = call(tmp_path, store, ["What's my account balance?", "four nine two one"])
    assert said == [
        f"step_up.pin: {tools.pin_prompt}",
        f"identity.wrong: {tools.wrong_answer}",
    ]
    # Locked, or not in the directory (the demo data does not help): the same PIN prompt as
    # an enrolled caller, so a spoofed number learns nothing, and the right PIN fails alike
    store.set_locked(ALICE, True, "admin:test")
    said = call(tmp_path, store, ["What's my account balance?", "one three five seven"])
    assert said == [f"step_up.pin: {tools.pin_prompt}", f"identity.wrong: {tools.wrong_answer}"]
    store.set_locked(ALICE, False, "admin:test")
    store.remove_caller(ALICE, "admin:test")
    said = call(tmp_path, store, ["What's my account balance?", "four nine two one"])
    # the third wrong PIN for the number, across calls: the factor locks
    locked = f"{tools.locked_reply} {TransferSettings().offer_prompt}"  # and a person offered
    assert said == [f"step_up.pin: {tools.pin_prompt}", f"identity.locked: {locked}"]


# -- the commands ---------------------------------------------------------------------------------


def open_home(home: Path) -> Storage:
    return Storage.open_sqlite(home / "appliance.db", load_or_create(home / "keys" / "master.key"))


def test_callers_commands_round_trip_and_keep_secrets_off_the_command_line(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    added = cli(home, "callers", "add", ALICE, "--name", NAME)
    assert added.returncode == 0, added.stderr
    pin = cli(home, "callers", "set-pin", ALICE, stdin="1357\n")
    assert pin.returncode == 0 and "PIN set" in pin.stdout, pin.stderr
    totp_out = cli(home, "callers", "enrol-totp", ALICE)
    assert totp_out.returncode == 0, totp_out.stderr
    uri = re.search(r"otpauth://totp/\S+", totp_out.stdout)
    assert uri is not None and "issuer=Voice%20Appliance" in uri.group()
    assert "█" in totp_out.stdout or "▀" in totp_out.stdout  # the terminal QR code
    secret = re.search(r"secret=([A-Z2-7]+)", uri.group())
    assert secret is not None
    again = cli(home, "callers", "enrol-totp", ALICE)
    assert again.returncode == 1 and "directory.credential_exists" in again.stderr
    assert "otpauth" not in again.stdout
    assert cli(home, "callers", "set-contact", ALICE, CONTACT).returncode == 0
    assert cli(home, "callers", "lock", ALICE).stdout.strip() == "locked"
    listed = cli(home, "callers", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["number"], r["name"], r["state"], r["factors"]) for r in rows] == [
        (ALICE, NAME, "locked", ["pin", "totp", "contact"])
    ]
    assert cli(home, "callers", "unlock", ALICE).stdout.strip() == "unlocked"
    shown = json.loads(cli(home, "callers", "show", ALICE, "--json").stdout)
    assert shown["state"] == "active"
    table = cli(home, "callers", "list").stdout
    assert ALICE in table and NAME in table and "pin,totp,contact" in table
    store = open_home(home)
    try:
        stored = store.credential(ALICE, CredentialKind.TOTP)
        padded = secret.group(1) + "=" * (-len(secret.group(1)) % 8)
        assert stored == base64.b32decode(padded)  # the secret printed is the one kept
        assert DirectoryCredentials(store).pin(ALICE) is not None
    finally:
        store.close()
    replaced = cli(home, "callers", "enrol-totp", ALICE, "--replace", "--no-qr")
    assert replaced.returncode == 0 and "secret=" in replaced.stdout
    removed = cli(home, "callers", "remove", ALICE)
    assert removed.returncode == 0, removed.stderr
    assert json.loads(cli(home, "callers", "list", "--json").stdout) == []


def test_callers_commands_refuse_bad_input_by_name_and_change_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert cli(home, "callers", "add", ALICE).returncode == 0
    cli(home, "callers", "set-pin", ALICE, stdin="1357\n")
    store = open_home(home)
    try:
        pin_before = store.credential(ALICE, CredentialKind.PIN)
    finally:
        store.close()
    refusals = [
        (("callers", "add", "+1555abc"), "", "directory.bad_number"),
        (("callers", "add", ALICE), "", "directory.exists"),
        (("callers", "set-pin", ALICE), "12\n", "directory.bad_pin"),
        (("callers", "set-pin", ALICE), "12ab\n", "directory.bad_pin"),
        (("callers", "set-pin", ALICE), "1111\n", "directory.weak_pin"),
        (("callers", "set-pin", BOB), "2468\n", "directory.unknown"),
        (("callers", "set-contact", ALICE, "not a contact"), "", "directory.bad_contact"),
        (("callers", "show", BOB), "", "directory.unknown"),
        (("callers", "lock", BOB), "", "directory.unknown"),
        (("callers", "remove", BOB), "", "directory.unknown"),
        (("callers", "enrol-totp", BOB), "", "directory.unknown"),
    ]
    for args, stdin, code in refusals:
        result = cli(home, *args, stdin=stdin)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert f"[{code}]" in result.stderr, (args, result.stderr)
        assert "1357" not in result.stderr + result.stdout
    # A PIN is never an argument: argparse refuses one given on the command line.
    assert cli(home, "callers", "set-pin", ALICE, "1357").returncode == 2
    store = open_home(home)
    try:
        assert store.credential(ALICE, CredentialKind.PIN) == pin_before
        views = store.directory("test")
        assert [(v.number, v.factors, v.state) for v in views] == [
            (ALICE, ("pin",), EntryState.ACTIVE)
        ]
    finally:
        store.close()


def test_erase_caller_removes_the_directory_entry_and_shreds_its_key(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert cli(home, "callers", "add", ALICE, "--name", NAME).returncode == 0
    cli(home, "callers", "set-pin", ALICE, stdin="1357\n")
    store = open_home(home)
    try:
        keys = count(store, DataKey)
    finally:
        store.close()
    erased = cli(home, "erase", "--caller", ALICE)
    assert erased.returncode == 0, erased.stderr
    assert "directory entry removed" in erased.stdout
    store = open_home(home)
    try:
        assert count(store, DataKey) == keys - 1
        assert (count(store, DirectoryEntry), count(store, CallerCredential)) == (0, 0)
        assert store.verify_audit().ok
    finally:
        store.close()
