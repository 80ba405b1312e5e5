"""``appliance bench calls``: N simultaneous SIPp calls against ``appliance sip``."""

from __future__ import annotations

import contextlib
import json
import signal
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance.bench import summary
from appliance.config.settings import Settings
from appliance.core.errors import ApplianceError
from appliance.service import load_synthesizer

NODE_PREFIX = "bench-"
"""The benchmark's lines' node names (``bench-1``, ...): its calls, apart from any other's."""
TARGET_CALLS, TARGET_P95_MS = 4, 3000.0
"""The line's target on 2 cores: 4 simultaneous calls, p95 voice-to-voice <= 3 s, no RTP gaps."""


def run_calls_bench(
    settings: Settings,
    *,
    counts: list[int],
    as_json: bool,
    stt_models: Sequence[str] = (),
    nodes: Sequence[int] = (1,),
) -> int:
    """N simultaneous SIPp calls (N in ``counts``) against ``appliance sip`` on 127.0.0.1: the
    voice-to-voice latency of each call's turn (median, p95), gaps in the reply's RTP stream
    as the caller received it, and the lines' CPU time and peak RSS. With several
    ``stt_models`` the rounds run once per speech-recognition model, side by side. For each
    count of ``nodes`` above 1, that many nodes (127.0.0.2, .3, ...) on the one PostgreSQL
    store of ``[storage] url`` take the calls through Kamailio with the repo's dispatcher
    configuration, and each round says how the calls were spread."""
    import shutil

    from appliance.telephony.sdp import PCMU
    from appliance.testing.media import Stream

    if shutil.which("sipp") is None:
        raise ApplianceError("bench.sipp", "sipp is not installed (Debian: sip-tester)")
    if any(n < 1 for n in nodes):
        raise ApplianceError("bench.nodes", "--nodes: each count must be at least 1")
    if max(nodes) > 1:
        if shutil.which("kamailio") is None:
            raise ApplianceError(
                "bench.kamailio", "--nodes above 1 needs kamailio (Debian: kamailio)"
            )
        if not settings.storage.url:
            raise ApplianceError(
                "bench.nodes_store",
                "--nodes above 1 needs a store every node shares: set [storage] url to a "
                "PostgreSQL server",
            )
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        tts = load_synthesizer(settings)  # the caller's voice; the lines load the rest
        question = b"".join(
            c.pcm for c in tts.synthesize("What time do you open on Saturday?", 8000)
        )
        stream = Stream(codec=PCMU)
        stream.silence(0.5)
        stream.audio(question)
        stream.silence(12.0)
        for model in stt_models or (settings.stt.model,):
            for count_of_nodes in nodes:
                with _serving(settings, model, count_of_nodes, max(counts), work) as served:
                    for count in counts:
                        since = datetime.now(UTC).replace(tzinfo=None)  # as the store keeps time
                        result = _calls_round(count, served, stream.packets, work)
                        # The lines finish their turns after the callers' BYEs.
                        result["unfinished"] = _wait_until_idle(settings)
                        latencies, result["spread"] = _round_latencies(settings, since)
                        result["voice_to_voice"] = summary(latencies) if latencies else {}
                        results.append({"stt_model": model, "nodes": count_of_nodes, **result})
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
        if r["calls"] == TARGET_CALLS and r["nodes"] == 1
    ]
    if any(r["unfinished"] for r in results):
        import sys

        print(
            "bench: some calls were still active 120 s after a round: its figures are partial",
            file=sys.stderr,
        )
    if as_json:
        print(json.dumps({"rounds": results, "targets": targets}, indent=2))
    else:
        for r in results:
            v = r["voice_to_voice"]
            where = "1 node" if r["nodes"] == 1 else f"{r['nodes']} nodes via Kamailio"
            spread = ", ".join(f"{n} {c}" for n, c in sorted(r["spread"].items()))
            print(
                f"{r['stt_model']}, {where}, {r['calls']} calls: voice-to-voice median "
                f"{v.get('median_ms', 0):.0f} ms, p95 {v.get('p95_ms', 0):.0f} ms; reply RTP gaps "
                f"{r['rtp_gaps']}; CPU {r['cpu_s']:.1f} s; RSS {r['rss_mib']:.0f} MiB; "
                f"failed {r['failed']}; calls per node: {spread}"
            )
        for t in targets:
            verdict = "met" if t["met"] else "missed"
            print(
                f"target ({t['calls']} calls, p95 <= {t['p95_ms_at_most']:.0f} ms, no RTP gaps) "
                f"with {t['stt_model']}: {verdict}"
            )
    return 0


