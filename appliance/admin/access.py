"""Who may use a route, and what of personal data a page shows: the helpers every blueprint of
the panel uses. They live here, not in ``app.py``, so that a blueprint never imports the app
factory that registers it (../shared/STYLE.md: blueprints that own their helpers)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

from flask.typing import ResponseReturnValue

PUBLIC = ("public",)
ALL = ("admin", "operator", "auditor")
View = TypeVar("View", bound=Callable[..., ResponseReturnValue])


def requires(*roles: str) -> Callable[[View], View]:
    """Declare who may use a route; the app refuses everyone else (checked for every route)."""

    def mark(view: View) -> View:
        view.required_roles = roles  # type: ignore[attr-defined]
        return view

    return mark


def mask(text: str | None) -> str:
    """A transcript as an operator sees it without a reason: digits and e-mail hidden."""
    if not text:
        return ""
    text = re.sub(r"\S+@\S+", "[email]", text)
    return re.sub(r"\d", "•", text)


def mask_number(number: str) -> str:
    """A phone number as a list shows it: every digit hidden but the last few (at most four,
    and never more than a third of them), enough to tell entries apart, not to dial one."""
    digits = sum(c.isdigit() for c in number)
    keep = min(4, digits // 3)
    seen = 0
    shown = []
    for c in number:
        if c.isdigit():
            seen += 1
            shown.append(c if seen > digits - keep else "•")
        else:
            shown.append(c)
    return "".join(shown)
