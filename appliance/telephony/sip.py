"""SIP messages (RFC 3261): a strict parser and a serializer.

A datagram that is not a well-formed SIP message raises ``SipParseError``; the user agent
answers a malformed *request* with 400 and drops a malformed response, as RFC 3261 18.3 and
RFC 4475 expect. Header names are case-insensitive and compact forms (``v``, ``f``, ``t``,
``i``, ``m``, ``l``, ``c``, ``k``) are expanded; repeated headers keep their order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from appliance.core.errors import ApplianceError

MAX_MESSAGE_BYTES = 65_535
MAX_HEADERS = 100
_COMPACT = {
    "v": "via",
    "f": "from",
    "t": "to",
    "i": "call-id",
    "m": "contact",
    "l": "content-length",
    "c": "content-type",
    "k": "supported",
    "s": "subject",
    "e": "content-encoding",
}
_TOKEN = re.compile(r"^[A-Za-z0-9.!%*_+`'~-]+$")
_REQUEST_LINE = re.compile(r"^([A-Za-z0-9.!%*_+`'~-]+) (\S+) SIP/(\d+\.\d+)$")
_ABSOLUTE_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S")
_SINGLE = ("call-id", "cseq", "from", "to", "max-forwards", "content-length", "content-type")
"""Headers that may appear once (RFC 3261 7.3.1, RFC 4475 3.3.8/3.3.9)."""
_STATUS_LINE = re.compile(r"^SIP/2\.0 ([1-6]\d\d) (.*)$")
REASONS = {
    100: "Trying",
    180: "Ringing",
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    406: "Not Acceptable",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    481: "Call/Transaction Does Not Exist",
    486: "Busy Here",
    487: "Request Terminated",
    489: "Bad Event",
    488: "Not Acceptable Here",
    500: "Server Internal Error",
    503: "Service Unavailable",
    505: "Version Not Supported",
    513: "Message Too Large",
}


class SipParseError(ApplianceError):
    """``status``: what a malformed request is answered with (400, or 505 for another SIP
    version)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__("sip.parse", message)
        self.status = status


