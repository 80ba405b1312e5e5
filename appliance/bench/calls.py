"""``appliance bench calls``: N simultaneous SIPp calls against ``appliance sip``."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from appliance.bench import summary
from appliance.config.settings import Settings
from appliance.core.errors import ApplianceError
from appliance.service import load_synthesizer

TARGET_CALLS, TARGET_P95_MS = 4, 3000.0
"""The line's target on 2 cores: 4 simultaneous calls, p95 voice-to-voice <= 3 s, no RTP gaps."""


def run_calls_bench(
    settings: Settings, *, counts: list[int], as_json: bool, stt_models: Sequence[str] = ()
) -> int:
    """N simultaneous SIPp calls (N in ``counts``) against ``appliance sip`` on 127.0.0.1: the
    voice-to-voice latency of each call's turn (median, p95), gaps in the reply's RTP stream
    as the caller received it, and the line's CPU time and peak RSS. With several
    ``stt_models`` the rounds run once per speech-recognition model, side by side."""
    import os
    import shutil
    import socket
    import subprocess
    import sys

    import psutil

    from appliance.telephony.sdp import PCMU
    from appliance.testing.media import Stream

    if shutil.which("sipp") is None:
        raise ApplianceError("bench.sipp", "sipp is not installed (Debian: sip-tester)")
    scenario_text = (Path(__file__).parents[1] / "testing" / "sipp" / "uac_call.xml").read_text()

    def free_port() -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        tts = load_synthesizer(settings)  # the caller's voice; the line loads the rest
        question = b"".join(
            c.pcm for c in tts.synthesize("What time do you open on Saturday?", 8000)
        )
        stream = Stream(codec=PCMU)
        stream.silence(0.5)
        stream.audio(question)
        stream.silence(12.0)
        for model in stt_models or (settings.stt.model,):
            port = free_port()
            env = {
                **os.environ,
                "APPLIANCE_HOME": str(settings.home),
                "APPLIANCE_STT__MODEL": model,
                "APPLIANCE_SIP__DISCLOSURE": "Automated assistant.",
                "APPLIANCE_SIP__MAX_DIALOGS": str(max(counts) * 2),
                "APPLIANCE_SIP__UNCONFIRMED_PER_ADDRESS": str(max(counts)),
                "APPLIANCE_SIP__INVITES_PER_ADDRESS_PER_10S": str(max(counts) * 4),
                "APPLIANCE_LIMITS__MAX_CONCURRENT_CALLS": str(max(counts)),
            }
            if settings.source != "defaults":
                env["APPLIANCE_CONFIG"] = settings.source
            line = subprocess.Popen(
                [sys.executable, "-m", "appliance", "sip", "--listen", f"127.0.0.1:{port}"],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )  # fmt: skip
            try:
                assert line.stdout is not None
                if "listening" not in line.stdout.readline():
                    raise ApplianceError("bench.sip", f"appliance sip did not start ({model})")
                process = psutil.Process(line.pid)
                for count in counts:
                    result = _calls_round(
                        count, port, scenario_text, stream.packets, work, process, free_port
                    )
                    _wait_until_idle(settings)  # the line finishes turns after the callers' BYEs
                    latencies = _latest_latencies(settings, count)
                    result["voice_to_voice"] = summary(latencies) if latencies else {}
                    results.append({"stt_model": model, **result})
            finally:
                line.terminate()
                line.wait(timeout=60)
    targets = [
        {
            "stt_model": r["stt_model"],
            "calls": TARGET_CALLS,
            "p95_ms_at_most": TARGET_P95_MS,
            "met": r["failed"] == 0
            and r["rtp_gaps"] == 0
            and 0 < r["voice_to_voice"].get("p95_ms", 0) <= TARGET_P95_MS,
        }
        for r in results
        if r["calls"] == TARGET_CALLS
    ]
    if as_json:
        print(json.dumps({"rounds": results, "targets": targets}, indent=2))
    else:
        for r in results:
            v = r["voice_to_voice"]
            print(
                f"{r['stt_model']}, {r['calls']} calls: voice-to-voice median "
                f"{v.get('median_ms', 0):.0f} ms, p95 {v.get('p95_ms', 0):.0f} ms; reply RTP gaps "
                f"{r['rtp_gaps']}; CPU {r['cpu_s']:.1f} s; RSS {r['rss_mib']:.0f} MiB; "
                f"failed {r['failed']}"
            )
        for t in targets:
            verdict = "met" if t["met"] else "missed"
            print(
                f"target ({t['calls']} calls, p95 <= {t['p95_ms_at_most']:.0f} ms, no RTP gaps) "
                f"with {t['stt_model']}: {verdict}"
            )
    return 0


