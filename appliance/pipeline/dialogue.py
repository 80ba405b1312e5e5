"""The conversation of one call: the system prompt and a bounded history of exchanges."""

from __future__ import annotations

from dataclasses import dataclass, field

from appliance.core.ports import ChatMessage


@dataclass
class Dialogue:
    """Per-call chat state. Only completed (or interrupted) exchanges enter the history, so
    speculative work that was thrown away never leaks into later prompts."""

    system_prompt: str
    history_turns: int = 6
    _exchanges: list[tuple[str, str]] = field(default_factory=list)

    def messages_for(self, user_text: str) -> list[ChatMessage]:
        messages = [ChatMessage("system", self.system_prompt)]
        kept = self._exchanges[-self.history_turns :] if self.history_turns else []
        for user, assistant in kept:
            messages.append(ChatMessage("user", user))
            messages.append(ChatMessage("assistant", assistant))
        messages.append(ChatMessage("user", user_text))
        return messages

    def commit(self, user_text: str, reply: str) -> None:
        if user_text:
            self._exchanges.append((user_text, reply))
            del self._exchanges[: -max(self.history_turns, 1)]
