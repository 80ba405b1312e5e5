"""A SIP user agent server on asyncio (UDP): it answers calls and hands each to a handler.

What it does, per RFC 3261:
- INVITE from an allowed peer: 100 Trying, 180 Ringing, then 200 OK with the SDP answer
  (first G.711 codec of the offer, RFC 4733 events when offered), retransmitted on Timer G
  (T1 doubling to T2) until the ACK, given up at Timer H (64*T1); a retransmitted INVITE gets
  the last response again. No usable codec: 488.
- Admission: a request from an address in ``[sip] allowed_peers`` is taken. From elsewhere,
  an INVITE is challenged (401, digest) when ``[sip] accounts_file`` is set and taken with
  valid credentials (``require_credentials``: from allowed peers too); requests in a dialog
  so opened are taken from the same address. All else gets 403 (counted; an ACK is never
  answered). New INVITEs are rate limited per
  address before any of that work (503). While ``refuse_calls`` holds a reason (the service's
  red-team gate), an admitted INVITE gets 503 with ``Warning: 399 appliance "<reason>"``
  (RFC 3261 20.43; no Retry-After, so a proxy may try another server, 21.5.4).
- ACK starts the call: the handler gets a ``SipCall`` (its media is an audio source and sink).
- CANCEL before the 200: 200 to the CANCEL, 487 to the INVITE.
- BYE in a dialog: 200, and the call's media ends; a BYE for no dialog: 481.
  ``SipCall.hang_up`` sends our BYE, retransmitted on Timer E (T1 doubling to T2) until a
  final response or Timer F (64*T1).
- Blind transfer (RFC 3515): ``SipUserAgent.refer`` sends REFER in the caller's dialog
  (Refer-To the destination, Referred-By us); a 2xx (202 Accepted) is followed by NOTIFYs of
  the implicit subscription, each answered 200, whose ``message/sipfrag`` bodies carry the
  progress of the caller's call to the destination: a final sipfrag decides the attempt.
- Warm transfer's leg to a person (``SipUserAgent.dial``): we place the call ourselves, to a
  ``sip:user@ADDRESS:PORT`` destination (an IP literal: no DNS lookups), over UDP. The INVITE
  client transaction per RFC 3261 17.1.1: retransmitted on Timer A (T1 doubling) until a
  response, given up at Timer B (64*T1); after a provisional the final answer is awaited up to
  the ring timeout, then CANCEL (9.1; never before a provisional). A non-2xx final is ACKed in
  its transaction (17.1.1.3); a 2xx in a new one to the Contact (13.2.2.4), again for each
  retransmitted 2xx; a 2xx to a call we gave up is ACKed and ended with BYE. The offer carries
  the caller leg's codec and RFC 4733 events (SRTP when ``[sip] srtp = "required"``), on a
  media port of the configured range. In its dialog the person's BYE is answered 200 and ends
  the leg, a re-INVITE is answered like the caller's, and ``OutboundCall.hang_up`` sends our BYE.
- Behind a proxy (``[sip] trusted_proxies``, Kamailio in front of several nodes): every
  request comes from the proxy's address, so an INVITE from a trusted proxy is counted and
  limited by the caller's address the proxy reports in ``[sip] proxy_source_header`` (it
  removes a caller's own copy and sets its own); from anyone else that header means nothing.
- An INVITE with a To tag for no dialog of ours: 481 (RFC 3261 12.2.2), never a new call.
- OPTIONS (a proxy's health probe): 200 with Allow and ``X-Appliance-Capacity`` (the calls
  this node can still take: call slots and dialogs, whichever is fewer) while it takes calls;
  503 with a Warning when it should not get them (shutting down, the red-team gate closed,
  its store not answering, no room), so
  the proxy sends calls elsewhere. An INVITE refused while shutting down carries the Warning
  too; one shed for its address's rate does not (a proxy keeps the node in rotation).
  Other methods: 405. A malformed request: 400; a malformed response: dropped. Responses to
  requests we did not send are dropped.

The SIP ``From`` and P-Asserted-Identity only seed the caller record; they authenticate
nobody (the agent's factors do).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import functools
import ipaddress
import logging
import random
import re
import secrets
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from appliance.config.settings import SipSettings
from appliance.core.errors import ApplianceError
from appliance.core.ports import TransferAttempt, TransferResult
from appliance.identity.limits import SlidingWindow
from appliance.telephony import sdp
from appliance.telephony.digest import (
    DigestAuthority,
    DigestError,
    authorization,
    parse_challenge,
    read_accounts,
)
from appliance.telephony.rtp import RtpMedia
from appliance.telephony.sip import (
    MAX_MESSAGE_BYTES,
    REASONS,
    SipMessage,
    SipParseError,
    parse,
    response,
    uri_of,
    user_of,
)
from appliance.telephony.srtp import SrtpContext

log = logging.getLogger(__name__)

T1 = 0.5
T2 = 4.0
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, NOTIFY"
_SIPFRAG_STATUS = re.compile(rb"^\s*SIP/2\.0 ([1-6]\d\d)\b")


@dataclass
class SipCall:
    """One answered call: who it seems to be from (unauthenticated), and its media."""

    call_id: str
    caller: str
    """The user part of From (or P-Asserted-Identity): seeds the record, proves nothing."""
    peer: tuple[str, int]
    media: RtpMedia
    codec: int
    hang_up: Callable[[], None]
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    account: str = ""
    """The digest account the peer proved (empty: an allowlisted address, unauthenticated)."""
    invite: SipMessage | None = None
    """The INVITE that opened the call (a header the gateway adds: an app's session token)."""
    source: str = ""
    """The caller's address: the peer's own, or the one a trusted proxy reported."""


@dataclass
class _Dialog:
    invite: SipMessage
    peer: tuple[str, int]
    local_tag: str
    account: str = ""
    """The digest account that opened it (empty: an allowlisted address)."""
    source: str = ""
    """The caller's address (``SipCall.source``)."""
    media: RtpMedia | None = None
    call: SipCall | None = None
    last_response: bytes = b""
    answered: bool = False
    acked: bool = False
    cancelled: bool = False
    closed: bool = False
    retransmit: asyncio.Task[None] | None = None
    local_cseq: int = 1
    session_id: int = field(default_factory=lambda: secrets.randbelow(2**30))
    sdp_version: int = 0
    refer_progress: asyncio.Queue[int] | None = None
    """While a REFER of ours is pending: the statuses of its NOTIFYs' sipfrag bodies."""
    refer_cseq: int = 0
    """The CSeq of our latest REFER: its subscription's ``Event: refer;id=``."""
    notifies: set[int] = field(default_factory=set)
    """The CSeqs of the NOTIFYs answered: a retransmission gets the same 200 again, never
    counted twice nor refused once the REFER is over (RFC 3261 17.2.2)."""


@dataclass
class OutboundCall:
    """A call we placed and the person answered (a warm transfer's leg): its media, and how
    to end it. ``ended`` is set when either side hangs up."""

    call_id: str
    peer: tuple[str, int]
    media: RtpMedia
    hang_up: Callable[[], None]

    @property
    def ended(self) -> asyncio.Event:
        return self.media.ended


@dataclass
class _Outbound:
    """The client side of a call we placed: our INVITE, then the dialog its 2xx made."""

    invite: SipMessage
    peer: tuple[str, int]
    local_tag: str
    media: RtpMedia
    responses: asyncio.Queue[SipMessage] = field(default_factory=asyncio.Queue)
    provisional: bool = False
    """A 1xx arrived: no more INVITE retransmissions, and a CANCEL may be sent (RFC 3261 9.1)."""
    abandoned: bool = False
    """We gave up (no answer in time, CANCEL sent, or the caller left): a 2xx that still
    comes is ACKed and ended with BYE."""
    remote_to: str = ""
    """The To of the 2xx, with the person's tag: the dialog's remote side."""
    target: str = ""
    """The Contact of the 2xx: where in-dialog requests go (RFC 3261 12.1.2)."""
    route: list[str] = field(default_factory=list)
    ack: bytes = b""
    """The ACK of the 2xx, sent again for each retransmitted 2xx."""
    cseq: int = 1
    closed: bool = False


class SipDialError(ApplianceError):
    def __init__(self, message: str) -> None:
        super().__init__("sip.destination", message)


_DIAL_URI = re.compile(
    r"sip:(?:[^@\s<>;]+@)?(?P<host>\[[0-9A-Fa-f:.]+\]|[^:;\s<>\[\]]+)(?::(?P<port>\d{1,5}))?"
    r"(?P<params>(?:;[^\s<>]*)?)",
    re.I,
)


def dial_address(target: str) -> tuple[str, int]:
    """Where a call to ``target`` goes: the address and port of a ``sip:`` URI whose host is
    an IP literal (port 5060 when none). The appliance resolves no names (no DNS lookups from
    the call path), places calls over UDP only, and so refuses a name, ``sips:`` or another
    transport (SipDialError, saying which)."""
    found = _DIAL_URI.fullmatch(target.strip())
    if found is None:
        raise SipDialError(f"{target!r} is not a sip:user@ADDRESS:PORT URI")
    host = found.group("host").strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError as exc:
        raise SipDialError(
            f"{target!r} names a host, not an IP address: warm transfer resolves no names"
        ) from exc
    transport = re.search(r";transport=([^;]+)", found.group("params"), re.I)
    if transport is not None and transport.group(1).lower() != "udp":
        raise SipDialError(f"{target!r}: warm transfer places calls over UDP only")
    port = int(found.group("port") or 5060)
    if not 0 < port < 65536:
        raise SipDialError(f"{target!r}: bad port")
    return str(address), port


Handler = Callable[[SipCall], Awaitable[None]]
_PORT_TRIES = 20
"""Ports tried when any free one will do (``listen`` port 0) and UDP's is taken on TCP."""


def _with_route_set(answer: SipMessage, invite: SipMessage) -> SipMessage:
    """A 1xx/2xx to an INVITE carries its Record-Route headers back (RFC 3261 12.1.1), so the
    proxies that asked to stay in the dialog (a PBX: Kamailio's record_route) see it too."""
    answer.headers += [("record-route", value) for value in invite.get_all("record-route")]
    return answer


def _route(invite: SipMessage) -> list[tuple[str, str]]:
    """The Route headers of our requests in the dialog: the INVITE's Record-Route set, in its
    order (RFC 3261 12.1.1, loose routing). They go to the peer the INVITE came from (the
    proxy at the top of the set)."""
    return [("route", value) for value in invite.get_all("record-route")]


def _of_dialog(
    dialog: _Dialog, request: SipMessage, addr: tuple[str, int], *, confirmed: bool
) -> bool:
    """Whether ``request`` belongs to ``dialog``: from the host that opened it, with the
    caller's From tag and (``confirmed``: once we answered, RFC 3261 12.2.2) our To tag. The
    Call-ID alone is not enough: anyone who saw it could redirect or end the call."""
    if addr[0] != dialog.peer[0] or request.tag("from") != dialog.invite.tag("from"):
        return False
    return not confirmed or request.tag("to") == dialog.local_tag


def _refusal(request: SipMessage) -> SipMessage | None:
    """What RFC 3261 8.2 has a UAS refuse before it acts on a request (RFC 4475 3.3): a URI
    scheme it does not serve (416), an extension it is required to support (420), a body it
    cannot read (415), or an answer it is not allowed to send (406)."""
    scheme = request.uri.split(":", 1)[0].lower()
    if scheme not in ("sip", "sips", "tel"):
        return response(request, 416)
    required = [o.strip() for v in request.get_all("require") for o in v.split(",") if o.strip()]
    if required:
        reply = response(request, 420)
        reply.set("unsupported", ", ".join(required))  # we support no extension
        return reply
    if request.body:
        kind = request.get("content-type").split(";", 1)[0].strip().lower()
        encoding = request.get("content-encoding").strip().lower()
        if kind != "application/sdp" or encoding not in ("", "identity"):
            reply = response(request, 415)
            reply.set("accept", "application/sdp")
            reply.set("accept-encoding", "identity")
            return reply
    accept = request.get("accept")
    if request.method == "INVITE" and accept:  # our 200 carries SDP
        kinds = {a.split(";", 1)[0].strip().lower() for a in accept.split(",")}
        if kinds.isdisjoint({"application/sdp", "application/*", "*/*"}):
            return response(request, 406)
    return None


def _within(host: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in networks)


def refused(invite: SipMessage, reason: str) -> SipMessage:
    """503 Service Unavailable to an INVITE the service will not take (or a proxy's probing
    OPTIONS), with the reason in a Warning header (RFC 3261 20.43: warn-code 399,
    "miscellaneous"; warn-agent a pseudonym; warn-text a quoted-string, so quotes and
    backslashes are escaped, and it is kept short)."""
    reply = response(invite, 503, to_tag=secrets.token_hex(6))  # a final response: 8.2.6.2
    text = " ".join(reason.split())[:200].replace("\\", "\\\\").replace('"', '\\"')
    reply.set("warning", f'399 appliance "{text}"')
    return reply


class SipConfigError(ApplianceError):
    def __init__(self, message: str) -> None:
        super().__init__("sip.config", message)


class SipUserAgent(asyncio.DatagramProtocol):
    def __init__(self, settings: SipSettings, handler: Handler) -> None:
        self.settings = settings
        self.handler = handler
        host, _, port = settings.listen.rpartition(":")
        self.host, self.port = host, int(port)
        self.advertise = settings.advertise or host
        self.allowed = tuple(ipaddress.ip_network(p, strict=False) for p in settings.allowed_peers)
        self.trusted = tuple(
            ipaddress.ip_network(p, strict=False) for p in settings.trusted_proxies
        )
        self.digest: DigestAuthority | None = None
        if settings.accounts_file:
            try:
                accounts = read_accounts(settings.accounts_file, settings.auth_realm)
            except DigestError as exc:
                raise SipConfigError(exc.message) from exc
            self.digest = DigestAuthority(settings.auth_realm, accounts)
        self.transport: asyncio.DatagramTransport | None = None
        self.dialogs: dict[str, _Dialog] = {}
        self.outbound: dict[str, _Outbound] = {}
        """The calls we placed (warm transfer), by Call-ID."""
        self.forbidden = 0
        self.malformed = 0
        self.shed = 0
        self.refuse_new = False
        self.refuse_calls: str | None = None
        """Why new calls are refused (said in the 503's Warning); None: they are taken."""
        self.refused_calls = 0
        self.unhealthy: str | None = None
        """Why this node should get no new calls though it can take them (its store does
        not answer): its OPTIONS answer is 503 with this reason; None: healthy."""
        self.capacity: Callable[[], int | None] = lambda: None
        """How many more calls this node can take now (its OPTIONS answer says it, and 503 at
        0); None: not known."""
        self.busy = 0
        """INVITEs answered 486: the line's dialogs, or one address's unconfirmed ones, full."""
        self.streams: dict[tuple[str, int], asyncio.WriteTransport] = {}
        self._server: asyncio.Server | None = None
        self._tls_server: asyncio.Server | None = None
        self.tls_port = 0
        self._invites = SlidingWindow(settings.invites_per_address_per_10s, 10.0)
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending: dict[str, asyncio.Future[SipMessage]] = {}
        self.registered = False
        self._register_tag = secrets.token_hex(6)

    async def start(self) -> None:
        """Listen on UDP, and on TCP at the same port when ``[sip] tcp`` is on; register with
        the PBX when ``[sip] registrar`` is set."""
        loop = asyncio.get_running_loop()
        wanted = self.port
        for attempt in range(_PORT_TRIES):
            await loop.create_datagram_endpoint(lambda: self, local_addr=(self.host, wanted))
            if not self.settings.tcp:
                break
            try:
                self._server = await loop.create_server(
                    lambda: _SipStream(self), self.host, self.port
                )
                break
            except OSError as exc:
                # Any free port asked for (0): the system chose one free for UDP whose number
                # something holds on TCP; another one. A port configured is an error to report.
                if wanted != 0 or exc.errno != errno.EADDRINUSE or attempt == _PORT_TRIES - 1:
                    raise
                assert self.transport is not None
                self.transport.close()
                self.transport = None
        if self.settings.registrar:
            self._spawn(self._register_loop())
        if self.settings.tls_listen:
            host, _, port = self.settings.tls_listen.rpartition(":")
            self._tls_server = await loop.create_server(
                lambda: _SipStream(self), host, int(port), ssl=self._tls_context()
            )
            self.tls_port = int(self._tls_server.sockets[0].getsockname()[1])

    def _tls_context(self) -> ssl.SSLContext:
        """TLS 1.2 at least; the certificate and key from ``[sip] tls_cert``/``tls_key``."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.settings.tls_cert, self.settings.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise SipConfigError(f"cannot load the SIP TLS certificate: {exc}") from exc
        return context

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.port = transport.get_extra_info("sockname")[1]

    def close(self) -> None:
        for dialog in list(self.dialogs.values()):
            self._finish(dialog, "shutdown")
        for out in list(self.outbound.values()):
            self._end_outbound(out, "shutdown")
        if self.transport is not None:
            self.transport.close()
        for server in (self._server, self._tls_server):
            if server is not None:
                server.close()
        for stream in list(self.streams.values()):
            stream.close()

    # -- receiving -------------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not data.strip():
            return  # keep-alive (RFC 5626 CRLF)
        try:
            message = parse(data)
        except SipParseError as exc:
            self.malformed += 1
            self._bad_request(data, addr, exc)
            return
        if not message.is_request:
            self._on_response(message)
            return
        if message.call_id in self.outbound:  # the person's side of a call we placed
            self._on_outbound_request(message, addr)
            return
        if not self._allowed(addr[0]) and not self._may_ask(message, addr[0]):
            if message.method != "ACK":
                self.forbidden += 1
                self._send(response(message, 403).encode(), addr)
            return
        handlers = {
            "INVITE": self._on_invite,
            "ACK": self._on_ack,
            "CANCEL": self._on_cancel,
            "BYE": self._on_bye,
            "OPTIONS": self._on_options,
            "NOTIFY": self._on_notify,
        }
        handler = handlers.get(message.method)
        if handler is None:
            reply = response(message, 405)
            reply.set("allow", ALLOW)
            self._send(reply.encode(), addr)
            return
        if message.method not in ("ACK", "NOTIFY") and (refusal := _refusal(message)) is not None:
            self._send(refusal.encode(), addr)
            return
        handler(message, addr)

    def _allowed(self, host: str) -> bool:
        return _within(host, self.allowed)

    def _source(self, request: SipMessage, addr: tuple[str, int]) -> str:
        """The caller's address: from a trusted proxy, the address it reports (an IP literal
        only; a missing or malformed one leaves the proxy's own), else the sender's."""
        if not _within(addr[0], self.trusted):
            return addr[0]
        reported = request.get(self.settings.proxy_source_header.lower()).strip()
        try:
            return str(ipaddress.ip_address(reported))
        except ValueError:
            log.warning("a trusted proxy's INVITE reported no caller address")
            return addr[0]

    def _may_ask(self, message: SipMessage, host: str) -> bool:
        """From outside the allowlist: a new INVITE when digest accounts exist (it is
        challenged in ``_on_invite``), or a request in a dialog opened with credentials
        from this address."""
        dialog = self.dialogs.get(message.call_id)
        if dialog is None:
            return message.method == "INVITE" and self.digest is not None
        return bool(dialog.account) and dialog.peer[0] == host

    def _bad_request(self, data: bytes, addr: tuple[str, int], exc: SipParseError) -> None:
        """400 (505 for another SIP version) to a malformed request when enough of it can be
        read to answer; else drop."""
        head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
        lines = head.split("\r\n")
        if not lines or lines[0].startswith("SIP/2.0"):
            return
        keep, seen = [], set()
        for line in lines[1:]:
            name = line.split(":", 1)[0].strip().lower()
            if name in _ECHOED and (name in ("via", "v") or _ECHOED[name] not in seen):
                keep.append(line)  # every Via; the first of the others (a twin is malformed)
                seen.add(_ECHOED[name])
        if not any(ln.lower().startswith(("via", "v:")) for ln in keep):
            return
        start = f"SIP/2.0 {exc.status} {REASONS[exc.status]}"
        text = "\r\n".join([start, *keep, "Content-Length: 0"]) + "\r\n\r\n"
        self._send(text.encode("utf-8", "replace"), addr)
        log.info("%d to a malformed request: %s", exc.status, exc.message)

    # -- INVITE ----------------------------------------------------------------------------

    def _on_invite(self, invite: SipMessage, addr: tuple[str, int]) -> None:
        dialog = self.dialogs.get(invite.call_id)
        if dialog is not None:
            retransmission = invite.branch == dialog.invite.branch
            if not _of_dialog(dialog, invite, addr, confirmed=not retransmission):
                self._send(response(invite, 481).encode(), addr)  # not this dialog's peer
                return
            if retransmission or not dialog.acked:
                self._send(dialog.last_response, addr)  # a retransmission
            else:
                self._reinvite(dialog, invite, addr)
            return
        if invite.tag("to"):  # a re-INVITE of a dialog this node does not have (RFC 3261
            self._send(response(invite, 481).encode(), addr)  # 12.2.2): never a new call
            return
        if self.refuse_new:  # shutting down (the Warning tells a proxy to try another node)
            self._send(refused(invite, "shutting down").encode(), addr)
            return
        source = self._source(invite, addr)
        if not self._invites.allow(source):
            self.shed += 1
            reply = response(invite, 503)
            reply.set("retry-after", "10")
            self._send(reply.encode(), addr)
            return
        account = ""
        if self.settings.require_credentials or not self._allowed(addr[0]):
            assert self.digest is not None  # else _may_ask (or the settings) refused it
            verdict = self.digest.verify(
                invite.get("authorization"), invite.method, invite.uri, addr[0]
            )
            if not verdict.user:
                if verdict.challenge:
                    reply = response(invite, 401, to_tag=secrets.token_hex(6))
                    reply.set("www-authenticate", self.digest.challenge(addr[0], verdict.stale))
                else:
                    self.forbidden += 1
                    reply = response(invite, 403)
                    log.warning("an INVITE with wrong digest credentials got 403")
                self._send(reply.encode(), addr)
                return
            account = verdict.user
        if self.refuse_calls is not None:  # admitted, but the service takes no calls now
            self.refused_calls += 1
            self._send(refused(invite, self.refuse_calls).encode(), addr)
            return
        live = [d for d in self.dialogs.values() if not d.closed]
        unconfirmed = sum(not d.acked and d.source == source for d in live)
        if len(live) >= self.settings.max_dialogs or (
            unconfirmed >= self.settings.unconfirmed_per_address
        ):  # one address's INVITEs that never ACK cannot fill the line
            self.busy += 1
            self._send(response(invite, 486).encode(), addr)
            return
        dialog = _Dialog(invite, addr, secrets.token_hex(6), account, source=source)
        self.dialogs[invite.call_id] = dialog
        self._respond(dialog, response(invite, 100))
        try:
            offer = sdp.parse_offer(invite.body)
        except sdp.SdpError:
            self._reject(dialog, 400 if invite.body else 488)
            return
        codec = sdp.choose_codec(offer)
        policy = self.settings.srtp
        wants_srtp = offer.secure or offer.crypto is not None
        if (
            codec is None
            or (policy == "required" and offer.crypto is None)
            or (policy == "off" and offer.secure)
            or (offer.secure and offer.crypto is None)
        ):
            self._reject(dialog, 488)  # no codec, or not the media security we need
            return
        if policy == "off" or not wants_srtp:
            offer = dataclasses.replace(offer, crypto=None)
        ringing = response(invite, 180, to_tag=dialog.local_tag)
        self._respond(dialog, _with_route_set(ringing, invite))
        self._spawn(self._answer(dialog, offer, codec))

    async def _answer(self, dialog: _Dialog, offer: sdp.Offer, codec: int) -> None:
        invite = dialog.invite
        if self.settings.ring_ms:
            await asyncio.sleep(self.settings.ring_ms / 1000)
            if dialog.cancelled or dialog.closed:
                return
        try:
            media, port = await self._open_media(offer, codec)
        except OSError:
            self._reject(dialog, 503)
            return
        if dialog.cancelled or dialog.closed:
            media.close()
            return
        dialog.media = media
        crypto = None
        if offer.crypto is not None:  # SRTP: their keys in, ours out (SDES)
            media.srtp_in, media.srtp_out = offer.crypto[1], SrtpContext.new()
            crypto = (offer.crypto[0], media.srtp_out)
        ok = _with_route_set(response(invite, 200, to_tag=dialog.local_tag), invite)
        ok.set("contact", f"<sip:appliance@{self.advertise}:{self.port}>")
        ok.set("allow", ALLOW)
        ok.set("content-type", "application/sdp")
        ok.body = sdp.answer(offer, codec, self.advertise, port, dialog.session_id, crypto=crypto)
        dialog.answered = True
        self._respond(dialog, ok)
        caller = user_of(invite.get("p-asserted-identity") or invite.get("from"))
        dialog.call = SipCall(
            invite.call_id, caller, dialog.peer, media, codec,
            lambda: self.hang_up(invite.call_id), account=dialog.account, invite=invite,
            source=dialog.source,
        )  # fmt: skip
        await self._retransmit_ok(dialog)

    def _reinvite(self, dialog: _Dialog, invite: SipMessage, addr: tuple[str, int]) -> None:
        """A new offer in the dialog (RFC 3264 8): hold (sendonly/inactive), resume, or a new
        media address. The codec and our port stay; the answer mirrors the direction."""
        media = dialog.media
        try:
            offer = sdp.parse_offer(invite.body)
        except sdp.SdpError:
            offer = None
        if offer is None or media is None or dialog.closed or media.codec not in offer.payloads:
            self._send(response(invite, 488, to_tag=dialog.local_tag).encode(), addr)
            return
        media.remote = (offer.address, offer.port)
        media.on_hold = offer.direction in ("sendonly", "inactive")
        dialog.sdp_version += 1
        ok = response(invite, 200, to_tag=dialog.local_tag)
        ok.set("contact", f"<sip:appliance@{self.advertise}:{self.port}>")
        ok.set("content-type", "application/sdp")
        ok.body = sdp.answer(
            offer, media.codec, self.advertise, media.local_port, dialog.session_id,
            dialog.sdp_version,
        )  # fmt: skip
        self._send(ok.encode(), addr)

    async def _open_media(self, offer: sdp.Offer, codec: int) -> tuple[RtpMedia, int]:
        return await self._open_port(codec, offer.telephone_event, (offer.address, offer.port))

    async def _open_port(
        self, codec: int, event: int | None, remote: tuple[str, int]
    ) -> tuple[RtpMedia, int]:
        """A media endpoint on a free port of the configured range, tried in random order: a
        stranger cannot guess the next call's port from this one's."""
        loop = asyncio.get_running_loop()
        ports = list(range(self.settings.rtp_port_min, self.settings.rtp_port_max + 1))
        random.SystemRandom().shuffle(ports)
        for port in ports:
            media = RtpMedia(
                codec, event, remote, self.settings.media_timeout_s,
                latch=self.settings.symmetric_rtp,
            )  # fmt: skip
            try:
                await loop.create_datagram_endpoint(
                    functools.partial(_same, media), local_addr=(self.host, port)
                )
            except OSError:
                continue
            return media, port
        raise OSError("no free media port in [sip] rtp_port_min..rtp_port_max")

    async def _retransmit_ok(self, dialog: _Dialog) -> None:
        """Timer G until the ACK; Timer H gives up (the call never starts)."""
        interval, waited = T1, 0.0
        while not dialog.acked and not dialog.closed:
            await asyncio.sleep(interval)
            waited += interval
            if dialog.acked or dialog.closed:
                return
            if waited >= 64 * T1:
                log.info("no ACK for a 200 OK: call dropped")
                self.hang_up(dialog.invite.call_id)
                return
            self._send(dialog.last_response, dialog.peer)
            interval = min(2 * interval, T2)

    def _on_ack(self, ack: SipMessage, addr: tuple[str, int]) -> None:
        dialog = self.dialogs.get(ack.call_id)
        if dialog is None or dialog.acked or not _of_dialog(dialog, ack, addr, confirmed=True):
            return
        dialog.acked = True
        if dialog.cancelled or dialog.call is None:
            self._finish(dialog, "cancelled")
            return
        self._spawn(self._run_call(dialog))

    async def _run_call(self, dialog: _Dialog) -> None:
        call = dialog.call
        assert call is not None
        try:
            await self.handler(call)
        except Exception as exc:  # the run boundary of one call: say what, by type only
            log.error("call handler failed: %s", type(exc).__name__)
        finally:
            if not dialog.closed:
                self.hang_up(call.call_id)

    def _reject(self, dialog: _Dialog, status: int) -> None:
        self._respond(dialog, response(dialog.invite, status, to_tag=dialog.local_tag))
        dialog.closed = True
        self._spawn(self._forget_later(dialog.invite.call_id))

    # -- CANCEL, BYE, OPTIONS --------------------------------------------------------------

    def _on_cancel(self, cancel: SipMessage, addr: tuple[str, int]) -> None:
        dialog = self.dialogs.get(cancel.call_id)
        # The CANCEL names the INVITE by its branch (RFC 3261 9.2), or by Call-ID and CSeq
        # number from an RFC 2543 peer.
        if (
            dialog is None
            or not _of_dialog(dialog, cancel, addr, confirmed=False)
            or (dialog.invite.branch != cancel.branch and dialog.invite.cseq[0] != cancel.cseq[0])
        ):
            self._send(response(cancel, 481).encode(), addr)
            return
        self._send(response(cancel, 200).encode(), addr)
        if dialog.answered:
            return  # too late: the call was answered (a BYE will end it)
        dialog.cancelled = True
        self._reject(dialog, 487)

    def _on_bye(self, bye: SipMessage, addr: tuple[str, int]) -> None:
        dialog = self.dialogs.get(bye.call_id)
        if dialog is None or dialog.closed or not _of_dialog(dialog, bye, addr, confirmed=True):
            self._send(response(bye, 481).encode(), addr)
            return
        self._send(response(bye, 200).encode(), addr)
        self._finish(dialog, "caller_hung_up")

    def _on_options(self, options: SipMessage, addr: tuple[str, int]) -> None:
        live = sum(not d.closed for d in self.dialogs.values())
        known = self.capacity()
        room = self.settings.max_dialogs - live
        left = room if known is None else min(known, room)
        reason = (
            "shutting down"
            if self.refuse_new
            else self.refuse_calls
            if self.refuse_calls is not None
            else self.unhealthy
            if self.unhealthy is not None
            else "no capacity left: every call slot is taken"
            if left <= 0
            else None
        )
        if reason is not None:
            self._send(refused(options, reason).encode(), addr)
            return
        reply = response(options, 200)
        reply.set("allow", ALLOW)
        reply.set("accept", "application/sdp")
        reply.set("x-appliance-capacity", str(left))
        self._send(reply.encode(), addr)

    def _on_notify(self, notify: SipMessage, addr: tuple[str, int]) -> None:
        """A NOTIFY of the subscription our REFER made (RFC 3515 2.4.4): 200, and its sipfrag
        status to the waiting ``refer``. Outside a pending REFER: 481 (no subscription)."""
        dialog = self.dialogs.get(notify.call_id)
        event, _, params = notify.get("event").partition(";")
        ids = re.search(r"(?i)\bid\s*=\s*(\d+)", params)
        number = notify.cseq[0]
        ours = dialog is not None and _of_dialog(dialog, notify, addr, confirmed=True)
        if dialog is not None and ours and number in dialog.notifies:
            self._send(response(notify, 200, to_tag=dialog.local_tag).encode(), addr)
            return  # a retransmission: answered already
        if (
            dialog is None
            or dialog.closed
            or dialog.refer_progress is None
            or not ours
            or event.strip().lower() != "refer"
            or (ids is not None and int(ids.group(1)) != dialog.refer_cseq)  # an earlier REFER's
        ):
            self._send(response(notify, 481).encode(), addr)
            return
        kind = notify.get("content-type").split(";", 1)[0].strip().lower()
        if notify.body and kind != "message/sipfrag":
            reply = response(notify, 415)
            reply.set("accept", "message/sipfrag")
            self._send(reply.encode(), addr)
            return
        dialog.notifies.add(number)
        self._send(response(notify, 200, to_tag=dialog.local_tag).encode(), addr)
        found = _SIPFRAG_STATUS.match(notify.body)
        terminated = notify.get("subscription-state").lower().startswith("terminated")
        if found is None and not terminated:
            return
        status = int(found.group(1)) if found is not None else 0
        if terminated and status < 200:
            status = 0  # the subscription ended without a final answer: no answer
        dialog.refer_progress.put_nowait(status)

    async def refer(self, call_id: str, target: str, timeout_s: float) -> TransferAttempt:
        """Blind transfer (RFC 3515): REFER the caller's phone to ``target`` and wait for the
        final sipfrag of its NOTIFYs, at most ``timeout_s`` in all. The dialog stays ours: the
        caller decides (CONNECTED) and we hang up, or not, and the call goes on."""
        dialog = self.dialogs.get(call_id)
        if dialog is None or dialog.closed or not dialog.acked:
            return TransferAttempt(target, TransferResult.UNAVAILABLE)
        progress: asyncio.Queue[int] = asyncio.Queue()
        dialog.refer_progress = progress
        deadline = asyncio.get_running_loop().time() + timeout_s
        try:
            answer = await self._refer_once(dialog, target, timeout_s)
            if answer is None:
                return TransferAttempt(target, TransferResult.NO_ANSWER)
            if not 200 <= answer.status < 300:
                return TransferAttempt(target, TransferResult.REFUSED, answer.status)
            while True:
                left = deadline - asyncio.get_running_loop().time()
                try:
                    status = await asyncio.wait_for(progress.get(), max(0.0, left))
                except TimeoutError:
                    return TransferAttempt(target, TransferResult.NO_ANSWER)
                if status == 0:
                    return TransferAttempt(target, TransferResult.NO_ANSWER)
                if 200 <= status < 300:
                    return TransferAttempt(target, TransferResult.CONNECTED, status)
                if status >= 300:
                    return TransferAttempt(target, TransferResult.DECLINED, status)
                # 1xx: the destination is trying or ringing; wait on
        finally:
            if dialog.refer_progress is progress:
                dialog.refer_progress = None

    async def _refer_once(
        self, dialog: _Dialog, target: str, timeout_s: float
    ) -> SipMessage | None:
        invite = dialog.invite
        dialog.local_cseq += 1
        dialog.refer_cseq = dialog.local_cseq
        ours = f"<sip:appliance@{self.advertise}:{self.port}>"
        refer = SipMessage(f"REFER {uri_of(invite.get('contact') or invite.get('from'))} SIP/2.0")
        refer.headers += [
            ("via", self._via(dialog.peer)),
            ("max-forwards", "70"),
            ("from", f"{invite.get('to')};tag={dialog.local_tag}"),
            ("to", invite.get("from")),
            ("call-id", invite.call_id),
            ("cseq", f"{dialog.local_cseq} REFER"),
            ("contact", ours),
            ("refer-to", f"<{target}>"),
            ("referred-by", ours),
            *_route(invite),
        ]
        try:
            return await asyncio.wait_for(self._transaction(refer, dialog.peer), timeout_s)
        except TimeoutError:
            return None

    # -- our BYE ---------------------------------------------------------------------------

    def hang_up(self, call_id: str) -> None:
        dialog = self.dialogs.get(call_id)
        if dialog is None or dialog.closed:
            return
        if dialog.acked:
            self._spawn(self._send_bye(dialog))
        self._finish(dialog, "appliance_hung_up")

    async def _send_bye(self, dialog: _Dialog) -> None:
        invite = dialog.invite
        dialog.local_cseq += 1
        bye = SipMessage(f"BYE {uri_of(invite.get('contact') or invite.get('from'))} SIP/2.0")
        bye.headers += [
            ("via", self._via(dialog.peer)),
            ("max-forwards", "70"),
            ("from", f"{invite.get('to')};tag={dialog.local_tag}"),
            ("to", invite.get("from")),
            ("call-id", invite.call_id),
            ("cseq", f"{dialog.local_cseq} BYE"),
            *_route(invite),
        ]
        if await self._transaction(bye, dialog.peer) is None:
            log.info("no answer to our BYE")

    def _via(self, peer: tuple[str, int]) -> str:
        stream = self.streams.get(peer)
        secure = stream is not None and stream.get_extra_info("ssl_object") is not None
        transport = "TLS" if secure else "TCP" if stream is not None else "UDP"
        branch = f"z9hG4bK{secrets.token_hex(8)}"
        return f"SIP/2.0/{transport} {self.advertise}:{self.port};branch={branch};rport"

    async def _transaction(self, request: SipMessage, peer: tuple[str, int]) -> SipMessage | None:
        """A client transaction: sent, retransmitted on Timer E (T1 doubling to T2) until a
        final response, given up at Timer F (64*T1): the response, or None."""
        data = request.encode()
        done: asyncio.Future[SipMessage] = asyncio.get_running_loop().create_future()
        self._pending[request.branch] = done
        interval, waited = T1, 0.0
        try:
            while waited < 64 * T1:
                self._send(data, peer)
                with contextlib.suppress(TimeoutError):
                    return await asyncio.wait_for(asyncio.shield(done), interval)
                waited += interval
                interval = min(2 * interval, T2)
            return None
        finally:
            self._pending.pop(request.branch, None)

    def _on_response(self, message: SipMessage) -> None:
        out = self.outbound.get(message.call_id)
        if (
            out is not None
            and message.cseq == (out.invite.cseq[0], "INVITE")
            and message.branch == out.invite.branch
        ):
            self._on_invite_response(out, message)
            return
        future = self._pending.get(message.branch)
        if future is not None and message.status >= 200 and not future.done():
            future.set_result(message)

    # -- a call we place (warm transfer) ---------------------------------------------------------

    async def dial(
        self, target: str, codec: int, timeout_s: float, abort: asyncio.Event
    ) -> tuple[TransferAttempt, OutboundCall | None]:
        """Call ``target`` with ``codec`` (the caller leg's) and wait up to ``timeout_s`` for
        the person to answer; ``abort`` (the caller hung up) gives up at once. CONNECTED comes
        with the answered call; every other result with None (nothing is left open)."""
        try:
            peer = dial_address(target)
        except SipDialError as exc:
            log.warning("warm transfer cannot call a destination: %s", exc.message)
            return TransferAttempt(target, TransferResult.UNAVAILABLE), None
        try:
            media, port = await self._open_port(codec, _EVENT_PAYLOAD, ("0.0.0.0", 0))
        except OSError:
            return TransferAttempt(target, TransferResult.UNAVAILABLE), None
        keys = SrtpContext.new() if self.settings.srtp == "required" else None
        media.srtp_out = keys
        call_id = f"{secrets.token_hex(12)}@{self.advertise}"
        local_tag = secrets.token_hex(6)
        invite = SipMessage(f"INVITE {target} SIP/2.0")
        invite.headers += [
            ("via", self._via(peer)),
            ("max-forwards", "70"),
            ("from", f"<sip:appliance@{self.advertise}:{self.port}>;tag={local_tag}"),
            ("to", f"<{target}>"),
            ("call-id", call_id),
            ("cseq", "1 INVITE"),
            ("contact", f"<sip:appliance@{self.advertise}:{self.port}>"),
            ("allow", ALLOW),
            ("content-type", "application/sdp"),
        ]
        session_id = secrets.randbelow(2**30)
        invite.body = sdp.make_offer(codec, _EVENT_PAYLOAD, self.advertise, port, session_id, keys)
        out = _Outbound(invite, peer, local_tag, media)
        self.outbound[call_id] = out
        try:
            final = await self._ring(out, timeout_s, abort)
        except BaseException:
            await self._give_up(out)  # the caller's turn was cancelled (they hung up)
            raise
        if final is None:
            await self._give_up(out)
            result = TransferResult.UNAVAILABLE if abort.is_set() else TransferResult.NO_ANSWER
            return TransferAttempt(target, result), None
        if final.status >= 300:
            self._end_outbound(out, "declined")
            # Busy (486), unavailable (480), declined (603), ...: as the sipfrag of a blind
            # transfer; a request timeout (408) or a CANCEL of the far side's: no answer.
            no_answer = final.status in (408, 487)
            result = TransferResult.NO_ANSWER if no_answer else TransferResult.DECLINED
            return TransferAttempt(target, result, final.status), None
        if not self._take_answer(out, final, codec):
            self._hang_up_outbound(out)  # ACKed already: ended with BYE
            return TransferAttempt(target, TransferResult.DECLINED, 488), None
        leg = OutboundCall(call_id, peer, media, lambda: self._hang_up_outbound(out))
        return TransferAttempt(target, TransferResult.CONNECTED, final.status), leg

    async def _ring(
        self, out: _Outbound, timeout_s: float, abort: asyncio.Event
    ) -> SipMessage | None:
        """The INVITE's client transaction (RFC 3261 17.1.1.2): Timer A retransmissions until
        a response, Timer B without one; then the final response, or None at ``timeout_s``
        (or once ``abort`` is set)."""
        loop = asyncio.get_running_loop()
        data = out.invite.encode()
        started = loop.time()
        deadline = started + timeout_s
        interval = T1
        resend = started + interval
        self._send(data, out.peer)
        while not abort.is_set():
            now = loop.time()
            if now >= deadline or (not out.provisional and now - started >= 64 * T1):
                return None
            wake = deadline if out.provisional else min(deadline, resend)
            try:  # a short wait at most, so that ``abort`` is seen soon
                message = await asyncio.wait_for(out.responses.get(), min(wake - now, 0.1))
            except TimeoutError:
                if not out.provisional and loop.time() >= resend:
                    self._send(data, out.peer)
                    interval *= 2  # Timer A doubles without the T2 cap (17.1.1.2)
                    resend = loop.time() + interval
                continue
            if message.status >= 200:
                return message
        return None

    async def _give_up(self, out: _Outbound) -> None:
        """No answer wanted any more: CANCEL once a provisional came (RFC 3261 9.1), and wait
        a moment for its 487 (ACKed when it comes); a 2xx that races it is ACKed and ended."""
        out.abandoned = True
        if out.provisional and not out.closed:
            invite = out.invite
            cancel = SipMessage(f"CANCEL {invite.uri} SIP/2.0")
            cancel.headers += [
                ("via", invite.get("via")),  # the INVITE's branch: the CANCEL names it (9.1)
                ("max-forwards", "70"),
                ("from", invite.get("from")),
                ("to", invite.get("to")),
                ("call-id", invite.call_id),
                ("cseq", f"{invite.cseq[0]} CANCEL"),
            ]
            self._spawn(self._cancel(cancel, out))
            with contextlib.suppress(TimeoutError):
                while True:
                    message = await asyncio.wait_for(out.responses.get(), T2)
                    if message.status >= 200:
                        break
        if out.ack == b"":  # no 2xx came: nothing to end in a dialog
            self._end_outbound(out, "no_answer")

    async def _cancel(self, cancel: SipMessage, out: _Outbound) -> None:
        if await self._transaction(cancel, out.peer) is None:
            log.info("no answer to our CANCEL")

    def _on_invite_response(self, out: _Outbound, message: SipMessage) -> None:
        status = message.status
        if status < 200:
            out.provisional = True
        elif status >= 300:
            self._send(self._ack_failure(out, message).encode(), out.peer)  # 17.1.1.3
        else:
            if not out.ack:
                out.remote_to = message.get("to")
                out.target = uri_of(message.get("contact")) if message.get("contact") else ""
                out.target = out.target or out.invite.uri
                out.route = list(reversed(message.get_all("record-route")))
                out.ack = self._in_outbound(out, "ACK", out.invite.cseq[0]).encode()
            self._send(out.ack, out.peer)  # each 2xx, retransmitted or not (13.2.2.4)
            if out.abandoned and not out.closed:
                self._hang_up_outbound(out)  # answered too late: ended at once
        out.responses.put_nowait(message)

    def _ack_failure(self, out: _Outbound, final: SipMessage) -> SipMessage:
        """The ACK of a non-2xx final response: part of the INVITE's transaction (its Via
        and branch, its Request-URI), To as the response has it (RFC 3261 17.1.1.3)."""
        invite = out.invite
        ack = SipMessage(f"ACK {invite.uri} SIP/2.0")
        ack.headers += [
            ("via", invite.get("via")),
            ("max-forwards", "70"),
            ("from", invite.get("from")),
            ("to", final.get("to")),
            ("call-id", invite.call_id),
            ("cseq", f"{invite.cseq[0]} ACK"),
        ]
        return ack

    def _in_outbound(self, out: _Outbound, method: str, cseq: int) -> SipMessage:
        """A request in the dialog of a call we placed: to the person's Contact, with the
        reversed Record-Route set as Route (RFC 3261 12.2.1.1)."""
        request = SipMessage(f"{method} {out.target} SIP/2.0")
        request.headers += [
            ("via", self._via(out.peer)),
            ("max-forwards", "70"),
            ("from", out.invite.get("from")),
            ("to", out.remote_to),
            ("call-id", out.invite.call_id),
            ("cseq", f"{cseq} {method}"),
            *[("route", value) for value in out.route],
        ]
        return request

    def _take_answer(self, out: _Outbound, ok: SipMessage, codec: int) -> bool:
        """The person's SDP answer: our codec, SRTP keys where we required them."""
        try:
            answer = sdp.parse_offer(ok.body)
        except sdp.SdpError:
            return False
        if codec not in answer.payloads:
            return False
        if out.media.srtp_out is not None:
            if answer.crypto is None:
                return False
            out.media.srtp_in = answer.crypto[1]
        out.media.remote = (answer.address, answer.port)
        out.media.event_type = answer.telephone_event
        return True

    def _on_outbound_request(self, request: SipMessage, addr: tuple[str, int]) -> None:
        """A request in the dialog of a call we placed, from the person's side: only from the
        host we called, with their tag and ours (anything else: 481)."""
        out = self.outbound[request.call_id]
        if request.method == "ACK":
            return  # of our 200 to a re-INVITE
        ours = (
            bool(out.ack)
            and addr[0] == out.peer[0]
            and request.tag("from") == _tag_of(out.remote_to)
            and request.tag("to") == out.local_tag
        )
        if not ours:
            self._send(response(request, 481).encode(), addr)
            return
        if request.method == "BYE":
            self._send(response(request, 200).encode(), addr)
            self._end_outbound(out, "person_hung_up")
        elif request.method == "INVITE" and not out.closed:
            self._reinvite_outbound(out, request, addr)
        elif request.method == "OPTIONS":
            self._on_options(request, addr)
        else:
            self._send(response(request, 481 if out.closed else 405).encode(), addr)

    def _reinvite_outbound(self, out: _Outbound, invite: SipMessage, addr: tuple[str, int]) -> None:
        """Hold, resume or a new address from the person's side (RFC 3264 8), as for the
        caller's re-INVITE: the codec and our port stay."""
        media = out.media
        try:
            offer = sdp.parse_offer(invite.body)
        except sdp.SdpError:
            offer = None
        if offer is None or media.codec not in offer.payloads:
            self._send(response(invite, 488).encode(), addr)
            return
        media.remote = (offer.address, offer.port)
        media.on_hold = offer.direction in ("sendonly", "inactive")
        ok = response(invite, 200)
        ok.set("contact", f"<sip:appliance@{self.advertise}:{self.port}>")
        ok.set("content-type", "application/sdp")
        session_id = secrets.randbelow(2**30)
        ok.body = sdp.answer(offer, media.codec, self.advertise, media.local_port, session_id)
        self._send(ok.encode(), addr)

    def _hang_up_outbound(self, out: _Outbound) -> None:
        if out.closed:
            return
        if out.ack:
            out.cseq += 1
            self._spawn(self._bye_outbound(self._in_outbound(out, "BYE", out.cseq), out.peer))
        self._end_outbound(out, "appliance_hung_up")

    async def _bye_outbound(self, bye: SipMessage, peer: tuple[str, int]) -> None:
        if await self._transaction(bye, peer) is None:
            log.info("no answer to our BYE")

    def _end_outbound(self, out: _Outbound, reason: str) -> None:
        if out.closed:
            return
        out.closed = True
        out.media.end(reason)
        out.media.close()
        self._spawn(self._forget_outbound_later(out.invite.call_id))

    async def _forget_outbound_later(self, call_id: str) -> None:
        await asyncio.sleep(64 * T1)  # absorb retransmitted 2xx and BYEs, then forget
        self.outbound.pop(call_id, None)

    # -- REGISTER ----------------------------------------------------------------------------

    async def _register_loop(self) -> None:
        """Keep the appliance registered with ``[sip] registrar``; refresh at 4/5 of the
        granted time, retry failures with a doubling delay."""
        sip = self.settings
        host, _, port = sip.registrar.rpartition(":")
        peer = (host, int(port))
        domain = sip.register_domain or host
        password = ""
        if sip.register_password_file:
            password = Path(sip.register_password_file).read_text(encoding="utf-8").strip()
        call_id, cseq, retry = secrets.token_hex(12), 0, 5.0
        while True:
            cseq += 1
            reply = await self._transaction(self._register(domain, call_id, cseq), peer)
            if reply is not None and reply.status in (401, 407):
                try:
                    header = reply.get("www-authenticate") or reply.get("proxy-authenticate")
                    challenge = parse_challenge(header)
                except DigestError as exc:
                    log.error("registration refused: %s", exc.code)
                    reply = None
                else:
                    name = "authorization" if reply.status == 401 else "proxy-authorization"
                    answer = authorization(
                        challenge, "REGISTER", f"sip:{domain}", sip.register_user, password
                    )
                    cseq += 1
                    auth = self._register(domain, call_id, cseq, (name, answer))
                    reply = await self._transaction(auth, peer)
            if reply is not None and reply.status == 200:
                self.registered, retry = True, 5.0
                granted = re.search(r"expires=(\d+)", reply.get("contact"), re.I)
                expires = int(
                    granted.group(1) if granted else reply.get("expires") or sip.register_expires_s
                )
                await asyncio.sleep(max(1.0, 0.8 * expires))
                continue
            self.registered = False
            log.warning(
                "registration failed (%s); retry in %.0f s",
                reply.status if reply else "no answer",
                retry,
            )
            await asyncio.sleep(retry)
            retry = min(2 * retry, 300.0)

    def _register(
        self, domain: str, call_id: str, cseq: int, auth: tuple[str, str] | None = None
    ) -> SipMessage:
        sip = self.settings
        host, _, port = sip.registrar.rpartition(":")
        aor = f"<sip:{sip.register_user}@{domain}>"
        message = SipMessage(f"REGISTER sip:{domain} SIP/2.0")
        message.headers += [
            ("via", self._via((host, int(port)))),
            ("max-forwards", "70"),
            ("from", f"{aor};tag={self._register_tag}"),
            ("to", aor),
            ("call-id", call_id),
            ("cseq", f"{cseq} REGISTER"),
            ("contact", f"<sip:{sip.register_user}@{self.advertise}:{self.port}>"),
            ("expires", str(sip.register_expires_s)),
        ]
        if auth is not None:
            message.headers.append(auth)
        return message

    # -- plumbing --------------------------------------------------------------------------

    def _finish(self, dialog: _Dialog, reason: str) -> None:
        if dialog.closed and dialog.media is None:
            return
        dialog.closed = True
        if dialog.media is not None:
            dialog.media.end(reason)
            dialog.media.close()
        if dialog.call is not None:
            dialog.call.ended.set()
        self._spawn(self._forget_later(dialog.invite.call_id))

    async def _forget_later(self, call_id: str) -> None:
        await asyncio.sleep(64 * T1)  # Timer J/I: absorb retransmissions, then forget
        self.dialogs.pop(call_id, None)

    def _respond(self, dialog: _Dialog, message: SipMessage) -> None:
        dialog.last_response = message.encode()
        self._send(dialog.last_response, dialog.peer)

    def _send(self, data: bytes, addr: tuple[str, int]) -> None:
        stream = self.streams.get(addr)  # a TCP peer is answered on its connection
        if stream is not None:
            stream.write(data)
        elif self.transport is not None:
            self.transport.sendto(data, addr)

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


_ECHOED = {
    "via": "via", "v": "via", "from": "from", "f": "from", "to": "to", "t": "to",
    "call-id": "call-id", "i": "call-id", "cseq": "cseq",
}  # fmt: skip
"""The headers a 400 copies from the request it could not parse (name -> long form)."""


_EVENT_PAYLOAD = 101
"""The RFC 4733 telephone-event payload type of the calls we place."""


def _tag_of(header_value: str) -> str:
    found = re.search(r";\s*tag=([^;,\s]+)", header_value, re.I)
    return found.group(1) if found else ""


def _same(media: RtpMedia) -> RtpMedia:
    return media


class _SipStream(asyncio.Protocol):
    """SIP over one TCP connection (RFC 3261 18.3): messages framed by Content-Length, which
    a stream must carry; a message that cannot be framed closes the connection."""

    def __init__(self, ua: SipUserAgent) -> None:
        self.ua = ua
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] = ("", 0)
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        host, port = self.transport.get_extra_info("peername")[:2]
        self.peer = (str(host), int(port))
        open_here = sum(peer[0] == self.peer[0] for peer in self.ua.streams)
        if open_here >= self.ua.settings.tcp_per_address:
            self.transport.abort()  # one address may not hold every descriptor
            return
        self.ua.streams[self.peer] = self.transport
        self._arm()

    def _arm(self) -> None:
        """Close the connection after ``tcp_idle_s`` with nothing received, unless a call
        still lives on it (its BYE and re-INVITEs come this way)."""
        if self._idle is not None:
            self._idle.cancel()
        loop = asyncio.get_running_loop()
        self._idle = loop.call_later(self.ua.settings.tcp_idle_s, self._idle_out)

    def _idle_out(self) -> None:
        in_call = any(d.peer == self.peer and not d.closed for d in self.ua.dialogs.values())
        if in_call and not self.buffer:
            self._arm()
        elif self.transport is not None:
            self.transport.abort()  # half-open, or a half-sent message: gone

    def data_received(self, data: bytes) -> None:
        self._arm()
        self.buffer += data
        while self.buffer:
            if self.buffer.startswith(b"\r\n"):  # keep-alive
                del self.buffer[:2]
                continue
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_MESSAGE_BYTES:
                    self._drop()
                return
            length = _FRAME_LENGTH.search(bytes(self.buffer[:end]))
            if length is None or int(length.group(1)) > MAX_MESSAGE_BYTES:
                self._drop()
                return
            total = end + 4 + int(length.group(1))
            if len(self.buffer) < total:
                return
            message = bytes(self.buffer[:total])
            del self.buffer[:total]
            self.ua.datagram_received(message, self.peer)

    def _drop(self) -> None:
        self.ua.malformed += 1
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle is not None:
            self._idle.cancel()
        if self.ua.streams.get(self.peer) is self.transport:
            self.ua.streams.pop(self.peer, None)


_FRAME_LENGTH = re.compile(rb"(?im)^(?:content-length|l)[ \t]*:[ \t]*(\d{1,6})[ \t]*$")
