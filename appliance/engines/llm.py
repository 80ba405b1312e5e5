"""Chat with a local GGUF model through llama-cpp-python, streamed token by token."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from appliance.core.errors import LlmError, ModelError
from appliance.core.models import ModelSpec, require_verified
from appliance.core.ports import ChatMessage


class LlamaChat:
    """One loaded model shared by every call; generations take turns on a lock.

    llama.cpp keeps the KV cache of the previous prompt and reuses its longest common prefix,
    so the system prompt (the same for every turn and call) is evaluated once at warm-up.
    """

    def __init__(
        self,
        spec: ModelSpec,
        *,
        context_tokens: int = 2048,
        temperature: float = 0.2,
        repeat_penalty: float = 1.0,
        threads: int = 2,
        seed: int = 7,
    ) -> None:
        require_verified(spec)
        from llama_cpp import Llama

        try:
            self._llama = Llama(
                model_path=str(spec.path),
                n_ctx=context_tokens,
                n_threads=threads,
                n_threads_batch=threads,
                seed=seed,
                verbose=False,
            )
        except Exception as exc:
            raise ModelError("model.load", f"cannot load GGUF model {spec.path}: {exc}") from exc
        self._temperature = temperature
        self._repeat_penalty = repeat_penalty
        self._lock = threading.Lock()
        self.spec = spec
        self.last_stats: dict[str, float] = {}

    def warm_up(self, system_prompt: str) -> None:
        """Evaluate the system prompt once so the first turn reuses its cached prefix."""
        messages = [ChatMessage("system", system_prompt), ChatMessage("user", "Hello.")]
        for _ in self.stream_chat(messages, max_tokens=1):
            pass

    def request_json(
        self, messages: Sequence[ChatMessage], schema: dict[str, Any], max_tokens: int = 128
    ) -> str:
        """A reply constrained by a llama.cpp grammar built from a JSON schema, so even a small
        model answers with a well-formed tool request."""
        from llama_cpp.llama_grammar import LlamaGrammar

        payload: list[Any] = [{"role": m.role, "content": m.content} for m in messages]
        try:
            grammar = LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
            with self._lock:
                result: Any = self._llama.create_chat_completion(
                    messages=payload, max_tokens=max_tokens, temperature=0.0, grammar=grammar
                )
        except Exception as exc:
            raise LlmError(
                "llm.failed", f"constrained generation failed: {type(exc).__name__}"
            ) from exc
        return str(result["choices"][0]["message"]["content"] or "")

    def stream_chat(self, messages: Sequence[ChatMessage], max_tokens: int) -> Iterator[str]:
        payload: list[Any] = [{"role": m.role, "content": m.content} for m in messages]
        with self._lock:
            started = time.perf_counter()
            first = 0.0
            n_tokens = 0
            try:
                stream = self._llama.create_chat_completion(
                    messages=payload,
                    max_tokens=max_tokens,
                    temperature=self._temperature,
                    repeat_penalty=self._repeat_penalty,
                    stream=True,
                )
                for chunk in stream:
                    delta: Any = chunk["choices"][0]["delta"]  # type: ignore[index]
                    piece = delta.get("content") if isinstance(delta, dict) else None
                    if piece:
                        n_tokens += 1
                        if n_tokens == 1:
                            first = time.perf_counter() - started
                        yield str(piece)
            except GeneratorExit:
                raise
            except Exception as exc:
                raise LlmError("llm.failed", f"generation failed: {type(exc).__name__}") from exc
            finally:
                elapsed = time.perf_counter() - started
                self.last_stats = {
                    "tokens": float(n_tokens),
                    "ttft_s": first,
                    "elapsed_s": elapsed,
                }