@dataclass
class _Served:
    """Where the callers call (a line, or the proxy in front of the nodes), the processes
    whose CPU and memory count, and the SIPp scenario for that path."""

    port: int
    processes: list[Any]
    scenario: str


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _serving(
    settings: Settings, model: str, nodes: int, most_calls: int, work: Path
) -> Iterator[_Served]:
    """One line on 127.0.0.1, or ``nodes`` lines on 127.0.0.2, .3, ... behind Kamailio on
    127.0.0.1, each with its own home and node name, one store and one master key."""
    import os
    import subprocess
    import sys

    import psutil

    from appliance.config.settings import PACKAGE_ROOT

    sipp_folder = Path(__file__).parents[1] / "testing" / "sipp"
    base = {
        **os.environ,
        "APPLIANCE_HOME": str(settings.home),
        "APPLIANCE_STT__MODEL": model,
        "APPLIANCE_SIP__DISCLOSURE": "Automated assistant.",
        "APPLIANCE_SIP__MAX_DIALOGS": str(most_calls * 2),
        "APPLIANCE_SIP__UNCONFIRMED_PER_ADDRESS": str(most_calls),
        "APPLIANCE_SIP__INVITES_PER_ADDRESS_PER_10S": str(most_calls * 4),
        "APPLIANCE_LIMITS__MAX_CONCURRENT_CALLS": str(most_calls),
        # Every benchmark call is one caller from one address: its rounds must not hit the
        # per-caller and per-address limits (shared by the nodes through the store).
        "APPLIANCE_LIMITS__CALLS_PER_CALLER_PER_HOUR": "1000000",
        "APPLIANCE_LIMITS__CALLS_PER_ADDRESS_PER_MINUTE": "1000000",
    }
    if settings.source != "defaults":
        base["APPLIANCE_CONFIG"] = settings.source
    processes: list[subprocess.Popen[str]] = []
    try:
        if nodes == 1:
            addresses = [
                ("127.0.0.1", _free_port(), {**base, "APPLIANCE_SERVICE__NODE": "bench-1"})
            ]
        else:
            from appliance.service import open_storage
            from appliance.storage.keys import default_key_path

            open_storage(settings).close()  # the master key made and the schema migrated, once
            sip = settings.sip
            width = (sip.rtp_port_max - sip.rtp_port_min + 1) // nodes
            if width < 2 * most_calls:
                raise ApplianceError(
                    "bench.nodes",
                    f"[sip] rtp_port_min to rtp_port_max holds too few ports for {nodes} nodes "
                    f"of {most_calls} calls each",
                )
            key = str(default_key_path(settings.home, settings.storage.master_key_file))
            addresses = []
            for index in range(nodes):
                home = work / f"node-{index + 1}"
                home.mkdir(exist_ok=True)
                low = sip.rtp_port_min + index * width
                env = {
                    **base,
                    "APPLIANCE_HOME": str(home),
                    "APPLIANCE_STORAGE__URL": settings.storage.url,
                    "APPLIANCE_STORAGE__MASTER_KEY_FILE": key,
                    "APPLIANCE_SERVICE__NODE": f"{NODE_PREFIX}{index + 1}",
                    "APPLIANCE_SIP__TRUSTED_PROXIES": "127.0.0.1",
                    "APPLIANCE_SIP__RTP_PORT_MIN": str(low),
                    "APPLIANCE_SIP__RTP_PORT_MAX": str(low + width - 1),
                }
                addresses.append((f"127.0.0.{index + 2}", _free_port(), env))
        for host, port, env in addresses:
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "appliance", "sip", "--listen", f"{host}:{port}"],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                )
            )
        for (host, port, _), line in zip(addresses, processes, strict=True):
            assert line.stdout is not None
            if "listening" not in line.stdout.readline():
                raise ApplianceError("bench.sip", f"appliance sip on {host}:{port} did not start")
        if nodes == 1:
            scenario = (sipp_folder / "uac_call.xml").read_text()
            yield _Served(addresses[0][1], [psutil.Process(processes[0].pid)], scenario)
            return
        config = PACKAGE_ROOT / "kamailio" / "dispatcher.cfg"
        if not config.is_file():
            raise ApplianceError("bench.kamailio", f"the proxy's configuration {config} is missing")
        run = work / f"kamailio-{nodes}"
        run.mkdir(exist_ok=True)
        listed = run / "nodes.list"
        listed.write_text("".join(f"1 sip:{host}:{port}\n" for host, port, _ in addresses))
        port, log = _free_port(), run / "dispatcher.log"
        with log.open("w") as out:
            proxy = subprocess.Popen(
                ["kamailio", "-f", str(config), "-DD", "-E",
                 "-Y", str(run), "-m", "32", "-M", "4", "-l", f"udp:127.0.0.1:{port}",
                 "-A", f'NODES="{listed}"', "-A", "PROBE_S=1", "-A", "PIKE_REQUESTS=1000"],
                stdout=out, stderr=subprocess.STDOUT, text=True, cwd=run,
                start_new_session=True,  # its workers are its children: stopped as a group
            )  # fmt: skip
        processes.append(proxy)
        deadline = time.monotonic() + 30
        while "Listening on" not in log.read_text(errors="replace"):
            if proxy.poll() is not None or time.monotonic() > deadline:
                raise ApplianceError("bench.kamailio", f"kamailio did not start: see {log}")
            time.sleep(0.2)
        scenario = (sipp_folder / "uac_call_proxy.xml").read_text()
        counted = [psutil.Process(p.pid) for p in processes]
        counted += psutil.Process(proxy.pid).children(recursive=True)  # its UDP workers
        yield _Served(port, counted, scenario)
    finally:
        for process in processes:
            _signal(process, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                _signal(process, signal.SIGKILL)
                process.wait(timeout=10)


def _signal(process: Any, number: int) -> None:
    """To the process, or to its whole group when it leads one (Kamailio and its workers)."""
    import os

    try:
        if os.getpgid(process.pid) == process.pid:
            os.killpg(process.pid, number)
        else:
            process.send_signal(number)
    except ProcessLookupError:
        pass


def _round_latencies(settings: Settings, since: datetime) -> tuple[list[float], dict[str, int]]:
    """Voice-to-voice of the turns of the calls started since ``since`` (one round's), and
    how many of those calls each node took (a refused call is not stored: it has none)."""
    from appliance.service import open_storage

    storage = open_storage(settings)
    try:
        latencies: list[float] = []
        spread: dict[str, int] = {}
        for call in storage.list_calls(limit=1000):
            if call.started_at < since:
                break  # newest first
            if not (call.node or "").startswith(NODE_PREFIX):
                continue  # another node's call on a shared store
            view = storage.read_call(call.id, "bench", "latency benchmark")
            latencies += [t.voice_to_voice_ms for t in view.turns if t.voice_to_voice_ms]
            spread[call.node or "?"] = spread.get(call.node or "?", 0) + 1
        return latencies, spread
    finally:
        storage.close()


def _wait_until_idle(settings: Settings, timeout_s: float = 120.0) -> int:
    """Until none of the benchmark's calls is active (a round starts only once the last one
    has ended); returns how many still were when ``timeout_s`` ran out (0: all ended)."""
    from appliance.service import open_storage

    storage = open_storage(settings)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            active = [
                c
                for c in storage.list_calls(limit=50)
                if c.status == "active" and (c.node or "").startswith(NODE_PREFIX)
            ]
            if not active or time.monotonic() >= deadline:
                return len(active)
            time.sleep(0.5)
    finally:
        storage.close()


def _calls_round(
    count: int, served: _Served, stream: Sequence[tuple[float, bytes]], work: Path
) -> dict[str, Any]:
    """``count`` SIPp callers at once: SIPp signals, each caller's own media socket speaks
    the question once answered and hears the reply (testing/media.py)."""
    import subprocess

    from appliance.testing.media import CallerMedia

    def cpu() -> float:
        return sum(sum(p.cpu_times()[:2]) for p in served.processes)

    cpu_before = cpu()
    callers, runs = [], []
    peak = 0.0
    for index in range(count):
        media = CallerMedia()
        callers.append(media)
        text = (
            served.scenario.replace("@CODEC@", "0")
            .replace("@CAPTURE_PORT@", str(media.port))
            .replace("@WAIT_MS@", "2500")
            .replace("@TALK_MS@", "14000")
        )
        xml = work / f"call{index}.xml"
        xml.write_text(text)
        media.start(stream, after_s=2.5)
        command = ["sipp", f"127.0.0.1:{served.port}", "-sf", str(xml), "-m", "1"]
        command += ["-i", "127.0.0.1", "-p", str(_free_port()), "-mp", str(_free_port())]
        command += ["-timeout", "90s"]
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
        peak = max(peak, sum(p.memory_info().rss for p in served.processes) / 2**20)
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
        "cpu_s": round(cpu() - cpu_before, 1),
        "rss_mib": round(peak, 1),
    }
