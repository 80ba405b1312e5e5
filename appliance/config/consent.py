"""The consent and disclosure scripts: one TOML file per jurisdiction and language under
``[sip] consent_folder`` (``config/consent/`` of this installation by default), named
``<jurisdiction>.<language>.toml``.

English only: the one Piper voice shipped (``piper-joe-medium``, en_US, models/manifest.toml)
speaks English, so a script in another language would have no voice to speak it.

Which script a call is under is pure logic (``appliance.core.jurisdiction``); this module
reads the files, checks them, and says which are missing for the compliance report.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.config.settings import DISCLOSURE_SAYS_AUTOMATED, Settings, SipSettings
from appliance.core.errors import ConfigError
from appliance.core.jurisdiction import (
    CONFIGURED,
    SUGGESTED,
    ConsentScript,
    jurisdiction_of_number,
    strictest,
)

LANGUAGE = "en"
"""The language of every call's script: the shipped voice's (see the module's docstring)."""
FIELDS: dict[str, type] = {
    "jurisdiction": str,
    "language": str,
    "version": str,
    "legal_basis": str,
    "consent_required": bool,
    "disclosure": str,
    "consent_prompt": str,
    "no_consent_reply": str,
}
_ID = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_VERSION_LIMIT = 64
"""``calls.disclosure_version`` and ``consents.disclosure_version`` are String(64)."""


def _fail(path: Path, key: str, rule: str) -> ConfigError:
    return ConfigError("config.consent_script", f"{path}: {key}: {rule}")


def load_script(path: Path) -> ConsentScript:
    """One script file, checked: every field present with its type, nothing else; the
    jurisdiction and language those of the file's name; a disclosure that says the caller is
    speaking with an automated assistant."""
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError("config.consent_script", f"{path}: cannot read ({exc})") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("config.consent_script", f"{path}: {exc}") from exc
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise _fail(path, unknown[0], f"unknown field (the fields: {', '.join(FIELDS)})")
    for key, kind in FIELDS.items():
        if key not in data:
            raise _fail(path, key, "missing")
        if not isinstance(data[key], kind):
            raise _fail(path, key, f"must be a {'boolean' if kind is bool else 'string'}")
        if kind is str and not data[key].strip():
            raise _fail(path, key, "must not be empty")
    script = ConsentScript(**data)
    stem = f"{script.jurisdiction}.{script.language}"
    if not _ID.fullmatch(script.jurisdiction):
        raise _fail(path, "jurisdiction", "lower-case letters, digits and hyphens")
    if path.name != f"{stem}.toml":
        raise _fail(path, "jurisdiction", f"and language name the file {stem}.toml")
    if len(script.stored_version) > _VERSION_LIMIT:
        raise _fail(path, "version", f"'jurisdiction/version' is at most {_VERSION_LIMIT} chars")
    if not DISCLOSURE_SAYS_AUTOMATED.search(script.disclosure):
        raise _fail(
            path,
            "disclosure",
            'must say the caller is speaking with an automated assistant ("automated", "AI" '
            'or "virtual assistant")',
        )
    return script


def configured_script(sip: SipSettings) -> ConsentScript:
    """The [sip] texts as a script (``[sip] jurisdiction = ""``, the default)."""
    return ConsentScript(
        jurisdiction=CONFIGURED,
        language=LANGUAGE,
        version=sip.disclosure_version,
        legal_basis="the operator's own [sip] disclosure and consent settings",
        consent_required=sip.consent_required,
        disclosure=sip.disclosure,
        consent_prompt=sip.consent_prompt,
        no_consent_reply=sip.no_consent_reply,
    )


def _scripts_in(folder: Path) -> list[ConsentScript]:
    if not folder.is_dir():
        return []
    return [load_script(path) for path in sorted(folder.glob("*.toml"))]


def _needed(sip: SipSettings) -> list[str]:
    """The jurisdictions a call on this line can be under: its own and every one a number
    can suggest."""
    own = [sip.jurisdiction] if sip.jurisdiction else []
    return own + [j for j in SUGGESTED if j not in own]


def configured_scripts(settings: Settings) -> list[ConsentScript]:
    """The scripts a call on this line can hear, in English: the line's own first (the [sip]
    texts when no jurisdiction is set), then those a caller's number can suggest that exist."""
    sip = settings.sip
    scripts = _scripts_in(sip.consent_folder_path)
    english = {s.jurisdiction: s for s in scripts if s.language == LANGUAGE}
    found = [english[j] for j in _needed(sip) if j in english]
    return found if sip.jurisdiction else [configured_script(sip), *found]


def missing_scripts(settings: Settings) -> list[str]:
    """The jurisdictions configured or reachable from a caller's number with no English
    script in the folder."""
    have = {s.jurisdiction for s in configured_scripts(settings)}
    return [j for j in _needed(settings.sip) if j not in have]


@dataclass(frozen=True)
class LineScripts:
    """The scripts of one line, read once when it starts (a malformed file or a missing
    script stops it then, before any call): the line's own and those numbers suggest."""

    line: ConsentScript
    suggested: dict[str, ConsentScript]

    @classmethod
    def load(cls, settings: Settings) -> LineScripts:
        missing = missing_scripts(settings)
        if missing:
            raise ConfigError(
                "config.consent_missing",
                f"{settings.sip.consent_folder_path}: no {LANGUAGE} script for "
                + ", ".join(missing)
                + f" (files <jurisdiction>.{LANGUAGE}.toml)",
            )
        scripts = {s.jurisdiction: s for s in configured_scripts(settings)}
        line = scripts[settings.sip.jurisdiction or CONFIGURED]
        return cls(line, {j: scripts[j] for j in SUGGESTED})

    def for_caller(self, number: str | None) -> ConsentScript:
        """The script a call from ``number`` is under: the strictest of the line's and the
        one its number suggests."""
        suggested = jurisdiction_of_number(number or "")
        return strictest(self.line, self.suggested.get(suggested) if suggested else None)
