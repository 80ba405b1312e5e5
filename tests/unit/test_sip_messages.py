"""The SIP parser, SDP and the RTP depacketizer: well-formed input, torture cases in the
spirit of RFC 4475, and hypothesis fuzzing (only the module's own error, never a crash)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.telephony import sdp
from appliance.telephony.rtp import (
    JitterBuffer,
    RtpError,
    RtpPacket,
    event_payload,
    parse_event,
    parse_packet,
)
from appliance.telephony.sip import SipParseError, parse, response, user_of

INVITE = (
    b"INVITE sip:appliance@127.0.0.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK776asdhds\r\n"
    b"Max-Forwards: 70\r\n"
    b'From: "Alice" <sip:+15550100@127.0.0.1>;tag=1928301774\r\n'
    b"To: <sip:appliance@127.0.0.1>\r\n"
    b"Call-ID: a84b4c76e66710@127.0.0.1\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@127.0.0.1:5061>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 129\r\n\r\n"
    b"v=0\r\no=a 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 49170 RTP/AVP 8 0 101\r\na=rtpmap:101 telephone-event/8000\r\n"
)


def test_a_well_formed_invite_and_its_response() -> None:
    message = parse(INVITE)
    assert (message.method, message.call_id, message.cseq) == (
        "INVITE",
        "a84b4c76e66710@127.0.0.1",
        (314159, "INVITE"),
    )
    assert message.branch == "z9hG4bK776asdhds" and message.tag("from") == "1928301774"
    assert user_of(message.get("from")) == "+15550100"
    reply = parse(response(message, 180, to_tag="abc").encode())
    assert reply.status == 180 and reply.tag("to") == "abc" and reply.call_id == message.call_id
    offer = sdp.parse_offer(message.body)
    assert (offer.port, offer.payloads, offer.telephone_event) == (49170, (8, 0, 101), 101)
    assert sdp.choose_codec(offer) == sdp.PCMA  # the offer's order wins


@pytest.mark.parametrize(
    ("find", "superscript"),
    [
        (b"Max-Forwards: 70", b"Max-Forwards: \xc2\xb2"),
        (b"Content-Length: 129", b"Content-Length: \xc2\xb2"),
    ],
)
def test_digits_that_int_refuses_are_a_parse_error_not_a_crash(
    find: bytes, superscript: bytes
) -> None:
    """ "²" is a digit to str.isdigit() but not to int(): found by the API's property test."""
    with pytest.raises(SipParseError):
        parse(INVITE.replace(find, superscript))
    with pytest.raises(sdp.SdpError):
        sdp.parse_offer(parse(INVITE).body.replace(b"49170", "4917²".encode()))
    with pytest.raises(sdp.SdpError):
        sdp.parse_offer(parse(INVITE).body.replace(b" 101\r\n", " 10²\r\n".encode()))


def test_compact_headers_folding_and_case_are_understood() -> None:
    message = parse(
        b"OPTIONS sip:a@b SIP/2.0\r\nv: SIP/2.0/UDP h;branch=z9hG4bKx\r\n"
        b"f: <sip:x@y>;tag=1\r\nT: <sip:a@b>\r\ni: abc\r\nCSEQ: 1\r\n OPTIONS\r\nl: 0\r\n\r\n"
    )
    assert message.call_id == "abc" and message.cseq == (1, "OPTIONS")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"INVITE sip:a@b SIP/2.0\r\n",  # no end of headers
        b"INVITE sip:a@b SIP/3.0\r\nVia: x\r\n\r\n",  # unknown version
        b"INVITE  sip:a@b SIP/2.0\r\n\r\n",  # two spaces in the request line
        b"SIP/2.0 999 Huh\r\n\r\n",  # status out of range
        INVITE.replace(b"Call-ID: a84b4c76e66710@127.0.0.1\r\n", b""),  # missing Call-ID
        INVITE.replace(b"CSeq: 314159 INVITE", b"CSeq: -1 INVITE"),  # negative CSeq
        INVITE.replace(b"CSeq: 314159 INVITE", b"CSeq: 9999999999 INVITE"),  # over 2**31
        INVITE.replace(b"CSeq: 314159 INVITE", b"CSeq: 314159 BYE"),  # method mismatch
        INVITE.replace(b"Content-Length: 129", b"Content-Length: 9999"),  # body too short
        INVITE.replace(b"Content-Length: 129", b"Content-Length: -5"),
        INVITE.replace(b"Max-Forwards: 70", b"Max Forwards: 70"),  # space in a header name
        INVITE.replace(b"From:", b"From\xff:"),  # not UTF-8
        b"INVITE sip:a@b SIP/2.0\r\n lead: continuation\r\n\r\n",
        b"X" * 70_000,
    ],
)
def test_torture_messages_are_refused_with_the_parse_error(data: bytes) -> None:
    with pytest.raises(SipParseError):
        parse(data)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_crash_the_parser(data: bytes) -> None:
    with contextlib.suppress(SipParseError):
        parse(data)


