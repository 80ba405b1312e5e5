"""What the command's areas share: exit codes, the acting account, how results are shown."""

from __future__ import annotations

import argparse
import getpass
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from appliance.config.settings import Settings
from appliance.core.events import TurnEvent
from appliance.pipeline.session import TurnResult

EXIT_ERROR = 1
EXIT_USAGE = 2
Commands = Any
"""The subparsers action of argparse (its type is private)."""
Runner = Callable[[argparse.Namespace, Settings], int]
Row = Mapping[str, Any]
"""One line of a listing: what ``--json`` prints of it, as the table's line reads it."""


def command(
    commands: Commands,
    name: str,
    run: Runner,
    help_text: str,
    *arguments: str,
    json_option: bool = False,
) -> argparse.ArgumentParser:
    """A subcommand carried out by ``run(args, settings)``, taking the positional
    ``arguments`` in order (each a plain string; one that needs more is added on the parser
    returned), and ``--json`` where ``json_option`` (the answer as JSON, for a program)."""
    sub: argparse.ArgumentParser = commands.add_parser(name, help=help_text)
    for argument in arguments:
        sub.add_argument(argument)
    if json_option:
        sub.add_argument("--json", action="store_true")
    sub.set_defaults(run=run)
    return sub


def print_rows(rows: Sequence[Row], as_json: bool, header: str, line: Callable[[Row], str]) -> int:
    """A listing, as JSON (``as_json``, for a program) or as a table for a person: ``header``,
    then ``line(row)`` for each row. Returns the command's exit status."""
    if as_json:
        print(json.dumps(list(rows), indent=2))
        return 0
    print(header)
    for row in rows:
        print(line(row))
    return 0


def actor() -> str:
    """Who runs a command, for the audit trail: the operating-system account."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid{os.getuid()}"


def turn_record(turn: TurnResult) -> dict[str, Any]:
    return {
        "index": turn.index,
        "transcript": turn.transcript,
        "reply": turn.reply,
        "route": turn.route or None,
        "citations": list(turn.citations),
        "interrupted": turn.interrupted,
        "stored": turn.stored,
        "error": turn.error_code or None,
        "voice_to_voice_ms": rounded(turn.voice_to_voice_ms),
        "events": [event_record(e) for e in turn.events],
    }


def event_record(event: TurnEvent) -> dict[str, Any]:
    record: dict[str, Any] = {"type": event.type.value, "t_ms": round(event.t_ms, 1)}
    if event.frame_index is not None:
        record["frame"] = event.frame_index
    record.update({k: v for k, v in event.data.items() if k not in ("text", "reply")})
    return record


def rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
