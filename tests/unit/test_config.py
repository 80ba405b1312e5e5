from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from appliance.config.manifest import load_manifest, model_spec
from appliance.config.settings import (
    DEFAULT_CONFIG_FILE,
    DEFAULT_MANIFEST_FILE,
    Settings,
    load_settings,
)
from appliance.core.errors import ConfigError


def test_shipped_file_matches_the_built_in_defaults(tmp_path: Path) -> None:
    env = {"APPLIANCE_HOME": str(tmp_path)}
    from_file = load_settings(DEFAULT_CONFIG_FILE, environ=env)
    builtin = Settings(home=tmp_path)
    from appliance.config.settings import SECTIONS

    for section in SECTIONS:
        assert getattr(from_file, section) == getattr(builtin, section), section


def test_settings_are_frozen(settings: Settings) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.stt.model = "other"  # type: ignore[misc]


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    config = tmp_path / "a.toml"
    config.write_text('[stt]\nmodel = "whisper-base"\n[endpointing]\nsilence_timeout_ms = 900\n')
    settings = load_settings(
        config,
        environ={
            "APPLIANCE_STT__MODEL": "whisper-tiny-en",
            "APPLIANCE_ENDPOINTING__BARGE_IN": "false",
            "APPLIANCE_LLM__TEMPERATURE": "0.5",
            "APPLIANCE_HOME": str(tmp_path / "state"),
        },
    )
    assert settings.stt.model == "whisper-tiny-en"
    assert settings.endpointing.silence_timeout_ms == 900
    assert settings.endpointing.barge_in is False
    assert settings.llm.temperature == 0.5
    assert settings.home == tmp_path / "state"
    assert settings.source == str(config)


def test_config_file_from_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "b.toml"
    config.write_text("[audio]\nframe_ms = 30\n")
    assert load_settings(environ={"APPLIANCE_CONFIG": str(config)}).audio.frame_ms == 30


@pytest.mark.parametrize(
    ("text", "env", "code", "names"),
    [
        ("[audio]\nframe_ms = 25\n", {}, "config.invalid", "audio.frame_ms"),
        ("[audio]\nframe_ms = 'twenty'\n", {}, "config.type", "audio.frame_ms"),
        ("[stt]\nmodle = 'x'\n", {}, "config.unknown_key", "modle"),
        ("[sst]\nmodel = 'x'\n", {}, "config.unknown_section", "sst"),
        ("[stt\nmodel = 'x'\n", {}, "config.syntax", "b.toml"),
        ("", {"APPLIANCE_LLM__TEMPERATURE": "hot"}, "config.type", "llm.temperature"),
        ("", {"APPLIANCE_LLM__TEMPERATURE": "9"}, "config.invalid", "llm.temperature"),
        ("", {"APPLIANCE_NOPE__X": "1"}, "config.unknown_section", "APPLIANCE_NOPE__X"),
        (
            "[endpointing]\nspeculate_after_ms = 700\n",
            {},
            "config.invalid",
            "speculate_after_ms",
        ),
        (
            "[transfer]\ndestinations = ['tel:+15550199']\n",
            {},
            "config.invalid",
            "transfer.destinations",
        ),
        (
            "[transfer]\ndestinations = ['desk@10.0.0.5']\n",
            {},
            "config.invalid",
            "transfer.destinations",
        ),
        (
            "",
            {"APPLIANCE_TRANSFER__DESTINATIONS": "sip:a b@x"},
            "config.invalid",
            "transfer.destinations",
        ),
        (  # sips: is a destination (test_transfer_destinations_are_sip_uris...), not one hostless
            "[transfer]\ndestinations = ['sip:desk@10.0.0.5', 'sips:queue@']\n",
            {},
            "config.invalid",
            "transfer.destinations",
        ),
        (
            "",
            {"APPLIANCE_TRANSFER__DESTINATIONS": "sips:"},
            "config.invalid",
            "transfer.destinations: 'sips:'",
        ),
        ("[transfer]\nmode = 'cold'\n", {}, "config.invalid", "transfer.mode"),
        (
            "[transfer]\nmode = 'warm'\ndestinations = ['sip:desk@pbx.example']\n",
            {},
            "config.invalid",
            "no DNS lookups",
        ),
        ("[transfer]\nbriefing = 'For {caller}'\n", {}, "config.invalid", "transfer.briefing"),
        ("[transfer]\nring_timeout_s = 0\n", {}, "config.invalid", "transfer.ring_timeout_s"),
        ("[transfer]\nring = 5\n", {}, "config.unknown_key", "ring"),
        ("[service]\nredteam_gate = 'off'\n", {}, "config.invalid", "service.redteam_gate"),
        ("", {"APPLIANCE_SERVICE__REDTEAM_GATE": "ignore"}, "config.invalid", '"warn"'),
        (
            "[service]\nmetrics_listen = '127.0.0.1:9464'\n",
            {},
            "config.invalid",
            "service.metrics_token_file",
        ),
        (
            "[service]\nmetrics_listen = '9464'\nmetrics_token_file = 't'\n",
            {},
            "config.invalid",
            "service.metrics_listen",
        ),
        (
            "[service]\nmetrics_tls_cert = 'c.pem'\n",
            {},
            "config.invalid",
            "service.metrics_tls_key",
        ),
    ],
)
def test_bad_settings_are_refused_with_the_key(
    tmp_path: Path, text: str, env: dict[str, str], code: str, names: str
) -> None:
    config = tmp_path / "b.toml"
    config.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(config, environ=env)
    assert caught.value.code == code
    assert names in str(caught.value)


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config.missing.*nope.toml"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_home_defaults_to_the_checkout_state_folder() -> None:
    settings = load_settings(environ={})
    assert settings.home.name == ".appliance"


