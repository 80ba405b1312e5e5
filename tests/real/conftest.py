"""Real models, loaded once per test session into a private APPLIANCE_HOME."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import jiwer
import pytest

from appliance.config.manifest import assemble_models
from appliance.config.settings import Settings, load_settings
from appliance.service import VoiceService

APPLIANCE = Path(sys.executable).parent / "appliance"


@pytest.fixture(scope="session")
def real_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("appliance-home")


@pytest.fixture(scope="session")
def real_settings(real_home: Path) -> Settings:
    settings = load_settings(environ={"APPLIANCE_HOME": str(real_home)})
    assemble_models(settings)  # Whisper base, joined from its two parts, as setup does
    return settings


@pytest.fixture(scope="session")
def service(real_settings: Settings) -> Iterator[VoiceService]:
    yield VoiceService.load(real_settings)


def speak(service: VoiceService, text: str, rate: int = 16_000) -> bytes:
    return b"".join(c.pcm for c in service.engines.tts.synthesize(text, rate))


def silence(seconds: float, rate: int = 16_000) -> bytes:
    return bytes(int(seconds * rate) * 2)


def wer(reference: str, hypothesis: str) -> float:
    def norm(text: str) -> str:
        return re.sub(r"[^a-z' ]+", " ", text.lower()).strip()

    return float(jiwer.wer(norm(reference), norm(hypothesis)))


def run_cli(
    *args: str, home: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "APPLIANCE_HOME": str(home), **(env or {})}
    return subprocess.run(
        [str(APPLIANCE), *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=300,
        check=False,
    )


@pytest.fixture
def pulse(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A private PulseAudio server with two null sinks: 'caller' (its monitor is the default
    microphone) and 'agent' (the default speaker)."""
    if shutil.which("pulseaudio") is None:
        pytest.fail("pulseaudio is not installed: run scripts/setup as root")
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "HOME": str(tmp_path)}
    subprocess.run(
        [
            "pulseaudio",
            "--daemonize=yes",
            "--exit-idle-time=-1",
            "--disallow-exit",
            "-n",
            "--load=module-native-protocol-unix",
            # 48 kHz, as a microphone captures: the screening looks above 19 kHz
            "--load=module-null-sink sink_name=caller rate=48000",
            "--load=module-null-sink sink_name=agent rate=48000",
        ],
        env=env,
        check=True,
        capture_output=True,
        timeout=30,
    )
    try:
        subprocess.run(["pactl", "set-default-source", "caller.monitor"], env=env, check=True)
        subprocess.run(["pactl", "set-default-sink", "agent"], env=env, check=True)
        yield env
    finally:
        subprocess.run(["pulseaudio", "--kill"], env=env, check=False, timeout=30)
