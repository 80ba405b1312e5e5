"""The language model on the organization's GPU host: an OpenAI-compatible server (llama.cpp's
own, ``python -m llama_cpp.server``) over TLS with a pinned CA, and the fallback to the local
model while it cannot answer.

Many voice nodes share a few GPU workers this way; everything else of a turn (the guards
around the model included) still runs on the node. Only ``http.client`` and ``ssl``: no new
HTTP dependency.
"""

from __future__ import annotations

import http.client
import json
import logging
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from appliance.core.errors import ApplianceError, LlmError
from appliance.core.ports import ChatMessage
from appliance.engines.remote import Backend, RemoteHealth, pinned_context, translated

__all__ = ["Backend", "FallbackChatModel", "RemoteChatModel", "RemoteLlmError", "Sampling"]

log = logging.getLogger(__name__)


class RemoteLlmError(LlmError):
    """The remote model could not answer: refused or unreachable, its certificate did not
    verify, it timed out, or it answered with an error status. The message names what failed,
    never what was asked."""


@dataclass(frozen=True, slots=True)
class Sampling:
    """The local model's sampling settings, sent where the API has them."""

    temperature: float = 0.2
    repeat_penalty: float = 1.0
    seed: int = 7


class RemoteChatModel:
    """A ``ChatModel`` answered by the remote server: ``/v1/chat/completions`` with
    ``stream: true``, read as server-sent events (``data:`` lines, ``data: [DONE]`` last)."""

    def __init__(
        self,
        host: str,
        port: int,
        base_path: str,
        ca_file: str,
        *,
        model: str,
        timeout_s: float = 10.0,
        api_key: Callable[[], str] | None = None,
        sampling: Sampling | None = None,
    ) -> None:
        self.host, self.port, self.base_path = host, port, base_path.rstrip("/")
        self.model = model
        self.timeout_s = timeout_s
        self._api_key = api_key
        self._sampling = sampling or Sampling()
        self._context = pinned_context(ca_file, RemoteLlmError, "llm")

    @property
    def where(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}{self.base_path}"

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if self._api_key is not None:
            try:
                key = self._api_key()
            except ApplianceError as exc:
                raise RemoteLlmError("llm.remote_key", exc.message) from exc
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _request(
        self, method: str, path: str, body: bytes | None
    ) -> tuple[http.client.HTTPSConnection, http.client.HTTPResponse]:
        connection = http.client.HTTPSConnection(
            self.host, self.port, timeout=self.timeout_s, context=self._context
        )
        try:
            connection.request(method, self.base_path + path, body=body, headers=self._headers())
            response = connection.getresponse()
        except BaseException as exc:
            connection.close()
            if isinstance(exc, RemoteLlmError):
                raise
            if isinstance(exc, Exception):
                raise _translated(exc, self.where) from exc
            raise
        if response.status != 200:
            connection.close()
            raise RemoteLlmError(
                "llm.remote_status", f"{self.where}{path} answered HTTP {response.status}"
            )
        return connection, response

    def models(self) -> list[str]:
        """The ids the server serves (``GET /v1/models``): what ``appliance doctor`` asks."""
        connection, response = self._request("GET", "/models", None)
        try:
            document: Any = json.loads(response.read())
            return [str(m.get("id", "")) for m in document.get("data", [])]
        except (OSError, ValueError, AttributeError) as exc:
            raise _translated(exc, self.where) from exc
        finally:
            connection.close()

    def stream_chat(
        self, messages: Sequence[ChatMessage], max_tokens: int
    ) -> Generator[str, None, None]:
        body = json.dumps(
            {
                "model": self.model,
                "messages": [{"role": m.role, "content": m.content} for m in messages],
                "max_tokens": max_tokens,
                "temperature": self._sampling.temperature,
                "repeat_penalty": self._sampling.repeat_penalty,  # llama.cpp's own field
                "seed": self._sampling.seed,
                "stream": True,
            }
        ).encode()
        connection, response = self._request("POST", "/chat/completions", body)
        try:
            while True:
                try:
                    line = response.readline()
                except Exception as exc:
                    raise _translated(exc, self.where) from exc
                if not line:  # the server closed the stream before [DONE]
                    raise RemoteLlmError("llm.remote_lost", f"{self.where} ended the reply early")
                text = line.decode("utf-8", "replace").strip()
                if not text.startswith("data:"):
                    continue  # blank separators, comments (": ping")
                data = text.removeprefix("data:").strip()
                if data == "[DONE]":
                    return
                try:
                    chunk: Any = json.loads(data)
                    piece = chunk["choices"][0].get("delta", {}).get("content")
                except (ValueError, KeyError, IndexError, AttributeError, TypeError) as exc:
                    raise RemoteLlmError(
                        "llm.remote_protocol", f"{self.where} sent an event that is not a chunk"
                    ) from exc
                if piece:
                    yield str(piece)
        finally:
            connection.close()  # also when the reply is cut short (barge-in)


def _translated(exc: Exception, where: str) -> RemoteLlmError:
    error = translated(exc, where, RemoteLlmError, "llm")
    assert isinstance(error, RemoteLlmError)
    return error


class LocalModel(Protocol):
    """The node's own model (engines.llm.LlamaChat), the fallback."""

    contexts: int

    def stream_chat(self, messages: Sequence[ChatMessage], max_tokens: int) -> Iterator[str]: ...

    def request_json(
        self, messages: Sequence[ChatMessage], schema: dict[str, Any], max_tokens: int = 128
    ) -> str: ...


class FallbackChatModel(RemoteHealth):
    """The remote model while it answers, the local one while it cannot.

    A reply goes to the remote unless it failed less than ``retry_s`` ago. When the remote
    fails before its first piece (refused, TLS, timeout, an error status) that reply is the
    local model's, and the remote is marked down until ``retry_s`` has passed. When it fails
    after pieces were already handed on (some of the reply may have been said), the reply ends
    with ``llm.remote_lost``: the turn boundary then says the fallback reply, as for any model
    that fails mid-reply, rather than the local model starting the answer again over what was
    said; the next reply is the local model's. One log line per change of state, naming the
    code only (never what was asked).

    ``contexts`` is the local model's: a reply that falls back must find a local context free
    (generation runs one step at a time on one thread, so a wait for a context would never
    end). Tool requests (``request_json``, under a grammar) stay on the local model.
    """

    def __init__(
        self,
        remote: RemoteChatModel,
        local: LocalModel,
        *,
        retry_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__("remote LLM", remote.where, log, retry_s=retry_s, clock=clock)
        self.remote = remote
        self.local = local
        self.contexts = local.contexts

    def stream_chat(self, messages: Sequence[ChatMessage], max_tokens: int) -> Iterator[str]:
        if self._try_remote():
            produced = False
            stream = self.remote.stream_chat(messages, max_tokens)
            try:
                for piece in stream:
                    if not produced:
                        produced = True
                        self._answered(Backend.REMOTE)
                    yield piece
                if not produced:  # an empty reply is still an answer
                    self._answered(Backend.REMOTE)
                return
            except RemoteLlmError as exc:
                self._failed(exc.code)
                if produced:
                    raise LlmError(
                        "llm.remote_lost", "the remote model failed in the middle of a reply"
                    ) from exc
            finally:
                stream.close()
        self._answered(Backend.LOCAL)
        yield from self.local.stream_chat(messages, max_tokens)

    def request_json(
        self, messages: Sequence[ChatMessage], schema: dict[str, Any], max_tokens: int = 128
    ) -> str:
        return self.local.request_json(messages, schema, max_tokens)
