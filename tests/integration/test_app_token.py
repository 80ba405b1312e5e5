"""The organization's app session token (a JWT in a header of the INVITE) as a possession
factor: real tokens signed with PyJWT and real keys, checked against the store's used ids,
and one call on the SIP line in-process (a Python phone whose INVITE carries the header, the
UA, the line, the tool dialogue, the audit trail)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import json
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from sqlalchemy import select

from appliance.config.settings import (
    AppTokenSettings,
    CredentialSource,
    Settings,
    ToolsSettings,
)
from appliance.core.errors import ConfigError
from appliance.deploy.line import SipLine
from appliance.identity.app_token import AppTokens
from appliance.identity.factors import FactorError
from appliance.service import VoiceService, open_storage
from appliance.storage.repository import Storage
from appliance.storage.schema import AuditEvent
from appliance.telephony.sip import SipMessage
from tests.integration.test_sip_ua import until
from tests.integration.test_transfer import CALLER, Phone, make_service, spoken, turn_over

ISSUER, AUDIENCE = "https://app.bank.example", "voice-appliance"


def pem(key: Any) -> bytes:
    return key.public_key().public_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture
def signer(tmp_path: Path) -> ed25519.Ed25519PrivateKey:
    key = ed25519.Ed25519PrivateKey.generate()
    (tmp_path / "app.pub").write_bytes(pem(key))
    return key


def token_settings(tmp_path: Path, **changes: Any) -> AppTokenSettings:
    values: dict[str, Any] = {
        "public_key_file": str(tmp_path / "app.pub"),
        "issuer": ISSUER,
        "audience": AUDIENCE,
    }
    return AppTokenSettings(**{**values, **changes})


def token(key: Any, algorithm: str = "EdDSA", **claims: Any) -> str:
    now = int(time.time())
    body = {
        "iss": ISSUER, "aud": AUDIENCE, "sub": CALLER, "iat": now, "exp": now + 120,
        "jti": uuid.uuid4().hex, **claims,
    }  # fmt: skip
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm=algorithm)


def refusal(tokens: AppTokens, text: str, caller: str = CALLER) -> str:
    try:
        tokens.verify(text, caller)
    except FactorError as exc:
        return exc.code
    return ""


def test_a_token_counts_once_even_after_a_restart(
    tmp_path: Path, signer: ed25519.Ed25519PrivateKey, store: Storage
) -> None:
    settings = token_settings(tmp_path)
    good = token(signer)
    assert refusal(AppTokens(settings, store), good) == ""
    assert refusal(AppTokens(settings, store), good) == "identity.token_reused"  # a new process
    assert refusal(AppTokens(settings), token(signer)) == ""  # without a store: in memory


@pytest.mark.parametrize(
    ("claims", "code"),
    [
        ({"exp": int(time.time()) - 300, "iat": int(time.time()) - 400}, "identity.token_expired"),
        ({"aud": "another-service"}, "identity.token_claims"),
        ({"iss": "https://evil.example"}, "identity.token_claims"),
        ({"jti": None}, "identity.token_claims"),
        ({"sub": None}, "identity.token_claims"),
        ({"iat": int(time.time()) + 3600, "exp": int(time.time()) + 3700}, "identity.token_claims"),
        ({"exp": int(time.time()) + 7200}, "identity.token_lifetime"),
        ({"sub": "+15550199"}, "identity.token_caller"),
    ],
)
def test_a_token_with_wrong_claims_is_refused_with_its_code(
    tmp_path: Path, signer: ed25519.Ed25519PrivateKey, claims: dict[str, Any], code: str
) -> None:
    assert refusal(AppTokens(token_settings(tmp_path)), token(signer, **claims)) == code


def test_only_the_configured_key_and_its_one_algorithm_verify(
    tmp_path: Path, signer: ed25519.Ed25519PrivateKey
) -> None:
    tokens = AppTokens(token_settings(tmp_path))
    stranger = ed25519.Ed25519PrivateKey.generate()
    assert refusal(tokens, token(stranger)) == "identity.token_invalid"
    # alg "none", and HS256 keyed with the public key itself (the algorithm-confusion attack):
    unsigned = jwt.encode({"sub": CALLER}, None, algorithm="none")  # type: ignore[arg-type]
    assert refusal(tokens, unsigned) == "identity.token_invalid"
    header = jwt.utils.base64url_encode(b'{"alg":"HS256","typ":"JWT"}')
    now = int(time.time())
    payload = jwt.utils.base64url_encode(
        json.dumps(
            {
                "iss": ISSUER,
                "aud": AUDIENCE,
                "sub": CALLER,
                "iat": now,
                "exp": now + 60,
                "jti": "x",
            }
        ).encode()
    )
    signing = header + b"." + payload
    mac = hmac.new(pem(signer), signing, hashlib.sha256).digest()
    confused = (signing + b"." + jwt.utils.base64url_encode(mac)).decode()
    assert refusal(tokens, confused) == "identity.token_invalid"
    assert refusal(tokens, "not a token") == "identity.token_invalid"


def test_p256_keys_verify_es256_and_weak_or_unreadable_keys_are_configuration_errors(
    tmp_path: Path,
) -> None:
    p256 = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "app.pub").write_bytes(pem(p256))
    assert refusal(AppTokens(token_settings(tmp_path)), token(p256, "ES256")) == ""
    (tmp_path / "app.pub").write_bytes(pem(rsa.generate_private_key(65537, 1024)))
    with pytest.raises(ConfigError, match=r"app_token\.public_key_file: .*\(2048 bits or more\)"):
        AppTokens(token_settings(tmp_path))
    (tmp_path / "app.pub").write_text("garbage")
    with pytest.raises(ConfigError, match=r"app_token\.public_key_file: .* not a PEM"):
        AppTokens(token_settings(tmp_path))
    with pytest.raises(ConfigError, match=r"app_token\.public_key_file: cannot read"):
        AppTokens(token_settings(tmp_path, public_key_file=str(tmp_path / "missing.pub")))
    with pytest.raises(ConfigError, match=r"app_token\.issuer"):
        token_settings(tmp_path, issuer="")


# -- a call from the app, on the SIP line ---------------------------------------------------------


class AppPhone(Phone):
    """A phone behind the organization's gateway: its INVITE carries the app's token."""

    def __init__(self, app_token: str) -> None:
        super().__init__()
        self.app_token = app_token

    def send(self, message: SipMessage | bytes, port: int) -> None:
        data = message if isinstance(message, bytes) else message.encode()
        if data.startswith(b"INVITE ") and self.app_token:
            first, _, rest = data.partition(b"\r\n")
            data = first + f"\r\nX-App-Token: {self.app_token}\r\n".encode() + rest
        super().send(data, port)


def app_service(settings: Settings, tmp_path: Path, texts: list[str]) -> VoiceService:
    service = make_service(settings, texts)
    tools = ToolsSettings(
        enabled=("account_balance", "transfer_to_human"), credentials=CredentialSource.DEMO
    )
    service.settings = dataclasses.replace(
        service.settings, tools=tools, app_token=token_settings(tmp_path)
    )
    return service


def call_from_app(service: VoiceService, store: Storage, app_token: str) -> None:
    async def main() -> None:
        line = SipLine(service.settings, service, store)
        await line.ua.start()
        phone = AppPhone(app_token)
        try:
            await phone.call(line.ua.port)
            await until(lambda: bool(service.active), 20)
            phone.say()
            await until(turn_over(service, "step_up.pin"), 30)
            phone.say()  # the PIN (the transcriber "hears" it)
            await until(lambda: len(replies(service)) >= 2, 30)
            phone.cseq += 1
            phone.send(phone._in_dialog("BYE", phone.cseq), line.ua.port)
            await until(lambda: not service.active, 20)
        finally:
            phone.close()
            line.ua.close()
            await asyncio.sleep(0.1)

    asyncio.run(asyncio.wait_for(main(), 90))


def replies(service: VoiceService) -> list[str]:
    """What the agent said after the disclosure."""
    return [s for s in spoken(service) if s != service.settings.sip.disclosure]


def app_events(store: Storage) -> list[tuple[str, str]]:
    with store.session("look") as db:
        rows = db.scalars(select(AuditEvent).order_by(AuditEvent.seq)).all()
        return [(r.outcome, r.details or "") for r in rows if r.action == "app_token"]


def test_a_call_from_the_app_reaches_level_2_with_its_token_and_a_pin(
    settings: Settings, tmp_path: Path, signer: ed25519.Ed25519PrivateKey
) -> None:
    texts = ["What's my account balance?", "four nine two one"]
    service = app_service(settings, tmp_path, texts)
    store = open_storage(service.settings)
    good = token(signer)
    try:
        call_from_app(service, store, good)
        tools = service.settings.tools
        # No authenticator code was asked: the token and the PIN are two factors, one possession.
        assert replies(service)[0] == tools.pin_prompt
        assert replies(service)[1].startswith("Your current account balance is")
        assert app_events(store) == [("ok", "{}")]
        # The same token again (a replay): refused, audited by its code, and the caller is
        # asked for the authenticator code as anyone would be.
        again = app_service(settings, tmp_path, texts)
        call_from_app(again, store, good)
        assert replies(again)[:2] == [tools.pin_prompt, tools.totp_prompt]
        (_, refused) = app_events(store)
        assert refused[0] == "refused" and "identity.token_reused" in refused[1]
        with store.session("look") as db:
            logged = " ".join(
                f"{e.actor} {e.object} {e.details}" for e in db.scalars(select(AuditEvent))
            )
        assert good not in logged and good.split(".")[1] not in logged
    finally:
        store.close()


def test_without_a_token_or_with_app_tokens_off_the_header_counts_for_nothing(
    settings: Settings, tmp_path: Path, signer: ed25519.Ed25519PrivateKey
) -> None:
    texts = ["What's my account balance?", "four nine two one"]
    store = open_storage(settings)
    try:
        plain = app_service(settings, tmp_path, texts)
        call_from_app(plain, store, "")
        assert replies(plain)[1] == plain.settings.tools.totp_prompt
        off = app_service(settings, tmp_path, texts)
        off.settings = dataclasses.replace(off.settings, app_token=AppTokenSettings())
        call_from_app(off, store, token(signer))
        assert replies(off)[1] == off.settings.tools.totp_prompt
        assert app_events(store) == []
    finally:
        store.close()


def test_an_unusable_key_stops_the_service_at_load_before_any_model(
    settings: Settings, tmp_path: Path
) -> None:
    (tmp_path / "app.pub").write_text("not a key")
    broken = dataclasses.replace(settings, app_token=token_settings(tmp_path))
    with pytest.raises(ConfigError, match=r"app_token\.public_key_file"):
        VoiceService.load(broken)  # raised before Whisper, the model or Piper is touched
