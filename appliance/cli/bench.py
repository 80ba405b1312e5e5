"""``appliance bench latency | answers | calls | storage | startup``: side-by-side figures."""

from __future__ import annotations

import argparse

from appliance.cli.common import Commands, command
from appliance.config.settings import Settings


def register(commands: Commands) -> None:
    bench = commands.add_parser("bench", help="benchmarks that print side-by-side ratios")
    bench_cmd = bench.add_subparsers(dest="bench_command", required=True)
    latency = command(
        bench_cmd, "latency", latency_bench, "streaming vs sequential voice-to-voice latency"
    )
    latency.add_argument("--json", action="store_true")
    latency.add_argument("--questions", type=int, default=6, help="how many questions (1-12)")
    latency.add_argument(
        "--llm",
        default="",
        help="language models to compare, comma separated (default: [llm] model)",
    )
    answers = command(
        bench_cmd, "answers", answers_bench, "answer quality on the knowledge base's question set"
    )
    answers.add_argument("--json", action="store_true")
    answers.add_argument("--spoken", action="store_true", help="spoken and heard back first")
    answers.add_argument(
        "--voice", default="piper", help="who speaks the questions: piper, espeak, or both"
    )
    answers.add_argument("--llm", default="", help="language models to compare, comma separated")
    answers.add_argument(
        "--split", default="report", help="which half: report (held back), tune, or all"
    )
    answers.add_argument("--limit", type=int, default=0, help="only the first N questions")
    storage = command(
        bench_cmd, "storage", storage_bench, "turn write/read rates with and without encryption"
    )
    storage.add_argument("--json", action="store_true")
    storage.add_argument("--turns", type=int, default=10_000)
    calls = command(
        bench_cmd,
        "calls",
        calls_bench,
        "N simultaneous SIPp calls: voice-to-voice latency, RTP gaps, CPU, RSS",
    )
    calls.add_argument("--json", action="store_true")
    calls.add_argument("--calls", default="1,2,4,8", help="the Ns, comma separated")
    calls.add_argument(
        "--stt",
        default="",
        help="speech-recognition models to compare, comma separated (default: [stt] model)",
    )
    calls.add_argument(
        "--nodes",
        default="1",
        help="how many voice nodes, comma separated: 1 is one line; more are that many nodes "
        "behind Kamailio on the PostgreSQL store of [storage] url",
    )
    startup = command(
        bench_cmd,
        "startup",
        startup_bench,
        "appliance serve: start to READY=1, and SIGTERM to exit",
    )
    startup.add_argument("--json", action="store_true")
    startup.add_argument("--runs", type=int, default=3)


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def latency_bench(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.bench.latency import run_latency_bench

    return run_latency_bench(
        settings,
        questions=args.questions,
        as_json=args.json,
        llm_models=_names(args.llm),
        config=args.config,
    )


def answers_bench(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.bench.answers import run_answers_bench

    voices = ["piper", "espeak"] if args.voice == "both" else _names(args.voice)
    return run_answers_bench(
        settings,
        spoken=args.spoken,
        voices=voices,
        llm_models=_names(args.llm),
        split=args.split,
        limit=args.limit,
        as_json=args.json,
    )


def storage_bench(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.bench.storage import run_storage_bench

    return run_storage_bench(settings, turns=args.turns, as_json=args.json)


def calls_bench(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.bench.calls import run_calls_bench

    counts = [int(n) for n in _names(args.calls)]
    nodes = [int(n) for n in _names(args.nodes)]
    return run_calls_bench(
        settings, counts=counts, as_json=args.json, stt_models=_names(args.stt), nodes=nodes
    )


def startup_bench(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.bench.startup import run_startup_bench

    return run_startup_bench(settings, runs=max(1, args.runs), as_json=args.json)
