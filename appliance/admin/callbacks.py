"""The callback queue on the panel (``/callbacks``): the callers who asked to be called back
when no one could take a transfer, filtered by state (open, called back, closed), with who
changed each and when; a member of staff marks one called back, or closes it. As
``appliance callbacks`` does on the command line.

Roles: admin and operator. Operators are the staff who call callers back; auditors are not
(the queue opens callers' numbers; what was done with it is in the audit trail they read).

Numbers are masked in the queue; "Show number" shows one, for the call, and is audited
(``callback_reveal``), as a transcript is shown in full only with a reason. The store audits
each list and each change with the panel actor (``callback_called_back``, ``callback_closed``:
request id and pseudonym, never the number); a change the queue refuses is audited here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from flask import Blueprint, render_template, request
from flask.typing import ResponseReturnValue

from appliance.admin.access import mask_number, requires
from appliance.core.errors import ApplianceError
from appliance.core.ports import CallbackState
from appliance.storage.callbacks import CallbackView
from appliance.storage.repository import Storage

FILTERS: dict[str, CallbackState | None] = {
    "open": CallbackState.OPEN,
    "called_back": CallbackState.CALLED_BACK,
    "closed": CallbackState.CLOSED,
    "all": None,
}
CHANGES = {
    "called_back": (CallbackState.CALLED_BACK, {CallbackState.OPEN}),
    "closed": (CallbackState.CLOSED, {CallbackState.OPEN, CallbackState.CALLED_BACK}),
}
"""Each change: the state it sets, and the states it is made from (a closed request is not
reopened, nor one called back marked again)."""
REQUEST_ID = re.compile(r"[0-9A-Za-z-]{1,64}")


def label(state: str) -> str:
    return state.replace("_", " ")


@dataclass(frozen=True)
class CallbackRow:
    """One request as the queue shows it: the number masked unless shown on purpose."""

    id: str
    number: str
    shown: bool
    state: CallbackState
    reason: str
    call_id: str
    created_at: str
    changed_at: str
    changed_by: str


def _row(view: CallbackView, shown: str) -> CallbackRow:
    show = view.id == shown
    return CallbackRow(
        id=view.id,
        number=view.number if show else mask_number(view.number),
        shown=show,
        state=view.state,
        reason=label(view.reason),
        call_id=view.call_id,
        created_at=view.created_at.isoformat(sep=" ", timespec="minutes"),
        changed_at=view.changed_at.isoformat(sep=" ", timespec="minutes"),
        changed_by=view.changed_by,
    )


def callbacks_blueprint(storage: Storage, actor: Callable[[], str]) -> Blueprint:
    callbacks = Blueprint("callbacks", __name__)

    def queue(
        state: str,
        error: str = "",
        notice: str = "",
        status: int = 200,
        shown: str = "",
        views: list[CallbackView] | None = None,
    ) -> ResponseReturnValue:
        rows: list[CallbackRow] = []
        try:
            if views is None:
                views = storage.callbacks(actor(), FILTERS[state])
            rows = [_row(v, shown) for v in views]
        except ApplianceError as exc:  # a request that does not open: say so, no 500
            error = error or exc.message
        page = render_template(
            "callbacks.html",
            rows=rows,
            state=state,
            filters=[(name, label(name)) for name in FILTERS],
            label=label,
            error=error,
            notice=notice,
        )
        return page, status

    @callbacks.route("/callbacks", methods=["GET", "POST"])
    @requires("admin", "operator")
    def manage() -> ResponseReturnValue:
        """The queue (GET, ``?state=``), and its changes (POST: ``id`` and ``action``)."""
        state = request.values.get("state", "open")
        if state not in FILTERS:
            choices = ", ".join(label(name) for name in FILTERS)
            return queue("open", f"no state “{state[:32]}”: one of {choices}", status=400)
        if request.method == "GET":
            return queue(state)
        action = request.form.get("action", "")
        request_id = request.form.get("id", "").strip()
        if not REQUEST_ID.fullmatch(request_id):
            return queue(state, f"“{request_id[:64]}” is not a callback request id", status=400)
        try:
            if action == "show":
                return show(state, request_id)
            if action in CHANGES:
                return change(state, request_id, *CHANGES[action])
        except ApplianceError as exc:  # the request boundary: say what, no 500
            status = 404 if exc.code == "storage.no_callback" else 400
            return queue(state, exc.message, status=status)
        return queue(state, f"no action “{action[:32]}” here", status=400)

    def change(
        state: str, request_id: str, target: CallbackState, sources: set[CallbackState]
    ) -> ResponseReturnValue:
        current = {v.id: v.state for v in storage.callbacks(actor())}.get(request_id)
        if current is not None and current not in sources:
            storage.log_event(
                actor(), f"callback_{target.value}", f"callback:{request_id}", "refused",
                {"state": target.value, "from": current.value},
            )  # fmt: skip
            error = f"request {request_id} is {label(current.value)} already: not changed"
            return queue(state, error, status=409)
        # An unknown id too goes to the store, which audits the attempt, then refuses it.
        storage.set_callback_state(request_id, target, actor())
        return queue(state, notice=f"Request {request_id}: {label(target.value)}.")

    def show(state: str, request_id: str) -> ResponseReturnValue:
        """One request's number in full, to call it (audited)."""
        views = storage.callbacks(actor(), FILTERS[state])
        known = any(v.id == request_id for v in views)
        outcome = "ok" if known else "unknown"
        storage.log_event(actor(), "callback_reveal", f"callback:{request_id}", outcome)
        if not known:
            error = f"no callback request {request_id} among the {label(state)} requests"
            return queue(state, error, status=404, views=views)
        return queue(state, shown=request_id, views=views)

    return callbacks
