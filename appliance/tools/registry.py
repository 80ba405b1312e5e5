"""The tool registry: validation before a tool runs, level and confirmation checks, audit."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from appliance.core.errors import ApplianceError
from appliance.identity.levels import Assurance


class ToolError(ApplianceError):
    """A tool call was refused (unknown or disabled tool, bad arguments, not allowed yet)."""


class StepUpRequired(ToolError):
    def __init__(self, tool: str, needed: Assurance, has: Assurance) -> None:
        super().__init__(
            "tools.step_up", f"{tool} needs assurance level {int(needed)}, caller has {int(has)}"
        )
        self.needed = needed


class ConfirmationRequired(ToolError):
    def __init__(self, tool: str) -> None:
        super().__init__("tools.confirm", f"{tool} changes data: the caller must confirm it first")


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # "string", "integer", "date", "choice"
    description: str
    required: bool = True
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None
    max_length: int = 200
    pattern: str = ""
    ask: str = ""
    """How the agent asks the caller for it when they did not say it."""

    def schema(self) -> dict[str, Any]:
        if self.kind == "integer":
            schema: dict[str, Any] = {"type": "integer"}
            if self.minimum is not None:
                schema["minimum"] = self.minimum
            if self.maximum is not None:
                schema["maximum"] = self.maximum
            return schema
        if self.kind == "choice":
            return {"type": "string", "enum": list(self.choices)}
        if self.kind == "date":
            # llama.cpp's schema-to-grammar converter knows character classes, not \d.
            return {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}
        schema = {"type": "string", "maxLength": self.max_length}
        if self.pattern:
            schema["pattern"] = self.pattern.replace(r"\d", "[0-9]")
        return schema

    def coerce(self, value: Any) -> Any:
        """The typed value, or ToolError: arguments are checked before any tool sees them."""
        where = f"parameter {self.name!r}"
        if self.kind == "integer":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ToolError("tools.invalid_args", f"{where} must be a whole number")
            if (self.minimum is not None and value < self.minimum) or (
                self.maximum is not None and value > self.maximum
            ):
                raise ToolError("tools.invalid_args", f"{where} is out of range")
            return value
        if not isinstance(value, str):
            raise ToolError("tools.invalid_args", f"{where} must be text")
        if self.kind == "choice":
            if value not in self.choices:
                raise ToolError(
                    "tools.invalid_args", f"{where} must be one of {list(self.choices)}"
                )
            return value
        if self.kind == "date":
            try:
                return dt.date.fromisoformat(value)
            except ValueError as exc:
                raise ToolError(
                    "tools.invalid_args", f"{where} must be a date (YYYY-MM-DD)"
                ) from exc
        if len(value) > self.max_length or (self.pattern and not re.fullmatch(self.pattern, value)):
            raise ToolError("tools.invalid_args", f"{where} is not valid")
        return value


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    params: tuple[Param, ...]
    scopes: tuple[str, ...]
    changes_data: bool
    required_level: Assurance
    handler: Callable[[str, Mapping[str, Any]], str]
    """(caller reference, validated arguments) -> what the agent may say."""
    triggers: tuple[str, ...] = ()
    """Regular expressions of a request for this tool's action (matched on the lower-cased
    words): "move ... appointment", "speak to a person". A request that matches makes the tool
    a candidate; questions about a subject ("what do I bring to my appointment") do not."""

    def triggered_by(self, text: str) -> bool:
        words = " ".join(re.findall(r"[a-z0-9']+", text.lower()))
        return any(re.search(pattern, words) for pattern in self.triggers)

    def summary(self, values: Mapping[str, Any]) -> str:
        """What the tool will do, in words the caller confirms."""
        detail = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in values.items())
        return f"{self.description.rstrip('.')}{': ' + detail if detail else ''}"

    def validate(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        known = {p.name for p in self.params}
        unknown = set(arguments) - known
        if unknown:
            raise ToolError(
                "tools.invalid_args", f"{self.name}: unknown parameters {sorted(unknown)}"
            )
        values = {}
        for param in self.params:
            if param.name not in arguments:
                if param.required:
                    raise ToolError("tools.invalid_args", f"{self.name}: {param.name!r} is missing")
                continue
            values[param.name] = param.coerce(arguments[param.name])
        return values

    def describe(self, enabled: bool) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "scopes": list(self.scopes),
            "changes_data": self.changes_data,
            "assurance_level": int(self.required_level),
            "enabled": enabled,
            "parameters": {
                p.name: {**p.schema(), "description": p.description} for p in self.params
            },
        }


AuditHook = Callable[[str, str, Mapping[str, Any], str], None]
"""(caller reference, tool name, arguments, outcome): every call is audited, refused or not."""


@dataclass
class ToolBox:
    """The tools of one deployment: all known, some enabled; the model sees only the enabled."""

    tools: Mapping[str, Tool]
    enabled: frozenset[str]
    audit: AuditHook | None = None
    _log: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        unknown = self.enabled - set(self.tools)
        if unknown:
            raise ToolError("tools.unknown", f"enabled tools that do not exist: {sorted(unknown)}")

    def visible(self) -> list[Tool]:
        return [t for name, t in sorted(self.tools.items()) if name in self.enabled]

    def call_schema(self, only: frozenset[str] | None = None) -> dict[str, Any]:
        """A JSON schema for the model's tool request (the enabled tools, or those of them in
        ``only``, or none), for grammar-constrained output."""
        options: list[dict[str, Any]] = [
            {
                "type": "object",
                "properties": {
                    "tool": {"const": tool.name},
                    "arguments": {
                        "type": "object",
                        "properties": {p.name: p.schema() for p in tool.params},
                        "required": [p.name for p in tool.params if p.required],
                        "additionalProperties": False,
                    },
                },
                "required": ["tool", "arguments"],
            }
            for tool in self.visible()
            if only is None or tool.name in only
        ]
        options.append(
            {"type": "object", "properties": {"tool": {"const": "none"}}, "required": ["tool"]}
        )
        return {"oneOf": options}

    def call(
        self,
        caller: str,
        name: str,
        arguments: Mapping[str, Any],
        *,
        level: Assurance,
        confirmed: bool = False,
    ) -> str:
        """Run a tool for ``caller``. ``confirmed`` must come from the caller (a spoken yes or a
        DTMF key captured by the dialogue), never from model text."""
        outcome = "refused"
        try:
            tool = self.tools.get(name)
            if tool is None or name not in self.enabled:
                raise ToolError("tools.disabled", f"tool {name!r} is not available")
            values = tool.validate(arguments)
            if level < tool.required_level:
                raise StepUpRequired(name, tool.required_level, level)
            if tool.changes_data and not confirmed:
                raise ConfirmationRequired(name)
            result = tool.handler(caller, values)
            outcome = "ok"
            return result
        except ToolError as exc:
            outcome = exc.code
            raise
        finally:
            if self.audit is not None:
                self.audit(caller, name, dict(arguments), outcome)
