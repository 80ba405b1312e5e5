"""Kill a writing process at random moments, 200 times (40 on PostgreSQL): nothing
acknowledged is ever lost, and the restarted node closes the call it was in as interrupted.

The moments are counted, not timed, so a busy machine changes nothing: most kills come after
a random number of acknowledged turns (mid-write, a few microseconds on), the rest at a random
moment of start-up (opening, migrating)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from appliance.storage import sqlite
from appliance.storage.calls import INTERRUPTED
from appliance.storage.keys import load_or_create, read_key
from appliance.storage.schema import Call, Turn
from tests.conftest import Backend

KILLS = 200
POSTGRESQL_KILLS = 40
START_UP_SHARE = 0.15
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.backends
def test_sigkill_at_random_moments_loses_no_acknowledged_turn(
    tmp_path: Path, backend: Backend
) -> None:
    kills = KILLS if backend.name == "sqlite" else POSTGRESQL_KILLS
    rng = random.Random(20261128)
    acknowledged: set[tuple[str, int]] = set()
    killed_after_ack = 0
    master = load_or_create(tmp_path / "master.key")  # a kill may land before the writer made it
    mid_write = 0
    command = [sys.executable, "-m", "tests.integration.crash_writer", str(tmp_path)]
    if backend.url:
        command.append(backend.url)
    assert backend.db == tmp_path / "a.db"  # where the writer keeps an SQLite store
    for attempt in range(kills):
        writer = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
        assert writer.stdout is not None
        seen: list[str] = []
        if rng.random() < START_UP_SHARE:
            time.sleep(rng.uniform(0.0, 0.3))  # somewhere in start-up, or just after
        else:
            mid_write += 1
            wanted = rng.randint(1, 40)
            while sum(line.startswith("ACK ") for line in seen) < wanted:
                line = writer.stdout.readline()
                if not line:
                    break  # it exited: the return code below says why
                seen.append(line)
            time.sleep(rng.uniform(0.0, 0.004))
        writer.send_signal(signal.SIGKILL)
        rest, err = writer.communicate(timeout=30)
        out = "".join(seen) + rest
        assert writer.returncode == -signal.SIGKILL, err  # it was writing, not failing
        acks = {
            (line.split()[1], int(line.split()[2]))
            for line in out.splitlines()
            if line.startswith("ACK ")
        }
        killed_after_ack += bool(acks)
        acknowledged |= acks
        # The next start works, the store is sound, every acknowledged turn is there, and the
        # node closes the call the kill cut off (only it: earlier ones are closed already).
        store = backend.open(read_key(tmp_path / "master.key"), node="crash-node")
        try:
            if backend.name == "sqlite":
                assert sqlite.integrity_check(store.engine) == ["ok"], attempt
            with store.session("check") as session:
                stored = {
                    (row[0], row[1]) for row in session.execute(select(Turn.call_id, Turn.index))
                }
            closed = store.close_interrupted()
            with store.session("check") as session:
                statuses = {row[0]: row[1] for row in session.execute(select(Call.id, Call.status))}
        finally:
            store.close()
        missing = acknowledged - stored
        assert not missing, f"after kill {attempt}: lost {sorted(missing)[:5]}"
        assert closed <= 1 and "active" not in statuses.values(), attempt
        assert all(statuses[call] == INTERRUPTED for call, _ in acks), attempt
    assert master.fingerprint == read_key(tmp_path / "master.key").fingerprint
    assert mid_write > kills // 2 and killed_after_ack >= mid_write  # mid-write, by count
    assert len(acknowledged) > kills
