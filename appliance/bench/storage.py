"""``appliance bench storage``: turn write and read rates with and without encryption."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from appliance.config.settings import Settings


def run_storage_bench(settings: Settings, *, turns: int, as_json: bool) -> int:
    """Write then read ``turns`` turns in the encrypted store and in a plain one, side by side.

    Each turn is its own committed transaction, as in service (a turn is acknowledged only
    once durable). Rounds alternate between the two stores so machine noise hits both.
    """
    from appliance.core.ports import TurnRecord
    from appliance.storage.crypto import new_key
    from appliance.storage.keys import MasterKey
    from appliance.storage.repository import Storage

    turns = max(100, turns)
    per_call = 50
    text = "I would like to check the balance of my savings account please. " * 2
    reply = "Sure. Your balance is available after a quick identity check. " * 2
    with tempfile.TemporaryDirectory(dir=settings.home if settings.home.exists() else None) as tmp:
        folder = Path(tmp)
        stores = {
            "encrypted": Storage.open_sqlite(folder / "enc.db", MasterKey(new_key(), folder / "k")),
            "plain": Storage.open_sqlite(folder / "plain.db", None),
        }
        elapsed = {name: {"write": 0.0, "read": 0.0} for name in stores}
        calls: dict[str, list[str]] = {name: [] for name in stores}
        rounds = 4
        for _ in range(rounds):
            for name, store in stores.items():
                started = time.perf_counter()
                for _ in range(turns // rounds // per_call):
                    handle = store.start_call("+15550100", "bench")
                    for i in range(per_call):
                        handle.record_turn(TurnRecord(i + 1, text, reply, timings_ms={"a": 1.0}))
                    calls[name].append(handle.call_id)
                elapsed[name]["write"] += time.perf_counter() - started
        for name, store in stores.items():
            started = time.perf_counter()
            read = sum(len(store.read_call(c, "bench", "benchmark").turns) for c in calls[name])
            elapsed[name]["read"] += time.perf_counter() - started
            assert read == len(calls[name]) * per_call
        written = len(calls["plain"]) * per_call
        for store in stores.values():
            store.close()
    rates = {
        name: {
            "write_turns_per_s": round(written / times["write"], 1),
            "read_turns_per_s": round(written / times["read"], 1),
        }
        for name, times in elapsed.items()
    }
    report: dict[str, Any] = {
        "turns": written,
        **rates,
        "write_ratio": round(
            rates["encrypted"]["write_turns_per_s"] / rates["plain"]["write_turns_per_s"], 3
        ),
        "read_ratio": round(
            rates["encrypted"]["read_turns_per_s"] / rates["plain"]["read_turns_per_s"], 3
        ),
    }
    if as_json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"storage: {written} turns, one committed transaction each (synchronous=FULL)")
    print(f"  {'':10}{'write turns/s':>15}{'read turns/s':>15}")
    for name in ("encrypted", "plain"):
        r = rates[name]
        print(f"  {name:10}{r['write_turns_per_s']:>15.0f}{r['read_turns_per_s']:>15.0f}")
    print(
        f"  encrypted / plain: write {report['write_ratio']}, read {report['read_ratio']} "
        f"(encryption costs {100 * (1 - report['write_ratio']):.0f}% of write throughput, "
        f"{100 * (1 - report['read_ratio']):.0f}% of read)"
    )
    return 0
