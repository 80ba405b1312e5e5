"""``appliance bench startup``: ``appliance serve`` from start to READY=1, and SIGTERM to exit."""

from __future__ import annotations

import json
import tempfile
import time
from typing import Any

from appliance.bench import summary
from appliance.config.settings import Settings
from appliance.core.errors import ApplianceError


def run_startup_bench(settings: Settings, *, runs: int, as_json: bool) -> int:
    """Start ``appliance serve`` as systemd would (notify socket, voice idle) ``runs`` times:
    process start to READY=1, and SIGTERM to exit."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    ready, stop = [], []
    for _ in range(runs):
        with (
            tempfile.TemporaryDirectory() as folder,
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener,
        ):
            path = f"{folder}/notify.sock"
            listener.bind(path)
            listener.settimeout(0.5)
            env = {
                **os.environ,
                "NOTIFY_SOCKET": path,
                "APPLIANCE_HOME": str(settings.home),
                "APPLIANCE_SERVICE__VOICE": "none",
            }
            if settings.source != "defaults":
                env["APPLIANCE_CONFIG"] = settings.source
            started = time.perf_counter()
            process = subprocess.Popen(
                [sys.executable, "-m", "appliance", "serve"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            try:
                while not _ready(listener):
                    if process.poll() is not None:
                        reason = (process.stderr.read() if process.stderr else b"").decode()
                        raise ApplianceError("bench.startup", f"serve did not start: {reason}")
                ready.append(time.perf_counter() - started)
                stopping = time.perf_counter()
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=120)
                stop.append(time.perf_counter() - stopping)
            finally:
                if process.poll() is None:
                    process.kill()
    up = summary([1000 * t for t in ready])
    down = summary([1000 * t for t in stop])
    if as_json:
        print(json.dumps({"runs": runs, "start_to_ready": up, "sigterm_to_exit": down}, indent=2))
    else:
        print(f"start to READY=1: median {up['median_ms']:.0f} ms, p95 {up['p95_ms']:.0f} ms")
        print(f"SIGTERM to exit:  median {down['median_ms']:.0f} ms, p95 {down['p95_ms']:.0f} ms")
    return 0


def _ready(listener: Any) -> bool:
    try:
        return b"READY=1" in listener.recv(4096)
    except TimeoutError:
        return False
