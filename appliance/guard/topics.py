"""Is a turn on the deployment's topics? A lexical check, explainable and cheap.

The vocabulary is every word of four letters or more in the allowed topics, the capability
statement, ``[policy] topic_keywords`` and the knowledge base's questions and titles; a turn is
on topic when one of its words shares its first four letters with the vocabulary ("booking"
with "book", "appointments" with "appointment"). Short turns ("yes", "thank you") are never
counted against the caller. The abuse monitor watches for a run of off-topic turns (topic
drift), not for one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from appliance.config.settings import PolicySettings

PREFIX = 4
MIN_WORDS = 3
_WORD = re.compile(r"[a-z]+")


def vocabulary(policy: PolicySettings, knowledge: Iterable[str] = ()) -> frozenset[str]:
    text = " ".join(
        [
            *policy.allowed_topics,
            policy.capability_statement,
            *policy.topic_keywords,
            *knowledge,
        ]
    )
    return frozenset(w[:PREFIX] for w in _WORD.findall(text.lower()) if len(w) >= PREFIX)


def on_topic(text: str, vocab: frozenset[str]) -> bool:
    words = _WORD.findall(text.lower())
    if len(words) < MIN_WORDS:
        return True
    return any(w[:PREFIX] in vocab for w in words if len(w) >= PREFIX)
