"""The agent's tools (``tools list``) and the voice factor (``voice enrol | forget | status``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from appliance.cli.common import EXIT_ERROR, Commands, Row, actor, command, print_rows
from appliance.config.settings import Settings


def register(commands: Commands) -> None:
    tools = commands.add_parser("tools", help="the agent's tools")
    tools_cmd = tools.add_subparsers(dest="tools_command", required=True)
    command(
        tools_cmd, "list", list_tools, "each tool: scopes, changes data, level", json_option=True
    )
    voice = commands.add_parser("voice", help="voice biometrics: enrol, forget, status")
    voice_cmd = voice.add_subparsers(dest="voice_command", required=True)
    enrol = command(voice_cmd, "enrol", enrol_voice, "enrol a caller's voice from WAV files")
    enrol.add_argument("--caller", required=True, help="the caller ID")
    enrol.add_argument("wavs", type=Path, nargs="+", help="utterances, one per file")
    forget = command(voice_cmd, "forget", forget_voice, "erase a caller's voice template")
    forget.add_argument("--caller", required=True)
    command(voice_cmd, "status", voice_status, "whether voice biometrics are available and enabled")


def list_tools(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.service import deployment_tools
    from appliance.tools.registry import ToolBox

    box = ToolBox(deployment_tools(settings), frozenset(settings.tools.enabled))
    rows = [tool.describe(tool.name in box.enabled) for tool in box.tools.values()]

    def line(r: Row) -> str:
        return (
            f"{r['name']:20} {'yes' if r['enabled'] else 'no':8} {r['assurance_level']:<6} "
            f"{'yes' if r['changes_data'] else 'no':8} {', '.join(r['scopes'])}"
        )

    header = f"{'tool':20} {'enabled':8} {'level':6} {'changes':8} scopes"
    return print_rows(rows, args.json, header, line)


def voice_status(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.engines.voiceprint import voiceprint_available

    available = voiceprint_available()
    state = "enabled" if settings.voiceprint.enabled else "disabled in [voiceprint]"
    print(f"voice biometrics: {'available' if available else 'unavailable'}; {state}")
    return 0 if available else EXIT_ERROR


def forget_voice(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.service import open_storage

    with open_storage(settings) as storage:
        storage.forget_voiceprint(args.caller, actor())
    print("voice template erased")
    return 0


def enrol_voice(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.audio_io.wav import read_wav, to_pipeline_pcm
    from appliance.config.manifest import model_spec
    from appliance.core.audio import PIPELINE_SAMPLE_RATE_HZ
    from appliance.engines.voiceprint import ResemblyzerEmbedder
    from appliance.identity.voice import enrol
    from appliance.service import open_storage

    with open_storage(settings) as storage:
        embedder = ResemblyzerEmbedder(model_spec(settings, "voiceprint"))
        embeddings = [
            embedder.embed(to_pipeline_pcm(read_wav(path)), PIPELINE_SAMPLE_RATE_HZ)
            for path in args.wavs
        ]
        template = enrol(embeddings, settings.voiceprint.min_enrolment_utterances)
        storage.save_voiceprint(args.caller, template.to_bytes(), actor())
    print(f"enrolled from {len(args.wavs)} utterances (template sealed in the database)")
    return 0
