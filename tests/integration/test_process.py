"""Every process of the appliance, from outside: a real crash leaves no core file (it would
hold callers' words and the master key)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

APPLIANCE = Path(sys.executable).parent / "appliance"


def crash(command: list[str], cwd: Path, env: dict[str, str], ready: str) -> str:
    """Start ``command`` with core files allowed (ulimit -c unlimited), wait for ``ready`` on
    its output, crash it with SIGSEGV; its core-size limit as the kernel saw it."""
    child = subprocess.Popen(
        ["sh", "-c", 'ulimit -c unlimited; exec "$@"', "sh", *command],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert child.stdout is not None
    seen = ""
    deadline = time.monotonic() + 120  # a busy machine may take long to start; never forever
    while ready not in seen:
        assert time.monotonic() < deadline, f"{command[0]} not ready in 120 s: {seen}"
        if not select.select([child.stdout], [], [], 1.0)[0]:
            continue
        line = child.stdout.readline()
        assert line, f"{command[0]} ended before it was ready: {seen}"
        seen += line
    limits = Path(f"/proc/{child.pid}/limits").read_text()
    os.kill(child.pid, signal.SIGSEGV)
    child.wait(timeout=60)
    child.stdout.close()
    assert child.returncode == -signal.SIGSEGV
    return next(line for line in limits.splitlines() if line.startswith("Max core file size"))


def cores(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith("core")]


def test_a_crashed_appliance_leaves_no_core_file(tmp_path: Path) -> None:
    """Finding: a crashed `appliance call` left a 1.87 GB core holding the caller's words,
    their number and the 32-byte master key."""
    env = {
        **os.environ,
        "APPLIANCE_HOME": str(tmp_path / "home"),
        "APPLIANCE_ADMIN__LISTEN": "127.0.0.1:0",
    }
    control, appliance = tmp_path / "control", tmp_path / "appliance"
    control.mkdir()
    appliance.mkdir()
    # The control: a plain program crashed the same way; where the kernel writes core files
    # into the working folder (core_pattern "core"), it leaves one.
    crash(["sh", "-c", "echo ready; exec sleep 60"], control, env, ready="ready")
    limit = crash([str(APPLIANCE), "admin", "serve"], appliance, env, ready="admin: https://")
    assert limit.split()[4:6] == ["0", "0"], limit  # soft and hard: no core, ever
    if cores(control):  # the kernel writes cores here (core_pattern "core"): none from us
        assert cores(appliance) == []
