"""A process that writes turns forever and prints an ACK line after each commit.

Run by the crash test, which kills it (SIGKILL) at random moments:
    python -m tests.integration.crash_writer FOLDER [POSTGRESQL-URL]
(the encrypted SQLite file in FOLDER, or the server's database; the master key in FOLDER).
"""

from __future__ import annotations

import sys
from pathlib import Path

from appliance.core.ports import TurnRecord
from appliance.storage.keys import load_or_create
from appliance.storage.repository import Storage


def main(folder: Path, url: str) -> None:
    master = load_or_create(folder / "master.key")
    if url:
        store = Storage.open_url(url, master, node="crash-node")
    else:
        store = Storage.open_sqlite(folder / "a.db", master, node="crash-node")
    handle = store.start_call("+15550009999", "crash-test")
    index = 0
    while True:
        index += 1
        handle.record_turn(TurnRecord(index, f"turn {index} " + "words " * 60, "reply " * 60))
        # Only now is the turn acknowledged: the commit returned.
        print(f"ACK {handle.call_id} {index}", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "")