@settings(max_examples=400, deadline=None)
@given(st.integers(0, len(INVITE) - 1), st.binary(min_size=1, max_size=8))
def test_mutated_invites_never_crash_the_parser_or_sdp(at: int, noise: bytes) -> None:
    data = INVITE[:at] + noise + INVITE[at + len(noise) :]
    try:
        message = parse(data)
        sdp.parse_offer(message.body)
    except (SipParseError, sdp.SdpError):
        pass


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_crash_the_rtp_depacketizer(data: bytes) -> None:
    try:
        packet = parse_packet(data)
        parse_event(packet.payload)
    except RtpError:
        pass


def test_rtp_round_trip_and_telephone_events() -> None:
    packet = RtpPacket(0, 65535, 160, 0xDEADBEEF, b"\xff" * 160, marker=True)
    assert parse_packet(packet.encode()) == packet
    event = parse_event(event_payload("#", end=True, duration=800))
    assert (event.digit, event.end, event.duration) == ("#", True, 800)
    with pytest.raises(RtpError):
        parse_packet(b"\x40" + bytes(20))  # version 1


def test_the_jitter_buffer_reorders_waits_for_a_gap_then_skips_it_and_drops_late_packets() -> None:
    buffer = JitterBuffer(depth=3)
    for sequence in (65534, 0, 65535, 2):  # out of order, across the wrap; 1 is missing
        buffer.push(sequence, bytes([sequence % 256]))
    assert [buffer.pop() for _ in range(3)] == [b"\xfe", b"\xff", b"\x00"]
    assert buffer.pop() is None  # 1 may still come: wait while fewer than 3 wait behind it
    buffer.push(3, b"\x03")
    buffer.push(4, b"\x04")
    assert buffer.pop() is None and buffer.lost == 1  # now the gap is played as silence
    buffer.push(1, b"late")  # its slot was played
    assert buffer.late == 1
    assert [buffer.pop() for _ in range(3)] == [b"\x02", b"\x03", b"\x04"]


def test_srtp_key_derivation_matches_rfc_3711_b3() -> None:
    from appliance.telephony.srtp import derive

    key = bytes.fromhex("E1F97A0D3E018BE0D64FA32C06DE4139")
    salt = bytes.fromhex("0EC675AD498AFEEBB6960B3AABE6")
    assert derive(key, salt, 0x00, 16).hex().upper() == "C61E7A93744F39EE10734AFE3FF7A087"
    assert derive(key, salt, 0x02, 14).hex().upper() == "30CBBC08863D8C85D49DB34A9AE1"
    assert derive(key, salt, 0x01, 20).hex().upper() == ("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4")


def test_srtp_round_trip_rejects_tampering_and_replay_and_survives_the_wrap() -> None:
    from appliance.telephony.srtp import SrtpContext, SrtpError, parse_crypto

    sender = SrtpContext.new()
    receiver = SrtpContext(sender.master_key, sender.master_salt)
    for sequence in (65534, 65535, 0, 1):  # across the roll-over
        packet = RtpPacket(0, sequence, 160 * sequence, 7, bytes(range(160))).encode()
        protected = sender.protect(packet)
        assert protected[12:172] != packet[12:]  # the payload is encrypted
        assert receiver.unprotect(protected) == packet
    with pytest.raises(SrtpError, match="replayed"):
        receiver.unprotect(protected)
    forged = bytearray(sender.protect(RtpPacket(0, 2, 320, 7, bytes(160)).encode()))
    forged[20] ^= 1
    with pytest.raises(SrtpError, match="authentication"):
        receiver.unprotect(bytes(forged))
    offer = f"m=audio 1 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{sender.inline}\r\n"
    parsed = parse_crypto(offer)
    assert parsed is not None and parsed[0] == "1" and parsed[1].master_key == sender.master_key


def dtmf_tone(key: str, ms: int = 80, amplitude: float = 6000.0) -> np.ndarray:
    from appliance.telephony.dtmf import COLUMNS, KEYS, ROWS

    row = next(r for r, keys in enumerate(KEYS) if key in keys)
    t = np.arange(8 * ms) / 8000
    return amplitude * (
        np.sin(2 * np.pi * ROWS[row] * t) + np.sin(2 * np.pi * COLUMNS[KEYS[row].index(key)] * t)
    )