@dataclass
class SipMessage:
    start: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    # -- the start line --------------------------------------------------------------------

    @property
    def is_request(self) -> bool:
        return not self.start.startswith("SIP/2.0 ")

    @property
    def method(self) -> str:
        return self.start.split(" ", 1)[0] if self.is_request else ""

    @property
    def uri(self) -> str:
        return self.start.split(" ")[1] if self.is_request else ""

    @property
    def status(self) -> int:
        return 0 if self.is_request else int(self.start.split(" ")[1])

    # -- headers ---------------------------------------------------------------------------

    def get(self, name: str, default: str = "") -> str:
        key = name.lower()
        for header, value in self.headers:
            if header == key:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        key = name.lower()
        return [value for header, value in self.headers if header == key]

    def set(self, name: str, value: str) -> None:
        key = name.lower()
        self.headers = [(h, v) for h, v in self.headers if h != key] + [(key, value)]

    @property
    def call_id(self) -> str:
        return self.get("call-id")

    @property
    def cseq(self) -> tuple[int, str]:
        number, _, method = self.get("cseq").partition(" ")
        return int(number), method.strip()

    @property
    def branch(self) -> str:
        found = re.search(r";\s*branch=([^;,\s]+)", self.get("via"), re.I)
        return found.group(1) if found else ""

    def tag(self, header: str) -> str:
        found = re.search(r";\s*tag=([^;,\s]+)", self.get(header), re.I)
        return found.group(1) if found else ""

    # -- wire format -----------------------------------------------------------------------

    def encode(self) -> bytes:
        self.set("content-length", str(len(self.body)))
        lines = [self.start] + [f"{_canonical(h)}: {v}" for h, v in self.headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + self.body


def _canonical(name: str) -> str:
    special = {"call-id": "Call-ID", "cseq": "CSeq", "www-authenticate": "WWW-Authenticate"}
    return special.get(name, "-".join(part.capitalize() for part in name.split("-")))


def parse(data: bytes) -> SipMessage:
    """Parse one datagram; raise SipParseError saying what is wrong."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise SipParseError("message too large")
    head, separator, body = data.partition(b"\r\n\r\n")
    if not separator:
        raise SipParseError("no blank line after the headers")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SipParseError("headers are not UTF-8") from exc
    lines = text.split("\r\n")
    start = lines[0]
    request = _REQUEST_LINE.match(start)
    if not (request or _STATUS_LINE.match(start)):
        raise SipParseError("bad start line")
    if request and request.group(3) != "2.0":
        raise SipParseError(f"SIP/{request.group(3)} is not supported", 505)
    if request and not _ABSOLUTE_URI.match(request.group(2)):
        raise SipParseError("the Request-URI is not an absolute URI")  # e.g. <sip:a@b>
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):  # folded continuation (RFC 3261 7.3.1)
            if not headers:
                raise SipParseError("continuation without a header")
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line.strip()}")
            continue
        name, colon, value = line.partition(":")
        name = name.strip()
        if not colon or not _TOKEN.match(name):
            raise SipParseError("malformed header line")
        key = _COMPACT.get(name.lower(), name.lower()) if len(name) == 1 else name.lower()
        headers.append((key, value.strip()))
        if len(headers) > MAX_HEADERS:
            raise SipParseError("too many headers")
    message = SipMessage(start, headers, body)
    for required in ("via", "call-id", "cseq", "from", "to"):
        if not message.get(required):
            raise SipParseError(f"missing {required} header")
    for single in _SINGLE:
        if len(message.get_all(single)) > 1:
            raise SipParseError(f"more than one {single} header")
    for named in ("from", "to", "contact"):
        if any(re.sub(r"\\.", "", v).count('"') % 2 for v in message.get_all(named)):
            raise SipParseError(f"unterminated quoted string in {named}")
    hops = message.get("max-forwards")
    if hops and not (hops.isascii() and hops.isdigit() and int(hops) <= 255):
        raise SipParseError("malformed Max-Forwards")
    cseq = re.fullmatch(r"(\d{1,10}) ([A-Za-z]+)", message.get("cseq"))
    if cseq is None or int(cseq.group(1)) >= 2**31:
        raise SipParseError("malformed CSeq")
    if message.is_request and cseq.group(2) != message.method:
        raise SipParseError("CSeq method differs from the request method")
    length = message.get("content-length")
    if length:
        if not (length.isascii() and length.isdigit()):
            raise SipParseError("malformed Content-Length")
        if int(length) > len(body):
            raise SipParseError("body shorter than Content-Length")
        message.body = body[: int(length)]
    return message


def response(request: SipMessage, status: int, *, to_tag: str = "", reason: str = "") -> SipMessage:
    """A response to ``request`` (RFC 3261 8.2.6): Via, From, Call-ID, CSeq copied; To with
    our tag once a dialog exists."""
    start = f"SIP/2.0 {status} {reason or REASONS.get(status, 'Unknown')}"
    headers = [(h, v) for h, v in request.headers if h == "via"]
    to = request.get("to")
    if to_tag and ";tag=" not in to.lower():
        to = f"{to};tag={to_tag}"
    headers += [
        ("from", request.get("from")),
        ("to", to),
        ("call-id", request.call_id),
        ("cseq", request.get("cseq")),
    ]
    return SipMessage(start, headers)


def uri_of(header_value: str) -> str:
    """The URI inside a From/To/Contact value (``"Name" <sip:a@b>;tag=x`` -> ``sip:a@b``)."""
    found = re.search(r"<([^>]+)>", header_value)
    return (found.group(1) if found else header_value.split(";")[0]).strip()


def user_of(header_value: str) -> str:
    found = re.match(r"sips?:([^@;>]+)@", uri_of(header_value))
    return found.group(1) if found else ""
