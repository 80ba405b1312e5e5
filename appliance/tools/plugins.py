"""Python tools from other distributions, through the ``appliance.tools`` entry point group.

Each entry point names a callable that takes no arguments and returns Tool objects (any
iterable of them). A tool is used only when ``[tools] enabled`` names it, like every other.
A plug-in that fails to load, returns something other than tools, or names a tool that
exists already is a ToolError naming the entry point, so a broken plug-in stops the service
at once instead of leaving a tool silently missing.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points

from appliance.tools.registry import Tool, ToolError

GROUP = "appliance.tools"


def plugin_tools(group: str = GROUP) -> dict[str, Tool]:
    """The tools of every installed plug-in, by name."""
    tools: dict[str, Tool] = {}
    for point in sorted(entry_points(group=group), key=lambda p: p.name):
        for tool in _load(point):
            if tool.name in tools:
                raise ToolError(
                    "tools.plugin",
                    f"plug-in {point.name!r} ({point.value}): tool {tool.name!r} is declared twice",
                )
            tools[tool.name] = tool
    return tools


def _load(point: EntryPoint) -> list[Tool]:
    where = f"plug-in {point.name!r} ({point.value})"
    try:
        factory = point.load()
        made = factory()
        tools = list(made) if isinstance(made, Iterable) else [made]
    except Exception as exc:  # any failure of foreign code: named, with its cause chained
        raise ToolError(
            "tools.plugin", f"{where} failed to load: {type(exc).__name__}: {exc}"
        ) from exc
    wrong = [type(tool).__name__ for tool in tools if not isinstance(tool, Tool)]
    if wrong:
        raise ToolError("tools.plugin", f"{where} returned {wrong[0]}, not Tool objects")
    return tools
