"""Chat with a local GGUF model through llama-cpp-python, streamed token by token."""

from __future__ import annotations

import contextlib
import json
import queue
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from appliance.core.errors import LlmError, ModelError
from appliance.core.models import ModelSpec, require_verified
from appliance.core.ports import ChatMessage

if TYPE_CHECKING:
    from llama_cpp import Llama


class LlamaChat:
    """One model shared by every call, with ``contexts`` llama.cpp contexts (each its own KV
    cache; the weights are one memory map): that many replies can be generated at once, their
    tokens interleaved by the caller (pipeline.scheduling), and a generation holds its context
    until it ends.

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
        contexts: int = 1,
    ) -> None:
        require_verified(spec)
        from llama_cpp import Llama

        self._free: queue.Queue[Llama] = queue.Queue()
        try:
            for _ in range(contexts):
                self._free.put(
                    Llama(
                        model_path=str(spec.path),
                        n_ctx=context_tokens,
                        n_threads=threads,
                        n_threads_batch=threads,
                        seed=seed,
                        verbose=False,
                    )
                )
        except Exception as exc:
            raise ModelError("model.load", f"cannot load GGUF model {spec.path}: {exc}") from exc
        self.contexts = contexts
        self._temperature = temperature
        self._repeat_penalty = repeat_penalty
        self.spec = spec
        self.last_stats: dict[str, float] = {}

    @contextlib.contextmanager
    def _context(self, wait_s: float = 60.0) -> Iterator[Llama]:
        """A free context for one generation (the pipeline never asks for more than exist)."""
        try:
            llama = self._free.get(timeout=wait_s)
        except queue.Empty as exc:
            raise LlmError("llm.busy", f"no free model context in {wait_s:.0f} s") from exc
        try:
            yield llama
        finally:
            self._free.put(llama)

    def warm_up(self, system_prompt: str) -> None:
        """Evaluate the system prompt in every context so a first turn reuses its prefix."""
        messages: list[Any] = [
            {"role": "system", "content": system_prompt},
            {"role": "user", "content": "Hi"},
        ]
        held = [self._free.get() for _ in range(self.contexts)]
        try:
            for llama in held:
                llama.create_chat_completion(messages=messages, max_tokens=1)
        except Exception as exc:
            raise LlmError("llm.failed", f"warm-up failed: {type(exc).__name__}") from exc
        finally:
            for llama in held:
                self._free.put(llama)

    def request_json(
        self, messages: Sequence[ChatMessage], schema: dict[str, Any], max_tokens: int = 128
    ) -> str:
        """A reply constrained by a llama.cpp grammar built from a JSON schema, so even a small
        model answers with a well-formed tool request."""
        from llama_cpp.llama_grammar import LlamaGrammar

        payload: list[Any] = [{"role": m.role, "content": m.content} for m in messages]
        try:
            grammar = LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
            with self._context() as llama:
                result: Any = llama.create_chat_completion(
                    messages=payload, max_tokens=max_tokens, temperature=0.0, grammar=grammar
                )
        except Exception as exc:
            raise LlmError(
                "llm.failed", f"constrained generation failed: {type(exc).__name__}"
            ) from exc
        return str(result["choices"][0]["message"]["content"] or "")

    def stream_chat(self, messages: Sequence[ChatMessage], max_tokens: int) -> Iterator[str]:
        payload: list[Any] = [{"role": m.role, "content": m.content} for m in messages]
        with self._context() as llama:
            started = time.perf_counter()
            first = 0.0
            n_tokens = 0
            try:
                stream = llama.create_chat_completion(
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
