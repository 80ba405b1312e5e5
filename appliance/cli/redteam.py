"""``appliance redteam``: the attack and benign corpus through the call's own reply path."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.cli.common import Commands, command
from appliance.compliance.gate import Fingerprint, fingerprint, gate_state
from appliance.config.settings import Settings

if TYPE_CHECKING:
    from appliance.guard.call import CallGuard
    from appliance.guard.classifier import GuardClassifier
    from appliance.redteam.corpus import Item
    from appliance.service import VoiceService


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
    redteam.add_argument(
        "--audio",
        action="store_true",
        help="adversarial audio: a sample of attacks (and benign requests) under noise, sped "
        "up, slowed, whispered, inaudible on a 48 kHz microphone, clipped or toned on the line",
    )
    redteam.add_argument(
        "--held-out-whole",
        action="store_true",
        help="the external corpus through the whole reply path (the model and the output guard "
        "too), each source's items screened by a learned head that never saw that source",
    )
    train = command(
        commands,
        "train-guard",
        run_train_guard,
        "train the learned head of the input guard (scripts/train-guard), print its figures",
    )
    train.add_argument("--out", type=Path, help="where to write the head (JSON); default: print")


def run_audio(args: argparse.Namespace, settings: Settings, items: list[Item]) -> int:
    from appliance.redteam import audio, runner
    from appliance.service import VoiceService

    made_with = fingerprint(settings)
    count = args.sample or 8  # attacks, spread over the areas; half as many benign requests
    picked = runner.sample(items, count)
    attacks = [i for i in picked if i.label == "attack"]
    chosen = attacks + [i for i in picked if i.label == "benign"][: max(1, count // 2)]
    service = VoiceService.load(settings)

    def progress(done: int, total: int) -> None:
        if not args.json:
            print(f"\rred team (audio): {done}/{total}", end="", file=sys.stderr, flush=True)

    result = audio.report(audio.run(service, chosen, progress=progress))
    return _write(args, settings, result, audio.markdown(result), "audio-", made_with)


def run_held_out_whole(args: argparse.Namespace, settings: Settings) -> int:
    """The held-out figures of the whole path: each source of the external corpus (other
    projects' attacks and benign requests, against which no rule was written) through the
    call's reply path (input guard, model, output guard), its learned head trained without
    that source (``training.attack_head_without`` for attacks, ``benign_head_without`` for
    benign requests, as the input-only held-out figures), in one report."""
    from appliance.guard.classifier import GuardClassifier
    from appliance.redteam import corpus, runner, training
    from appliance.redteam.corpus import source_project
    from appliance.service import VoiceService

    made_with = fingerprint(settings)
    service = VoiceService.load(settings)
    shipped = service.classifier
    if shipped is None:
        print("appliance: [guard] enabled = false: there is no learned head to hold out")
        return 2
    data = training.training_set(settings.knowledge.folder_path)
    vectors = training.embed_all(shipped.embedder, data)
    embedding = shipped.head.embedding
    items = [i for i in corpus.load(corpus.EXTERNAL_CORPUS) if i.label in ("attack", "benign")]
    groups = sorted({(i.label, source_project(i.source)) for i in items})
    first = training.halves(data)[0]
    outcomes: list[runner.Outcome] = []
    try:
        for done, (label, project) in enumerate(groups, 1):
            if label == "attack":
                head = training.attack_head_without(data, vectors, embedding, project, first)
            else:
                head = training.benign_head_without(data, vectors, embedding, project)
            service.classifier = GuardClassifier(shipped.embedder, head)
            chosen = [i for i in items if (i.label, source_project(i.source)) == (label, project)]
            if not args.json:
                print(f"\rred team (held out): {done}/{len(groups)}", end="", file=sys.stderr)
            outcomes += runner.run(service, chosen)
    finally:
        service.classifier = shipped
    where = f"{corpus.EXTERNAL_CORPUS} (each source held out)"
    result = runner.report(outcomes, spoken=False, phone=False, corpus=where)
    result["mode"] = "held_out"  # each source's items screened by a head trained without it
    return _write(args, settings, result, runner.markdown(result), "held-out-", made_with)


def _write(
    args: argparse.Namespace,
    settings: Settings,
    result: dict[str, Any],
    summary: str,
    kind: str,
    made_with: Fingerprint,
) -> int:
    """The report, as report.json and report.md in ``--out`` (or a new folder), and printed.

    The report records the fingerprint of what decided the replies (compliance/gate.py),
    taken before the run; when it changed during the run (a knowledge file edited, say) the
    report records none, and matches no configuration."""
    after = fingerprint(settings)
    result["finished_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    result["sample"] = args.sample or None
    result["fingerprint"] = made_with.record() if after == made_with else None
    if after != made_with:
        print(
            "appliance: the configuration changed during the run: this report matches none",
            file=sys.stderr,
        )
    recorded = made_with.digest if result["fingerprint"] else "none (changed during the run)"
    summary += f"\nMade with the configuration of fingerprint {recorded}.\n"
    out = args.out or settings.home / "redteam" / time.strftime(f"{kind}%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    (out / "report.md").write_text(summary, encoding="utf-8")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(file=sys.stderr)
        print(summary)
        print(f"report: {out / 'report.json'} and {out / 'report.md'}")
    state = gate_state(settings, dt.datetime.now(dt.UTC))
    print(f"red-team gate: {state.status.value}: {state.reason}", file=sys.stderr)
    return 0


def held_out(service: VoiceService, settings: Settings) -> dict[str, Any]:
    """The learned head's held-out figures, per attack source (redteam/training.py), measured
    now with this configuration's rules and embedding model (on the written texts)."""
    from appliance.redteam import training

    if service.classifier is None:
        return {"skipped": "[guard] enabled = false"}
    data = training.training_set(settings.knowledge.folder_path)
    embedding = service.classifier.head.embedding
    _, figures = training.measure(
        data, service.classifier.embedder, embedding, guard_factory(settings)
    )
    return figures


def guard_factory(settings: Settings) -> Callable[[GuardClassifier | None], CallGuard]:
    """A fresh input guard of this configuration with a given learned head (or none)."""
    from appliance.guard.call import CallGuard

    def new_guard(classifier: GuardClassifier | None) -> CallGuard:
        return CallGuard(settings.policy, settings.llm.system_prompt, classifier=classifier)

    return new_guard


def run_train_guard(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.config.manifest import model_spec
    from appliance.core.models import sha256_file
    from appliance.redteam import training
    from appliance.service import knowledge_embedder

    embedder, digest = knowledge_embedder(settings)
    data = training.training_set(settings.knowledge.folder_path)
    head = training.build(data, embedder, digest, guard_factory(settings))
    text = head.to_json() + "\n"
    if args.out is None:
        print(text, end="")
        return 0
    args.out.write_text(text, encoding="utf-8")
    print(json.dumps(head.training["held_out"], indent=2))
    pinned = model_spec(settings, "guard").files.get(args.out.name, "")
    sha = sha256_file(args.out)
    print(f"{args.out}: sha256 {sha}" + ("" if sha == pinned else " (not the manifest's pin)"))
    return 0


def run_redteam(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.redteam import corpus, runner
    from appliance.service import VoiceService

    if args.held_out_whole:
        return run_held_out_whole(args, settings)
    path = args.corpus or corpus.DEFAULT_CORPUS
    items = corpus.load(path)
    if args.audio:
        return run_audio(args, settings, items)
    if args.sample:
        items = runner.sample(items, args.sample)
    made_with = fingerprint(settings)
    service = VoiceService.load(settings)

    def progress(done: int, total: int) -> None:
        if not args.json:
            print(f"\rred team: {done}/{total}", end="", file=sys.stderr, flush=True)

    outcomes = runner.run(service, items, spoken=args.spoken, phone=args.phone, progress=progress)
    result = runner.report(outcomes, spoken=args.spoken, phone=args.phone, corpus=str(path))
    result["held_out"] = held_out(service, settings)
    return _write(args, settings, result, runner.markdown(result), "", made_with)