def _latest_latencies(settings: Settings, count: int) -> list[float]:
    """Voice-to-voice of the turns of the ``count`` newest calls (one round's)."""
    from appliance.service import open_storage

    storage = open_storage(settings)
    try:
        latencies: list[float] = []
        for call in storage.list_calls(limit=count):
            view = storage.read_call(call.id, "bench", "latency benchmark")
            latencies += [t.voice_to_voice_ms for t in view.turns if t.voice_to_voice_ms]
        return latencies
    finally:
        storage.close()


def _wait_until_idle(settings: Settings, timeout_s: float = 120.0) -> None:
    """Until no stored call is active: a round starts only once the last one has ended."""
    from appliance.service import open_storage

    storage = open_storage(settings)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(c.status != "active" for c in storage.list_calls(limit=50)):
                return
            time.sleep(0.5)
    finally:
        storage.close()


def _calls_round(
    count: int,
    port: int,
    scenario: str,
    stream: Sequence[tuple[float, bytes]],
    work: Path,
    process: Any,
    free_port: Any,
) -> dict[str, Any]:
    """``count`` SIPp callers at once: SIPp signals, each caller's own media socket speaks
    the question once answered and hears the reply (testing/media.py)."""
    import subprocess

    from appliance.testing.media import CallerMedia

    cpu_before = sum(process.cpu_times()[:2])
    callers, runs = [], []
    peak = 0.0
    for index in range(count):
        media = CallerMedia()
        callers.append(media)
        text = (
            scenario.replace("@CODEC@", "0")
            .replace("@CAPTURE_PORT@", str(media.port))
            .replace("@WAIT_MS@", "2500")
            .replace("@TALK_MS@", "14000")
        )
        xml = work / f"call{index}.xml"
        xml.write_text(text)
        media.start(stream, after_s=2.5)
        command = ["sipp", f"127.0.0.1:{port}", "-sf", str(xml), "-m", "1", "-i", "127.0.0.1"]
        command += ["-p", str(free_port()), "-mp", str(free_port()), "-timeout", "90s"]
        command += ["-trace_err", "-error_file", str(work / f"call{index}.errors")]
        runs.append(
            subprocess.Popen(
                [*command, "-nostdin"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd=work,
            )
        )
    while any(r.poll() is None for r in runs):
        peak = max(peak, process.memory_info().rss / 2**20)
        time.sleep(0.2)
    time.sleep(1.0)
    gaps = 0
    for media in callers:
        media.stop()
        # 5 packets missing in a row, as the caller received the reply
        gaps += sum(b - a > 0.1 for a, b in zip(media.arrivals, media.arrivals[1:], strict=False))
    failures = []
    for index, run in enumerate(runs):
        errors = work / f"call{index}.errors"
        if run.returncode != 0 and errors.exists():  # SIPp's own account of what went wrong
            failures.append(errors.read_text(errors="replace").strip().splitlines()[-1][:300])
    return {
        "calls": count,
        "failed": sum(r.returncode != 0 for r in runs),
        "failures": failures,
        "rtp_gaps": gaps,
        "cpu_s": round(sum(process.cpu_times()[:2]) - cpu_before, 1),
        "rss_mib": round(peak, 1),
    }
