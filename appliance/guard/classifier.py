"""Layer 1's learned signals: logistic heads over sentence embeddings, beside the rules.

The rules (injection.py) say exactly why they fire, but they only know the wordings they were
written for. The head scores how much a turn is *like* the attacks it was trained on, in the
embedding space of the knowledge base's model (all-MiniLM-L6-v2), so an attack in new words
still scores high. Its score is one more reason among the rules' (``classifier:injection`` from
``block_at``, ``classifier:injection_possible`` from ``flag_at``): explainable by the head file,
which records what it was trained on, the seed and its held-out figures.

The head is a JSON file (no pickle), pinned by SHA-256 in the model manifest like every model,
and names the embedding model it was trained for: a head loaded beside another embedding model
is refused. It is trained by ``scripts/train-guard`` (redteam/training.py), deterministically.

The same file holds a second head for the distress path: how much a turn is like a caller in
danger who names no distress word ("there's a man in my kitchen with a gun"). From its
``check_at`` the caller is asked "Are you in danger right now?" before anything else: the head
never opens an incident on one turn (a yes does, or a second such turn right after the
question).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.core.errors import ModelError
from appliance.core.ports import TextEmbedder

FORMAT = "appliance.injection-head/1"
BLOCK_REASON = "classifier:injection"
FLAG_REASON = "classifier:injection_possible"


@dataclass(frozen=True)
class GuardHead:
    weights: tuple[float, ...]
    bias: float
    block_at: float
    """From this probability a turn is refused by the head alone."""
    flag_at: float
    """From this probability the head adds half a block (a rule's half more refuses it)."""
    embedding: str
    """The embedding model's pins (``name=sha256,...``) the head was trained in."""
    training: Mapping[str, Any] = field(default_factory=dict)
    """What it was trained on (sources, counts, seed, regularization) and its held-out rates."""
    distress_weights: tuple[float, ...] = ()
    """The distress head (none: the distress words alone)."""
    distress_bias: float = 0.0
    check_at: float = 1.0
    """From this distress probability the caller is asked whether they are in danger."""

    def probability(self, vector: Sequence[float]) -> float:
        """That the turn is an attack."""
        return _logistic(self.weights, self.bias, vector)

    def distress(self, vector: Sequence[float]) -> float:
        """That the turn is a caller in danger (0 without a distress head)."""
        if not self.distress_weights:
            return 0.0
        return _logistic(self.distress_weights, self.distress_bias, vector)

    def reasons(self, probability: float) -> dict[str, float]:
        """The rule-like reasons (with their weights) a probability adds."""
        if probability >= self.block_at:
            return {BLOCK_REASON: 1.0}
        if probability >= self.flag_at:
            return {FLAG_REASON: 0.5}
        return {}

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "embedding": self.embedding,
                "block_at": self.block_at,
                "flag_at": self.flag_at,
                "bias": round(self.bias, 6),
                "weights": [round(w, 6) for w in self.weights],
                "check_at": self.check_at,
                "distress_bias": round(self.distress_bias, 6),
                "distress_weights": [round(w, 6) for w in self.distress_weights],
                "training": dict(self.training),
            },
            indent=1,
        )

    @classmethod
    def load(cls, path: Path, embedding: str) -> GuardHead:
        """The head at ``path`` (verified by the caller against its pins), for the embedding
        model ``embedding`` (its pins)."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            if raw.get("format") != FORMAT:
                raise ValueError(f"format {raw.get('format')!r}, expected {FORMAT!r}")
            head = cls(
                tuple(float(w) for w in raw["weights"]),
                float(raw["bias"]),
                float(raw["block_at"]),
                float(raw["flag_at"]),
                str(raw["embedding"]),
                dict(raw.get("training", {})),
                tuple(float(w) for w in raw.get("distress_weights", [])),
                float(raw.get("distress_bias", 0.0)),
                float(raw.get("check_at", 1.0)),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelError(
                "model.guard_head", f"cannot read the guard head {path}: {exc}"
            ) from exc
        if head.embedding != embedding:
            raise ModelError(
                "model.guard_head",
                f"the guard head {path} was trained for another embedding model; run "
                "scripts/train-guard for the configured one",
            )
        if not 0 < head.flag_at <= head.block_at <= 1 or not 0 < head.check_at <= 1:
            raise ModelError(
                "model.guard_head", f"{path}: needs 0 < flag_at <= block_at <= 1, 0 < check_at <= 1"
            )
        if head.distress_weights and len(head.distress_weights) != len(head.weights):
            raise ModelError("model.guard_head", f"{path}: the two heads differ in dimensions")
        return head


def _logistic(weights: Sequence[float], bias: float, vector: Sequence[float]) -> float:
    if len(vector) != len(weights):
        raise ModelError(
            "model.guard_head", f"the guard head takes {len(weights)} dimensions, got {len(vector)}"
        )
    z = math.fsum(w * x for w, x in zip(weights, vector, strict=True)) + bias
    return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0


class GuardClassifier:
    """The heads over the embedding model (a turn is embedded once for both)."""

    def __init__(self, embedder: TextEmbedder, head: GuardHead) -> None:
        self.embedder = embedder
        self.head = head

    def scores(self, text: str) -> tuple[float, float]:
        """The probabilities that ``text`` is an attack and a caller in danger (one embedding
        for both heads)."""
        vector = self.embedder.embed([text])[0]
        return self.head.probability(vector), self.head.distress(vector)
