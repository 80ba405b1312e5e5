"""Fixtures of the integration tests (a module's own fixture of the same name wins)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.storage.keys import load_or_create
from appliance.storage.repository import Storage


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Storage]:
    """An encrypted store of the test's own (``a.db`` under the key ``k``), closed after."""
    storage = Storage.open_sqlite(tmp_path / "a.db", load_or_create(tmp_path / "k"))
    yield storage
    storage.close()
