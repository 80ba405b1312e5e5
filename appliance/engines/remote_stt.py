"""Speech recognition on the organization's GPU host: a Wyoming server (``wyoming-faster-whisper``,
the Home Assistant project's) behind a TLS terminator (stunnel), with a pinned CA, and the
fallback to the node's own Whisper while it cannot answer.

The Wyoming protocol is small and written here with the standard library: each event is one
JSON line (``type``, ``data_length``, ``payload_length``), then that many bytes of JSON data,
then that many bytes of payload. A transcription is ``transcribe``, ``audio-start``,
``audio-chunk`` events carrying 16-bit PCM, ``audio-stop``; the server answers ``transcript``
and closes the connection. ``describe`` is answered with ``info``.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable
from typing import Any, BinaryIO, Protocol

from appliance.core.errors import SttError
from appliance.core.ports import Transcriber, Transcript
from appliance.engines.remote import Backend, RemoteHealth, pinned_context, translated

__all__ = ["Backend", "FallbackTranscriber", "RemoteSttError", "WyomingTranscriber", "local_only"]

log = logging.getLogger(__name__)

CHUNK_BYTES = 8192
"""PCM per audio-chunk event (a quarter of a second at 16 kHz)."""
MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 1 << 20
MAX_EVENTS = 64
"""Events read while waiting for the transcript, at most (a server may send others first)."""


class RemoteSttError(SttError):
    """The remote recognizer could not answer: refused or unreachable, its certificate did not
    verify, it timed out, or it broke the protocol. The message names what failed, never what
    was said."""


class WyomingTranscriber:
    """A ``Transcriber`` answered by the Wyoming server at ``host:port`` over TLS."""

    def __init__(
        self, host: str, port: int, ca_file: str, *, language: str = "en", timeout_s: float = 10.0
    ) -> None:
        self.host, self.port = host, port
        self.language = language
        self.timeout_s = timeout_s
        self._context = pinned_context(ca_file, RemoteSttError, "stt")

    @property
    def where(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"wyoming+tls://{host}:{self.port}"

    def _exchange(
        self, events: list[tuple[str, dict[str, Any], bytes]], answer: str
    ) -> dict[str, Any]:
        """Send ``events`` on a new connection and return the data of the first ``answer``,
        all within ``timeout_s`` (connecting, the handshake, sending, and the wait)."""
        deadline = time.monotonic() + self.timeout_s

        def left() -> float:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            return remaining

        try:
            with (
                socket.create_connection((self.host, self.port), timeout=left()) as raw,
                self._context.wrap_socket(raw, server_hostname=self.host) as tls,
            ):
                tls.settimeout(left())
                tls.sendall(b"".join(_event(kind, data, payload) for kind, data, payload in events))
                with tls.makefile("rb") as stream:
                    for _ in range(MAX_EVENTS):
                        tls.settimeout(left())
                        kind, data = _read_event(stream, self.where)
                        if kind == answer:
                            return data
        except RemoteSttError:
            raise
        except Exception as exc:
            error = translated(exc, self.where, RemoteSttError, "stt")
            raise error from exc
        raise RemoteSttError("stt.remote_protocol", f"{self.where} sent no {answer}")

    def transcribe(self, pcm: bytes, sample_rate_hz: int) -> Transcript:
        started = time.perf_counter()
        audio: dict[str, Any] = {"rate": sample_rate_hz, "width": 2, "channels": 1}
        events: list[tuple[str, dict[str, Any], bytes]] = [
            ("transcribe", {"language": self.language} if self.language else {}, b"")
        ]
        events.append(("audio-start", audio, b""))
        events += [
            ("audio-chunk", audio, pcm[i : i + CHUNK_BYTES])
            for i in range(0, len(pcm), CHUNK_BYTES)
        ]
        events.append(("audio-stop", {}, b""))
        data = self._exchange(events, "transcript")
        text = data.get("text")
        if not isinstance(text, str):
            raise RemoteSttError(
                "stt.remote_protocol", f"{self.where} sent a transcript without text"
            )
        return Transcript(
            text=text.strip(),
            audio_duration_s=len(pcm) / 2 / sample_rate_hz,
            processing_s=time.perf_counter() - started,
            language=str(data.get("language") or self.language),
        )

    def models(self) -> list[str]:
        """The models the server says it serves (``describe``): what ``appliance doctor`` asks."""
        info = self._exchange([("describe", {}, b"")], "info")
        try:
            return [
                str(m.get("name", "")) for p in info.get("asr", []) for m in p.get("models", [])
            ]
        except (AttributeError, TypeError) as exc:
            raise RemoteSttError(
                "stt.remote_protocol", f"{self.where} sent an info that is not one"
            ) from exc


def _event(kind: str, data: dict[str, Any], payload: bytes) -> bytes:
    body = json.dumps(data).encode() if data else b""
    header: dict[str, Any] = {"type": kind}
    if body:
        header["data_length"] = len(body)
    if payload:
        header["payload_length"] = len(payload)
    return json.dumps(header).encode() + b"\n" + body + payload


def _read_event(stream: BinaryIO, where: str) -> tuple[str, dict[str, Any]]:
    line = stream.readline(MAX_HEADER_BYTES + 1)
    if not line:
        raise RemoteSttError(
            "stt.remote_lost", f"{where} closed the connection without a transcript"
        )
    try:
        header = json.loads(line)
        kind = str(header["type"])
        data = dict(header.get("data") or {})
        length, skip = int(header.get("data_length") or 0), int(header.get("payload_length") or 0)
    except (ValueError, KeyError, TypeError) as exc:
        raise RemoteSttError(
            "stt.remote_protocol", f"{where} sent a header that is not an event"
        ) from exc
    if not (0 <= length <= MAX_BODY_BYTES and 0 <= skip <= MAX_BODY_BYTES):
        raise RemoteSttError("stt.remote_protocol", f"{where} sent an event too large")
    body, payload = stream.read(length) if length else b"", stream.read(skip) if skip else b""
    if len(body) < length or len(payload) < skip:
        raise RemoteSttError("stt.remote_lost", f"{where} closed the connection inside an event")
    if length:
        try:
            data.update(json.loads(body))
        except (ValueError, TypeError) as exc:
            raise RemoteSttError(
                "stt.remote_protocol", f"{where} sent event data that is not JSON"
            ) from exc
    return kind, data


class LocalTranscriber(Protocol):
    """The node's own recognizer (engines.stt.WhisperTranscriber), the fallback."""

    hint: str

    def transcribe(self, pcm: bytes, sample_rate_hz: int) -> Transcript: ...