def detect(signal: np.ndarray) -> list[str]:
    from appliance.telephony.dtmf import InbandDetector

    detector = InbandDetector()
    keys = [detector.feed(signal[i : i + 160]) for i in range(0, len(signal) - 159, 160)]
    return [k for k in keys if k]


def test_inband_dtmf_is_heard_in_order_through_noise_and_g711() -> None:
    from appliance.telephony.g711 import ulaw_decode, ulaw_encode

    rng = np.random.default_rng(4733)
    gap = np.zeros(480)
    signal = np.concatenate([gap] + [np.concatenate([dtmf_tone(k), gap]) for k in "159#0*D"])
    signal += rng.normal(0, 300, len(signal))
    through = ulaw_decode(ulaw_encode(np.clip(signal, -32768, 32767).astype(np.int16)))
    assert detect(through) == list("159#0*D")


def test_noise_sweeps_and_vowels_are_not_keys() -> None:
    rng = np.random.default_rng(1)
    t = np.arange(8000 * 3) / 8000
    sweep = 8000 * np.sin(2 * np.pi * (300 * t + 400 * t * t))
    vowel = sum(3000 / h * np.sin(2 * np.pi * 140 * h * t) for h in range(1, 25))
    for signal in (rng.normal(0, 4000, len(t)), sweep, vowel):
        assert detect(np.asarray(signal)) == []
    assert detect(dtmf_tone("5", ms=20)) == []  # one frame is too short for a key press


def test_digest_answers_made_by_the_client_side_pass_the_server_side_once_and_only_there() -> None:
    from appliance.telephony.digest import (
        DigestAuthority,
        Verdict,
        authorization,
        ha1,
        parse_challenge,
    )

    now = [1000.0]
    authority = DigestAuthority("appliance", {"trunk1": ha1("trunk1", "appliance", "s3cret")},
                                lifetime_s=300, clock=lambda: now[0])  # fmt: skip
    uri = "sip:appliance@192.0.2.1:5060"

    def answer(password: str, host: str = "198.51.100.7", nc: int = 1) -> str:
        challenge = parse_challenge(authority.challenge(host))
        return authorization(challenge, "INVITE", uri, "trunk1", password, nc)

    assert authority.verify("", "INVITE", uri, "198.51.100.7").challenge  # no credentials yet
    good = answer("s3cret")
    assert authority.verify(good, "INVITE", uri, "198.51.100.7").user == "trunk1"
    assert not authority.verify(good, "INVITE", uri, "198.51.100.7").user  # replayed
    # A wrong password: refused, not challenged again.
    assert authority.verify(answer("guess"), "INVITE", uri, "198.51.100.7") == Verdict()
    # A nonce issued to another address is not honoured here: challenged afresh.
    elsewhere = answer("s3cret", host="203.0.113.9")
    assert authority.verify(elsewhere, "INVITE", uri, "198.51.100.7") == Verdict(challenge=True)
    # Signed for another method or another server: refused.
    assert not authority.verify(answer("s3cret"), "BYE", uri, "198.51.100.7").user
    assert not authority.verify(answer("s3cret"), "INVITE", "sip:x@192.0.2.2", "198.51.100.7").user
    # A right answer on an expired nonce: stale, so the peer retries without asking anyone.
    late = answer("s3cret")
    now[0] += 301
    verdict = authority.verify(late, "INVITE", uri, "198.51.100.7")
    assert verdict.challenge and verdict.stale and not verdict.user
    assert "stale=true" in authority.challenge("198.51.100.7", stale=True)
    # Garbage is a fresh challenge, never an exception.
    odd = 'Digest username="trunk1", nonce="\u00e9.\u00e9", response="\u00e9"'
    assert authority.verify(odd, "INVITE", uri, "198.51.100.7") == Verdict(challenge=True)


def test_the_accounts_file_is_htdigest_owner_only_and_checked(tmp_path: Path) -> None:
    from appliance.telephony.digest import DigestError, ha1, read_accounts

    file = tmp_path / "accounts"
    file.write_text(
        f"# trunks\ntrunk1:appliance:{ha1('trunk1', 'appliance', 'a')}\n"
        f"other:elsewhere:{ha1('other', 'elsewhere', 'b')}\n"
    )
    file.chmod(0o644)
    with pytest.raises(DigestError, match="chmod 600"):
        read_accounts(str(file), "appliance")
    file.chmod(0o600)
    assert read_accounts(str(file), "appliance") == {"trunk1": ha1("trunk1", "appliance", "a")}
    file.write_text("trunk1:appliance:plaintext-password\n")
    with pytest.raises(DigestError, match="line 1"):
        read_accounts(str(file), "appliance")
    with pytest.raises(DigestError, match="cannot read"):
        read_accounts(str(tmp_path / "missing"), "appliance")
