"""The consent and disclosure scripts (config/consent/): the shipped ones, loading and its
errors (naming the file and the field), which are missing, and the [sip] settings' checks."""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import pytest

from appliance.config.consent import (
    LineScripts,
    configured_scripts,
    load_script,
    missing_scripts,
)
from appliance.config.settings import (
    DEFAULT_CONSENT_FOLDER,
    Settings,
    SipSettings,
    load_settings,
)
from appliance.core.errors import ConfigError

SHIPPED = {
    "us-one-party": False,
    "us-all-party": True,
    "eu-gdpr": True,
    "uk": False,
    "canada": True,
}
"""Each shipped jurisdiction and whether its script asks for consent."""


def with_sip(settings: Settings, **sip: object) -> Settings:
    return dataclasses.replace(settings, sip=dataclasses.replace(settings.sip, **sip))


def test_the_shipped_scripts_load_english_only_each_with_its_legal_basis() -> None:
    files = sorted(DEFAULT_CONSENT_FOLDER.glob("*.toml"))
    assert sorted(p.name for p in files) == sorted(f"{j}.en.toml" for j in SHIPPED)
    scripts = {s.jurisdiction: s for s in map(load_script, files)}
    assert {j: s.consent_required for j, s in scripts.items()} == SHIPPED
    assert {s.language for s in scripts.values()} == {"en"}  # the one voice shipped is English
    assert "18 U.S.C. 2511(2)(d)" in scripts["us-one-party"].legal_basis
    assert "Penal Code 632" in scripts["us-all-party"].legal_basis
    assert "GDPR" in scripts["eu-gdpr"].legal_basis and "PIPEDA" in scripts["canada"].legal_basis
    states = ("CA", "CT", "DE", "FL", "IL", "MD", "MA", "MI", "MT", "NV", "NH", "OR", "PA", "WA")
    assert all(f"{state} " in scripts["us-all-party"].legal_basis for state in states)
    # The default line, read as "us-one-party", hears what it heard before jurisdictions.
    assert scripts["us-one-party"].disclosure == SipSettings().disclosure


def test_configured_scripts_are_the_lines_own_then_those_a_number_can_suggest(
    settings: Settings,
) -> None:
    default = configured_scripts(settings)
    assert [s.jurisdiction for s in default] == [
        "configured", "us-all-party", "canada", "uk", "eu-gdpr",
    ]  # fmt: skip
    own = default[0]
    assert (own.disclosure, own.stored_version) == (
        settings.sip.disclosure,
        f"configured/{settings.sip.disclosure_version}",
    )
    line = configured_scripts(with_sip(settings, jurisdiction="us-one-party"))
    assert [s.jurisdiction for s in line][:2] == ["us-one-party", "us-all-party"]
    assert missing_scripts(settings) == []


def test_missing_scripts_name_the_jurisdictions_and_the_line_will_not_start_without_them(
    settings: Settings, tmp_path: Path
) -> None:
    folder = tmp_path / "consent"
    folder.mkdir()
    shutil.copy(DEFAULT_CONSENT_FOLDER / "us-one-party.en.toml", folder)
    shutil.copy(DEFAULT_CONSENT_FOLDER / "uk.en.toml", folder)
    partial = with_sip(settings, jurisdiction="texas", consent_folder=str(folder))
    assert missing_scripts(partial) == ["texas", "us-all-party", "canada", "eu-gdpr"]
    with pytest.raises(ConfigError, match=r"no en script for texas, us-all-party, canada, eu-g"):
        LineScripts.load(partial)
    nowhere = with_sip(settings, consent_folder=str(tmp_path / "absent"))
    assert missing_scripts(nowhere) == ["us-all-party", "canada", "uk", "eu-gdpr"]


GOOD = (DEFAULT_CONSENT_FOLDER / "us-all-party.en.toml").read_text()


