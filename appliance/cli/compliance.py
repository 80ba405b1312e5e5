"""``appliance compliance``: the compliance report read from the live appliance (``report``),
and the check of a signed copy an auditor holds (``verify``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from appliance.cli.common import EXIT_ERROR, Commands, actor, command
from appliance.config.settings import Settings


def register(commands: Commands) -> None:
    area = commands.add_parser("compliance", help="the compliance report over live state")
    sub = area.add_subparsers(dest="compliance_command", required=True)
    report = command(
        sub, "report", run_report, "read every control now (exit 1 if one fails)", json_option=True
    )
    report.add_argument(
        "--out",
        type=Path,
        help="also write a signed copy: FILE.json, FILE.html (a page), or FILE.pdf (with its "
        "detached signature FILE.pdf.sig)",
    )
    verify = command(sub, "verify", run_verify, "check a signed report copy", "file")
    verify.add_argument(
        "--key", help="the pinned public key (hex, as `audit key` prints it); default: this box's"
    )


def run_report(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.compliance import checks, export
    from appliance.service import open_storage

    with open_storage(settings) as storage:
        rows = checks.controls(settings, storage)
        body = export.document(settings, rows)
        written = ""
        if args.out is not None:
            signed = export.sign(body, settings)
            suffix = args.out.suffix.lower()
            kind = {".pdf": "pdf", ".html": "html", ".htm": "html"}.get(suffix, "json")
            if kind == "pdf":
                sig = export.write_pdf(args.out, signed, settings)
                written = f"wrote {args.out} and its signature {sig}"
            else:
                text = export.render_html(signed) if kind == "html" else (
                    json.dumps(signed, indent=1, sort_keys=True)
                )  # fmt: skip
                args.out.write_text(text, encoding="utf-8")
                written = f"wrote {args.out}, signed"
            details = {"summary": body["summary"], "format": kind}
            storage.log_event(actor(), "export", "compliance_report", "ok", details)
    if args.json:
        print(json.dumps(body, indent=2))
    else:
        for c in rows:
            print(f"{c.outcome.value.upper():4}  {c.framework:7} {c.reference:24} {c.control}")
            print(f"      {c.reason} | {c.evidence}")
        summary = body["summary"]
        print(f"{summary['pass']} pass, {summary['warn']} warn, {summary['fail']} fail")
        if written:
            print(written)
    return EXIT_ERROR if body["summary"]["fail"] else 0


def run_verify(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.compliance import export

    pinned = args.key or export.public_key(settings)
    verified = export.verify(Path(args.file), pinned)
    s = verified.summary
    redrawn = "; drawn again from the signed report: identical" if verified.redrawn else ""
    print(
        f"{args.file}: signature (key {pinned[:16]}...) verified, unchanged{redrawn}; report of "
        f"{verified.generated_at}: {s['pass']} pass, {s['warn']} warn, {s['fail']} fail"
    )
    return 0
