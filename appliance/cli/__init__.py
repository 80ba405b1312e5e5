"""The ``appliance`` command. Each area registers its own subcommands (one module each); errors
are caught here, once, and printed with their code."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from appliance import __version__
from appliance.cli import (
    bench,
    callbacks,
    callers,
    calls,
    compliance,
    data,
    incidents,
    knowledge,
    models,
    operate,
    redteam,
    siem,
    tools,
)
from appliance.cli.common import EXIT_ERROR, EXIT_USAGE
from appliance.config.settings import load_settings
from appliance.core.errors import ApplianceError, ConfigError

AREAS = (
    calls,
    operate,
    models,
    knowledge,
    data,
    incidents,
    callers,
    callbacks,
    tools,
    redteam,
    compliance,
    siem,
    bench,
)
"""Each module's ``register(commands)`` adds its subcommands; each sets ``run`` to the function
that carries it out: ``run(args, settings) -> exit status``."""


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="appliance", description="Voice Appliance: an on-premises voice agent."
    )
    top.add_argument("--version", action="version", version=f"appliance {__version__}")
    top.add_argument("--config", type=Path, help="configuration file (TOML)")
    top.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = top.add_subparsers(dest="command", required=True)
    for area in AREAS:
        area.register(commands)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    # Before a key or a word is read: no core dumps, and what the appliance writes (the
    # database, keys, exports, the home itself) is its own, whatever umask it started with.
    from appliance.deploy import process

    process.harden()
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        settings = load_settings(args.config)
        # Every command of the appliance stays on the premises: an in-process egress guard
        # (deploy/egress.py) refuses connections outside loopback and [service] egress_allow.
        from appliance.deploy import egress

        egress.install(egress.allowlist(settings))
        return int(args.run(args, settings))
    except ConfigError as exc:
        print(f"appliance: configuration error {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ApplianceError as exc:
        print(f"appliance: error {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