class FallbackTranscriber(RemoteHealth):
    """The remote recognizer while it answers, the local one while it cannot: an utterance goes
    to the remote unless it failed less than ``retry_s`` ago; when it fails, that utterance is
    the local model's, and the remote is marked down until ``retry_s`` has passed. The words
    to expect (``hint``) are the local model's: the remote's are its own ``--initial-prompt``."""

    def __init__(
        self,
        remote: WyomingTranscriber,
        local: LocalTranscriber,
        *,
        retry_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            "remote speech recognition", remote.where, log, retry_s=retry_s, clock=clock
        )
        self.remote = remote
        self.local = local

    @property
    def hint(self) -> str:
        return self.local.hint

    @hint.setter
    def hint(self, words: str) -> None:
        self.local.hint = words

    def transcribe(self, pcm: bytes, sample_rate_hz: int) -> Transcript:
        remote = self.transcribe_remote(pcm, sample_rate_hz)
        return remote if remote is not None else self.transcribe_local(pcm, sample_rate_hz)

    def transcribe_remote(self, pcm: bytes, sample_rate_hz: int) -> Transcript | None:
        """The remote's transcript, or None while it is down or when it fails now."""
        if not self._try_remote():
            return None
        try:
            transcript = self.remote.transcribe(pcm, sample_rate_hz)
        except RemoteSttError as exc:
            self._failed(exc.code)
            return None
        self._answered(Backend.REMOTE)
        return transcript

    def transcribe_local(self, pcm: bytes, sample_rate_hz: int) -> Transcript:
        self._answered(Backend.LOCAL)
        return self.local.transcribe(pcm, sample_rate_hz)


def local_only(stt: Transcriber) -> Transcriber:
    """The node's own recognizer of ``stt``: what recognizes words that may not leave the node
    (a consent answer, before the caller has agreed to anything)."""
    return stt.local if isinstance(stt, FallbackTranscriber) else stt