@pytest.mark.parametrize(
    ("edit", "field", "rule"),
    [
        (lambda t: t.replace("consent_required = true\n", ""), "consent_required", "missing"),
        (lambda t: t.replace("consent_required = true", 'consent_required = "yes"'),
         "consent_required", "must be a boolean"),
        (lambda t: t.replace('version = "2026-12-en-1"', "version = 3"),
         "version", "must be a string"),
        (lambda t: t + 'voice = "joe"\n', "voice", "unknown field"),
        (lambda t: t.replace('language = "en"', 'language = "fr"'),
         "jurisdiction", "name the file us-all-party.fr.toml"),
        (lambda t: t.replace(
            "You are speaking with an automated assistant.", "Thank you for calling."),
         "disclosure", "automated assistant"),
        (lambda t: re.sub(r'legal_basis = ".*"', 'legal_basis = "  "', t),
         "legal_basis", "must not be empty"),
        (lambda t: t.replace('version = "2026-12-en-1"', f'version = "{"9" * 60}"'),
         "version", "at most 64"),
    ],
)  # fmt: skip
def test_a_malformed_script_is_a_configuration_error_naming_the_file_and_field(
    tmp_path: Path, edit: object, field: str, rule: str
) -> None:
    assert callable(edit)
    path = tmp_path / "us-all-party.en.toml"
    path.write_text(edit(GOOD))
    with pytest.raises(ConfigError) as caught:
        load_script(path)
    assert caught.value.code == "config.consent_script"
    assert caught.value.message.startswith(f"{path}: {field}: "), caught.value.message
    assert rule in caught.value.message


def test_a_script_that_is_not_toml_names_its_file(settings: Settings, tmp_path: Path) -> None:
    (tmp_path / "uk.en.toml").write_text("disclosure = ")
    with pytest.raises(ConfigError, match=rf"{tmp_path / 'uk.en.toml'}: ") as caught:
        LineScripts.load(with_sip(settings, consent_folder=str(tmp_path)))
    assert caught.value.code == "config.consent_script"


@pytest.mark.parametrize(
    ("line", "consent_required", "number", "heard"),
    [
        ("us-one-party", False, "+14155550142", "us-all-party"),  # California: asked
        ("us-one-party", False, "+12125550142", "us-one-party"),  # New York: the line's
        ("us-all-party", False, "+12125550142", "us-all-party"),  # never laxer
        ("us-one-party", False, "+442079460000", "us-one-party"),  # UK notice only: a tie
        ("uk", False, "+4930123456", "eu-gdpr"),
        ("", False, "+14165550142", "canada"),  # the [sip] texts, made stricter
        ("", True, "+14155550142", "configured"),  # the [sip] texts already ask
        ("us-one-party", False, None, "us-one-party"),  # no caller ID
    ],
)
def test_a_call_is_under_the_strictest_of_the_lines_and_its_numbers_script(
    settings: Settings, line: str, consent_required: bool, number: str | None, heard: str
) -> None:
    scripts = LineScripts.load(
        with_sip(settings, jurisdiction=line, consent_required=consent_required)
    )
    assert scripts.for_caller(number).jurisdiction == heard


@pytest.mark.parametrize(
    "disclosure",
    ["", "   ", "Hello, this call is recorded.", "Thank you for calling, said the agent."],
)
def test_a_disclosure_that_does_not_say_automated_assistant_is_refused(disclosure: str) -> None:
    with pytest.raises(ConfigError, match=r"sip\.disclosure"):
        SipSettings(disclosure=disclosure)


@pytest.mark.parametrize(
    "disclosure",
    ["You are speaking with an AI.", "This is a virtual assistant.", "AN AUTOMATED SERVICE."],
)
def test_a_disclosure_that_says_so_is_taken(disclosure: str) -> None:
    assert SipSettings(disclosure=disclosure).disclosure == disclosure


@pytest.mark.parametrize("jurisdiction", ["configured", "US One", "us_one", "-uk"])
def test_the_jurisdiction_is_a_script_id(jurisdiction: str) -> None:
    with pytest.raises(ConfigError, match=r"sip\.jurisdiction"):
        SipSettings(jurisdiction=jurisdiction)


@pytest.mark.parametrize("version", ["", "9" * 54])
def test_the_configured_version_fits_the_stored_column(version: str) -> None:
    with pytest.raises(ConfigError, match=r"sip\.disclosure_version"):
        SipSettings(disclosure_version=version)


def test_the_folder_defaults_to_config_consent_and_is_set_in_the_file(
    tmp_path: Path, home: Path
) -> None:
    assert SipSettings().consent_folder_path == DEFAULT_CONSENT_FOLDER
    config = tmp_path / "appliance.toml"
    config.write_text(f'[sip]\njurisdiction = "uk"\nconsent_folder = "{tmp_path}"\n')
    loaded = load_settings(config, environ={"APPLIANCE_HOME": str(home)})
    assert (loaded.sip.jurisdiction, loaded.sip.consent_folder_path) == ("uk", tmp_path)
