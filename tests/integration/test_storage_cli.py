"""The storage commands as an operator runs them (no models needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import text

from appliance.core.ports import TurnRecord
from appliance.storage.keys import load_or_create
from appliance.storage.repository import Storage

APPLIANCE = Path(sys.executable).parent / "appliance"


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(APPLIANCE), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, "APPLIANCE_HOME": str(home)},
    )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def seed(home: Path, caller: str, said: str, when: datetime | None = None) -> str:
    store = Storage.open_sqlite(
        home / "appliance.db",
        load_or_create(home / "keys" / "master.key"),
        **({"clock": lambda: when} if when else {}),
    )
    try:
        handle = store.start_call(caller, "wav")
        handle.record_turn(TurnRecord(1, said, "noted"))
        handle.finish("ended")
        return handle.call_id
    finally:
        store.close()


def test_list_show_and_the_read_is_audited(home: Path) -> None:
    call_id = seed(home, "+15551112222", "my order number is 7")
    listed = json.loads(cli(home, "calls", "list", "--json").stdout)
    assert [c["id"] for c in listed] == [call_id]
    shown = cli(home, "calls", "show", call_id, "--reason", "ticket 9", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["turns"][0]["transcript"] == "my order number is 7"
    verify = cli(home, "audit", "verify")
    assert verify.returncode == 0 and "intact: 1 events" in verify.stdout
    refused = cli(home, "calls", "show", call_id)
    assert refused.returncode == 2  # a reason is required


def test_audit_verify_names_the_first_broken_event(home: Path) -> None:
    call_id = seed(home, "+1555", "x")
    for _ in range(4):
        cli(home, "calls", "show", call_id, "--reason", "check")
    store = Storage.open_sqlite(home / "appliance.db", load_or_create(home / "keys" / "master.key"))
    with store.session("tamper") as session:
        session.execute(text("UPDATE audit_events SET actor = 'cli:nobody' WHERE seq = 3"))
    store.close()
    result = cli(home, "audit", "verify")
    assert result.returncode == 1
    assert "BROKEN at event 3" in result.stdout


def test_signed_export_round_trip(home: Path, tmp_path: Path) -> None:
    call_id = seed(home, "+1555", "x")
    cli(home, "calls", "show", call_id, "--reason", "before export")
    out = tmp_path / "audit.json"
    assert cli(home, "audit", "export", "--out", str(out)).returncode == 0
    ok = cli(home, "audit", "verify", "--export", str(out))
    assert ok.returncode == 0 and "and chain verified (1 events)" in ok.stdout
    pinned = cli(home, "audit", "key").stdout.strip()
    assert len(pinned) == 64 and pinned[:16] in ok.stdout  # checked against the pinned key
    by_auditor = cli(home, "audit", "verify", "--export", str(out), "--key", pinned)
    assert by_auditor.returncode == 0, by_auditor.stderr
    other = cli(home, "audit", "verify", "--export", str(out), "--key", "ab" * 32)
    assert other.returncode == 1 and "another signing key" in other.stderr
    document = json.loads(out.read_text())
    document["events"].append(document["events"][-1])
    out.write_text(json.dumps(document))
    bad = cli(home, "audit", "verify", "--export", str(out))
    assert bad.returncode == 1 and "audit.signature" in bad.stderr


def test_hold_then_erase_then_release(home: Path) -> None:
    kept = seed(home, "+15553334444", "keep")
    seed(home, "+15553334444", "drop")
    assert cli(home, "hold", "--call", kept, "--reason", "case 12").returncode == 0
    erased = cli(home, "erase", "--caller", "+15553334444")
    assert erased.returncode == 0 and "erased 1 call(s); kept 1 on legal hold" in erased.stdout
    assert cli(home, "hold", "--call", kept, "--release").returncode == 0
    assert "erased 1 call(s)" in cli(home, "erase", "--call", kept).stdout
    assert json.loads(cli(home, "calls", "list", "--json").stdout) == []
    missing = cli(home, "erase", "--call", kept)
    assert missing.returncode == 1 and "storage.no_call" in missing.stderr


def test_keys_rotate_keeps_everything_readable(home: Path) -> None:
    call_id = seed(home, "+1555", "still here")
    before = (home / "keys" / "master.key").read_bytes()
    rotated = cli(home, "keys", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    assert "2 data keys re-wrapped" in rotated.stdout
    assert "re-wrapping data keys: 2/2" in rotated.stderr  # progress
    assert (home / "keys" / "master.key").read_bytes() != before
    shown = cli(home, "calls", "show", call_id, "--reason", "after rotation", "--json")
    assert json.loads(shown.stdout)["turns"][0]["transcript"] == "still here"


def test_retention_dry_run_lists_and_run_purges(home: Path) -> None:
    old = seed(home, "+1555", "from long ago", when=datetime(2020, 1, 1))
    recent = seed(home, "+1556", "from today")
    dry = json.loads(cli(home, "retention", "run", "--dry-run", "--json").stdout)
    assert dry["dry_run"] and dry["due_calls"] == [old] and dry["purged"]["calls"] == 1
    run = cli(home, "retention", "run")
    assert run.returncode == 0 and "purged      1 calls" in run.stdout
    again = cli(home, "retention", "run")
    assert "purged      0 calls" in again.stdout
    assert [c["id"] for c in json.loads(cli(home, "calls", "list", "--json").stdout)] == [recent]


def test_backup_and_restore(home: Path, tmp_path: Path) -> None:
    call_id = seed(home, "+1555", "before")
    target = tmp_path / "backup.db"
    made = cli(home, "backup", "--out", str(target))
    assert made.returncode == 0 and "1 turns" in made.stdout
    seed(home, "+1555", "after")
    cli(home, "calls", "list")  # events after the backup move the checkpoint past it
    assert cli(home, "audit", "verify").returncode == 0
    restored = cli(home, "restore", str(target))
    assert restored.returncode == 0 and "verified, 1 turns" in restored.stdout
    assert [c["id"] for c in json.loads(cli(home, "calls", "list", "--json").stdout)] == [call_id]
    verified = cli(home, "audit", "verify")  # the restore moved the checkpoint back, audited
    assert verified.returncode == 0, verified.stdout


def test_audit_verify_fails_when_the_last_events_were_deleted(home: Path) -> None:
    call_id = seed(home, "+1555", "x")
    for n in range(5):
        assert cli(home, "calls", "show", call_id, "--reason", f"read {n}").returncode == 0
    assert cli(home, "audit", "verify").returncode == 0
    store = Storage.open_sqlite(home / "appliance.db", load_or_create(home / "keys" / "master.key"))
    with store.session("tamper") as session:
        session.execute(text("DELETE FROM audit_events WHERE seq > 2"))
    store.close()
    result = cli(home, "audit", "verify")
    assert result.returncode == 1
    assert "BROKEN at event 3: the chain ends at event 2" in result.stdout


def test_tools_list_shows_scopes_changes_and_levels(home: Path) -> None:
    result = cli(home, "tools", "list", "--json")
    assert result.returncode == 0, result.stderr
    tools = {t["name"]: t for t in json.loads(result.stdout)}
    assert tools["account_balance"]["assurance_level"] == 2
    assert tools["book_appointment"]["changes_data"] is True
    assert tools["transfer_to_human"]["enabled"] is True  # the default configuration
    assert tools["account_balance"]["enabled"] is False
    assert tools["account_balance"]["scopes"] == ["accounts:read"]
    enabled = subprocess.run(
        [str(APPLIANCE), "tools", "list", "--json"],
        capture_output=True,
        text=True,
        check=False,
        env={
            **os.environ,
            "APPLIANCE_HOME": str(home),
            "APPLIANCE_TOOLS__ENABLED": "account_balance,transfer_to_human",
        },
    )
    assert {t["name"] for t in json.loads(enabled.stdout) if t["enabled"]} == {
        "account_balance",
        "transfer_to_human",
    }


def test_incidents_are_listed(home: Path) -> None:
    store = Storage.open_sqlite(home / "appliance.db", load_or_create(home / "keys" / "master.key"))
    handle = store.start_call("+1555", "wav")
    handle.record_turn(TurnRecord(1, "[redacted]", "help is coming", escalation="distress"))
    store.close()
    rows = json.loads(cli(home, "incidents", "list", "--json").stdout)
    assert [(r["kind"], r["severity"], r["call_id"]) for r in rows] == [
        ("distress", "high", handle.call_id)
    ]


def test_what_the_cli_writes_is_owner_only_whatever_the_umask(home: Path) -> None:
    """Finding: database files were created 0644 in a 0755 home from the CLI."""
    done = subprocess.run(
        ["sh", "-c", f'umask 022; exec "{APPLIANCE}" calls list'],
        capture_output=True, text=True, check=False, timeout=120,
        env={**os.environ, "APPLIANCE_HOME": str(home)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert home.stat().st_mode & 0o777 == 0o700
    written = [p for p in home.rglob("*") if p.is_file()]
    assert written and all(p.stat().st_mode & 0o077 == 0 for p in written), [
        (str(p), oct(p.stat().st_mode)) for p in written
    ]


def test_accounts_and_tokens_can_be_disabled_deleted_and_revoked_from_the_cli(
    home: Path,
) -> None:
    made = subprocess.run(
        [str(APPLIANCE), "admin", "create-user", "--username", "Olga", "--role", "operator",
         "--password-stdin"],
        input="copper kettle wanders at noon\n", capture_output=True, text=True,
        timeout=120, env={**os.environ, "APPLIANCE_HOME": str(home)},
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert cli(home, "admin", "disable-user", "--username", "OLGA").returncode == 0
    assert "olga                     operator  disabled" in cli(home, "admin", "list-users").stdout
    assert cli(home, "admin", "enable-user", "--username", "olga").returncode == 0
    assert "enabled" in cli(home, "admin", "list-users").stdout
    token = cli(home, "admin", "create-token", "--name", "ops", "--role", "operator")
    assert token.returncode == 0
    revoked = cli(home, "admin", "revoke-token", "--name", "ops")
    assert revoked.returncode == 0 and "revoked 1 token(s)" in revoked.stdout
    assert "ops                      operator  revoked" in cli(home, "admin", "list-tokens").stdout
    again = cli(home, "admin", "revoke-token", "--name", "ops")
    assert again.returncode == 1 and "no live token named 'ops'" in again.stderr
    assert cli(home, "admin", "delete-user", "--username", "olga").returncode == 0
    gone = cli(home, "admin", "disable-user", "--username", "olga")
    assert gone.returncode == 1 and "no user 'olga'" in gone.stderr
    assert cli(home, "audit", "verify").returncode == 0


def test_a_lost_master_key_comes_back_from_the_recovery_code_on_a_fresh_home(
    home: Path, tmp_path: Path
) -> None:
    """Finding: a lost master key lost every call. The code is made once, the key is sealed to
    it beside every backup (after a rotation too), and a fresh home restores from the two."""
    call_id = seed(home, "+1555", "keep me")
    made = cli(home, "keys", "recovery-code")
    assert made.returncode == 0, made.stderr
    code = made.stdout.splitlines()[-1]
    assert cli(home, "keys", "recovery-code").returncode == 1  # not silently replaced
    rotated = cli(home, "keys", "rotate")
    assert rotated.returncode == 0 and "sealed again to the recovery code" in rotated.stdout
    backups = tmp_path / "backups"
    for _ in range(3):  # as the timer runs it (--scheduled changes nothing on SQLite)
        made = cli(home, "backup", "--scheduled", "--dir", str(backups), "--keep", "2")
        assert made.returncode == 0, made.stderr
    kept = sorted(backups.glob("appliance-*.db"))
    assert len(kept) == 2 and all(Path(f"{p}.recovery").is_file() for p in kept)
    latest = kept[-1]
    fresh = tmp_path / "fresh"
    without = cli(fresh, "restore", str(latest))
    assert without.returncode == 1 and "keys.missing" in without.stderr  # the loss itself
    sealed = str(latest) + ".recovery"
    env = {**os.environ, "APPLIANCE_HOME": str(fresh)}
    mistyped = code[:-1] + ("B" if code.endswith("A") else "A")
    wrong = subprocess.run(
        [str(APPLIANCE), "keys", "recover", "--sealed", sealed], input=mistyped + "\n",
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert wrong.returncode == 1 and "keys.recovery_code" in wrong.stderr
    right = subprocess.run(
        [str(APPLIANCE), "keys", "recover", "--sealed", sealed], input=code + "\n",
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert right.returncode == 0, right.stderr
    restored = cli(fresh, "restore", str(latest))
    assert restored.returncode == 0 and "verified, 1 turns" in restored.stdout
    listed = json.loads(cli(fresh, "calls", "list", "--json").stdout)
    assert [c["id"] for c in listed] == [call_id]
    assert cli(fresh, "audit", "verify").returncode == 0


def test_a_removed_checkpoint_fails_verify_and_an_upgrade_anchors_the_chain_once(
    home: Path,
) -> None:
    """Reviewed: deleting the checkpoint file as well as the last events left verify
    "intact". A chain without a checkpoint (an install from before them) is anchored once,
    explicitly, by `audit anchor`, never by itself."""
    call_id = seed(home, "+1555", "x")
    for n in range(3):
        assert cli(home, "calls", "show", call_id, "--reason", f"read {n}").returncode == 0
    (home / "keys" / "audit-checkpoint.json").unlink()
    removed = cli(home, "audit", "verify")
    assert removed.returncode == 1 and "no signed checkpoint" in removed.stdout
    anchored = cli(home, "audit", "anchor")
    assert anchored.returncode == 0 and "checkpoint at event 3" in anchored.stdout
    assert cli(home, "audit", "verify").returncode == 0
    again = cli(home, "audit", "anchor")  # it never replaces one
    assert again.returncode == 0 and "exists already" in again.stdout