def test_every_manifest_model_is_pinned_and_defaults_are_in_it(settings: Settings) -> None:
    manifest = load_manifest(settings.models.manifest_path)
    assert {"whisper-base", "whisper-tiny-en", "smollm2-135m", "piper-joe-medium"} <= set(manifest)
    for entry in manifest.values():
        assert entry.files and all(len(sha) == 64 for sha in entry.files.values())
    assert {manifest[settings.stt.model].role, manifest[settings.llm.model].role} == {"stt", "llm"}


def test_a_configured_path_replaces_the_default_source(settings: Settings, tmp_path: Path) -> None:
    custom = dataclasses.replace(
        settings, llm=dataclasses.replace(settings.llm, path=str(tmp_path / "m.gguf"))
    )
    assert model_spec(custom, "llm").path == tmp_path / "m.gguf"


def test_unknown_or_mismatched_model_names_are_refused(settings: Settings) -> None:
    wrong = dataclasses.replace(
        settings, stt=dataclasses.replace(settings.stt, model="smollm2-135m")
    )
    with pytest.raises(ConfigError, match=r"config\.model_role"):
        model_spec(wrong, "stt")
    unknown = dataclasses.replace(settings, tts=dataclasses.replace(settings.tts, model="nobody"))
    with pytest.raises(ConfigError, match=r"config\.model_unknown"):
        model_spec(unknown, "tts")


def test_the_documented_configuration_shows_every_default() -> None:
    """config/appliance.toml documents each key with its default: loading it changes nothing,
    and every section and key of the settings appears in it."""
    import tomllib

    from appliance.config.settings import DEFAULT_CONFIG_FILE, SECTIONS, Settings, load_settings

    documented = load_settings(DEFAULT_CONFIG_FILE, environ={})
    defaults = Settings(home=documented.home)
    for name in SECTIONS:
        assert getattr(documented, name) == getattr(defaults, name), name
    data = tomllib.loads(DEFAULT_CONFIG_FILE.read_text(encoding="utf-8"))
    for name, cls in SECTIONS.items():
        missing = {f.name for f in dataclasses.fields(cls)} - set(data.get(name, {}))
        assert not missing, f"[{name}] does not document {sorted(missing)}"


def test_models_install_brings_a_configured_model_that_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Setup runs `appliance models install`: a configured model that setup's defaults did
    not bring gets its packages (pip, here recorded), the others are left as they are."""
    import argparse

    import appliance.config.manifest as manifest_module
    from appliance.cli.models import install_models

    manifest = tmp_path / "manifest.toml"
    manifest.write_text(
        DEFAULT_MANIFEST_FILE.read_text()
        + '\n[models.absent-llm]\nrole = "llm"\nlicence = "test"\n'
        'source = "package:absent_llm_package/model.gguf"\npackages = ["absent-llm==1.0"]\n'
        '[models.absent-llm.files]\n"model.gguf" = "' + "0" * 64 + '"\n'
    )
    asked: list[str] = []
    monkeypatch.setattr(manifest_module, "install_packages", lambda e: asked.append(e.name))
    env = {
        "APPLIANCE_HOME": str(tmp_path),
        "APPLIANCE_MODELS__MANIFEST": str(manifest),
        "APPLIANCE_LLM__MODEL": "absent-llm",
    }
    settings = load_settings(None, environ=env)
    assert install_models(argparse.Namespace(name=None), settings) == 1  # still missing
    assert asked == ["absent-llm"]


def test_transfer_destinations_are_sip_uris_tried_in_order(tmp_path: Path) -> None:
    config = tmp_path / "t.toml"
    config.write_text(
        "[transfer]\ndestinations = ['sip:desk@10.0.0.5', 'sips:queue@pbx.example;transport=tls']\n"
    )
    settings = load_settings(config, environ={})
    assert settings.transfer.destinations == (
        "sip:desk@10.0.0.5",
        "sips:queue@pbx.example;transport=tls",
    )
    assert settings.transfer.mode == "blind"
