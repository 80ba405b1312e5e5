"""Error codes. Every error the appliance raises carries a stable, dotted code.

Libraries' exceptions are translated where they enter (``raise SttError(...) from exc``) and
caught once, at the turn or command boundary.
"""

from __future__ import annotations


class ApplianceError(Exception):
    """Base of all appliance errors: ``code`` is stable and machine-readable."""

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


class VadError(ApplianceError):
    """Voice activity detection failed."""


class SttError(ApplianceError):
    """Speech-to-text failed."""


class LlmError(ApplianceError):
    """The language model failed."""


class TtsError(ApplianceError):
    """Speech synthesis failed."""


class StorageError(ApplianceError):
    """The database failed: unavailable, full, or not openable with the key."""


class IntegrityError(ApplianceError):
    """A sealed value or the audit chain failed its integrity check: it was altered."""


class KeyringError(ApplianceError):
    """A key is missing, has unsafe permissions, or cannot unwrap what it should."""
