"""The sealing layer: round trips, and any change to a sealed value fails loudly."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.core.errors import IntegrityError, KeyringError
from appliance.storage.crypto import (
    associated_data,
    derive,
    new_key,
    open_sealed,
    seal,
    unwrap_key,
    wrap_key,
)

KEY = bytes(range(32))
AAD = associated_data("turns", "transcript", "row-1")


@given(st.binary(max_size=4096), st.text(max_size=40))
def test_seal_then_open_gives_the_value_back(value: bytes, row: str) -> None:
    aad = associated_data("turns", "reply", row)
    assert open_sealed(KEY, seal(KEY, value, aad), aad) == value


@given(st.text(max_size=500))
def test_text_round_trips(text: str) -> None:
    assert open_sealed(KEY, seal(KEY, text.encode(), AAD), AAD).decode() == text


@settings(max_examples=200)
@given(st.binary(min_size=1, max_size=300), st.data())
def test_flipping_any_byte_fails_loudly(value: bytes, data: st.DataObject) -> None:
    sealed = bytearray(seal(KEY, value, AAD))
    position = data.draw(st.integers(0, len(sealed) - 1))
    bit = data.draw(st.integers(0, 7))
    sealed[position] ^= 1 << bit
    with pytest.raises(IntegrityError) as caught:
        open_sealed(KEY, bytes(sealed), AAD)
    assert caught.value.code == "storage.integrity"


def test_a_value_moved_to_another_row_or_column_does_not_open() -> None:
    sealed = seal(KEY, b"my account number", AAD)
    with pytest.raises(IntegrityError):
        open_sealed(KEY, sealed, associated_data("turns", "transcript", "row-2"))
    with pytest.raises(IntegrityError):
        open_sealed(KEY, sealed, associated_data("turns", "reply", "row-1"))


def test_a_truncated_value_is_an_integrity_error() -> None:
    with pytest.raises(IntegrityError):
        open_sealed(KEY, seal(KEY, b"x", AAD)[:10], AAD)


def test_seals_of_the_same_value_differ() -> None:
    assert seal(KEY, b"same", AAD) != seal(KEY, b"same", AAD)


def test_data_keys_unwrap_only_under_their_master_and_id() -> None:
    master, other = new_key(), new_key()
    data_key = new_key()
    wrapped = wrap_key(master, data_key, "key-1")
    assert unwrap_key(master, wrapped, "key-1") == data_key
    with pytest.raises(KeyringError):
        unwrap_key(other, wrapped, "key-1")
    with pytest.raises(KeyringError):
        unwrap_key(master, wrapped, "key-2")


def test_derived_keys_differ_by_purpose() -> None:
    master = new_key()
    assert derive(master, "a") != derive(master, "b")
    assert derive(master, "a") == derive(master, "a")
    assert len(derive(master, "a")) == 32


def test_a_key_comes_from_the_units_credential_then_the_configuration_then_the_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Installed, the keys live in /etc/appliance (configured, for root's commands) and the
    service, which cannot read that folder, gets them as systemd credentials."""
    from appliance.storage.keys import AUDIT_CREDENTIAL_NAME, default_key_path, key_file

    home, etc, credentials = tmp_path / "home", tmp_path / "etc", tmp_path / "credentials"
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert default_key_path(home) == home / "keys/master.key"
    assert default_key_path(home, str(etc / "master.key")) == etc / "master.key"
    credentials.mkdir()
    (credentials / "appliance-master-key").write_bytes(b"k" * 32)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    assert default_key_path(home, str(etc / "master.key")) == credentials / "appliance-master-key"
    configured = str(etc / "audit-signing.key")
    assert key_file(home, configured, AUDIT_CREDENTIAL_NAME, "audit-signing.key") == Path(
        configured
    )


def test_files_root_writes_in_a_folder_of_the_service_belong_to_the_service(
    tmp_path: Path,
) -> None:
    """Reviewed: root's commands on an installed appliance wrote the audit checkpoint and the
    recovery files as root:root 0600, which the service (its own user) could not read."""
    import os

    from appliance.storage.keys import write_private

    if os.geteuid() != 0:
        pytest.skip("needs root, as the installed appliance's commands run")
    folder = tmp_path / "keys"
    folder.mkdir(mode=0o700)
    os.chown(folder, 4321, 4321)
    write_private(folder / "audit-checkpoint.json", b"{}")
    info = (folder / "audit-checkpoint.json").stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (4321, 4321, 0o600)
