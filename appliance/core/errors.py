"""Error codes. Every error the appliance raises carries a stable, dotted code.

Libraries' exceptions are translated where they enter (``raise SttError(...) from exc``) and
caught once, at the turn or command boundary.
"""

from __future__ import annotations

from typing import ClassVar

from appliance.core.events import Stage


class ApplianceError(Exception):
    """Base of all appliance errors: ``code`` is stable and machine-readable. ``stage`` says
    where in the data path an error of this class happens (the turn's ERROR event names it)."""

    stage: ClassVar[Stage | None] = None

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.message = message


class ConfigError(ApplianceError):
    """The configuration file or an environment override is invalid."""


class ModelError(ApplianceError):
    """A model file is missing, altered (SHA-256 mismatch) or cannot be loaded."""


class AudioError(ApplianceError):
    """An audio source or sink failed: not audio, truncated, no device."""

    stage = Stage.AUDIO_IN


class VadError(ApplianceError):
    """Voice activity detection failed."""

    stage = Stage.ENDPOINTING


class SttError(ApplianceError):
    """Speech-to-text failed."""

    stage = Stage.STT


class LlmError(ApplianceError):
    """The language model failed."""

    stage = Stage.LLM


class TtsError(ApplianceError):
    """Speech synthesis failed."""

    stage = Stage.TTS


class StorageError(ApplianceError):
    """The database failed: unavailable, full, or not openable with the key."""

    stage = Stage.STORAGE


class IntegrityError(ApplianceError):
    """A sealed value or the audit chain failed its integrity check: it was altered."""


class DirectoryError(ApplianceError):
    """A change to the caller directory was refused: a malformed number or credential, a
    caller already enrolled or not enrolled, a secret that would be replaced unasked."""


class NotifyError(ApplianceError):
    """A notifier could not deliver a one-time code: the relay did not answer, offered no
    STARTTLS, presented a certificate that does not verify, or refused the message. The
    message names what failed, never the code or where it was going."""


class KeyringError(ApplianceError):
    """A key is missing, has unsafe permissions, or cannot unwrap what it should."""


class GuardError(ApplianceError):
    """A guardrail could not decide (it failed closed: the turn gets the fallback)."""

    stage = Stage.GUARD


class KnowledgeError(ApplianceError):
    """A knowledge file is malformed or unreadable, or the index cannot be built or read."""

    stage = Stage.KNOWLEDGE


class ComplianceError(ApplianceError):
    """Compliance evidence could not be gathered or written (the SBOM, a report)."""


class IncidentError(ApplianceError):
    """A change of an incident's state was refused: there is no such incident, or the states
    do not allow it (an incident is acknowledged once, resolved once, and never reopened)."""


class SiemError(ApplianceError):
    """Security events could not be handed to the SIEM's collector: it did not answer, its
    certificate did not verify, or the connection broke before what was sent was known read
    (the events stay queued and are sent again). The message names what failed, never an
    event's content."""
