"""``appliance redteam``: the attack and benign corpus through the call's own reply path."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from appliance.cli.common import Commands, command
from appliance.config.settings import Settings


def register(commands: Commands) -> None:
    redteam = command(
        commands, "redteam", run_redteam, "run an attack and benign corpus, report rates"
    )
    redteam.add_argument(
        "--corpus", type=Path, help="JSONL: text, label, category (default: built in)"
    )
    redteam.add_argument("--spoken", action="store_true", help="through Piper and Whisper first")
    redteam.add_argument("--phone", action="store_true", help="spoken over 8 kHz G.711 u-law")
    redteam.add_argument("--json", action="store_true", help="print the JSON report")
    redteam.add_argument("--sample", type=int, default=0, help="N attacks and N benign, stratified")
    redteam.add_argument("--out", type=Path, help="folder for report.json and report.md")


def run_redteam(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.redteam import corpus, runner
    from appliance.service import VoiceService

    path = args.corpus or corpus.DEFAULT_CORPUS
    items = corpus.load(path)
    if args.sample:
        items = runner.sample(items, args.sample)
    service = VoiceService.load(settings)

    def progress(done: int, total: int) -> None:
        if not args.json:
            print(f"\rred team: {done}/{total}", end="", file=sys.stderr, flush=True)

    outcomes = runner.run(service, items, spoken=args.spoken, phone=args.phone, progress=progress)
    result = runner.report(outcomes, spoken=args.spoken, phone=args.phone, corpus=str(path))
    out = args.out or settings.home / "redteam" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    summary = runner.markdown(result)
    (out / "report.md").write_text(summary, encoding="utf-8")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(file=sys.stderr)
        print(summary)
        print(f"report: {out / 'report.json'} and {out / 'report.md'}")
    return 0
