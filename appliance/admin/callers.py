"""The caller directory on the panel (``/callers``): enrol a caller, set a new PIN, enrol or
replace their authenticator (the secret shown once, as its ``otpauth://`` URI and a QR code
drawn here with segno), lock, unlock, remove; as ``appliance callers`` does on the command line.

Roles: admin only. The directory holds callers' numbers and names, and a new PIN, a new
authenticator or an unlock is an account recovery for that caller, the step a social engineer
asks staff for; operators work calls and callbacks without it (least privilege, and what the
data-flow page says: admins).

Every change and read is audited by the store with the panel actor, by pseudonym, never the
number, name, PIN or secret; what the panel refuses before the store (a weak PIN, two PINs that
differ, a malformed number, a removal not confirmed) is audited here the same way. Pages show
numbers masked; a row is addressed by its pseudonym, which the server-side session maps back to
the number, so the browser gets no number it was not given.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from flask import Blueprint, g, render_template, request
from flask.typing import ResponseReturnValue
from markupsafe import Markup

from appliance.admin.access import mask, mask_number, requires
from appliance.core.errors import ApplianceError, DirectoryError
from appliance.core.ports import CredentialKind, EntryState
from appliance.identity.directory import new_totp_secret, pin_record, provisioning_uri
from appliance.storage.directory import DirectoryView
from appliance.storage.repository import Storage

ISSUER = "Voice Appliance"
"""The name an authenticator app shows, as ``appliance callers enrol-totp`` names it."""
HANDLE = re.compile(r"[0-9a-f]{16}")
"""A row's name on the page: the first 16 hex digits of the caller's pseudonym, as the audit
trail names the entry (``caller:<handle>``)."""
STATUS = {
    "directory.unknown": 404,
    "directory.exists": 409,
    "directory.credential_exists": 409,
    "directory.integrity": 409,
}
"""The HTTP status of a refusal (any other: 400, the input was wrong)."""
AUDIT_ACTION = {
    "add": "directory_add",
    "find": "directory_read",
    "pin": "directory_credential",
    "totp": "directory_credential",
    "lock": "directory_lock",
    "unlock": "directory_unlock",
    "remove": "directory_remove",
}
REFUSED_HERE = {
    "directory.bad_number",
    "directory.bad_name",
    "directory.bad_pin",
    "directory.weak_pin",
    "directory.pin_mismatch",
    "directory.unconfirmed",
    "directory.bad_action",
}
"""Refusals made before the store audits anything: the panel audits them itself."""


@dataclass(frozen=True)
class CallerRow:
    """One enrolled caller as a page shows them: the number masked, the factors by kind."""

    handle: str
    number: str
    name: str
    locked: bool
    factors: tuple[str, ...]
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class Enrolment:
    """A new authenticator secret, shown this once: its URI and the QR code of it (SVG)."""

    uri: str
    qr_svg: Markup


def callers_blueprint(storage: Storage, actor: Callable[[], str]) -> Blueprint:
    callers = Blueprint("callers", __name__)

    def remember(view: DirectoryView) -> CallerRow:
        """The row of ``view``, its handle kept in the session (on the server)."""
        handle = storage.caller_hash(view.number)[:16]
        g.panel.data[f"caller:{handle}"] = view.number
        return CallerRow(
            handle=handle,
            number=mask_number(view.number),
            name=mask(view.name),
            locked=view.state is EntryState.LOCKED,
            factors=view.factors,
            created_at=view.created_at.isoformat(sep=" ", timespec="minutes"),
            updated_at=view.updated_at.isoformat(sep=" ", timespec="minutes"),
        )

    def listing(
        error: str = "", notice: str = "", status: int = 200, form: dict[str, str] | None = None
    ) -> ResponseReturnValue:
        rows: list[CallerRow] = []
        try:
            views = storage.directory(actor())
        except ApplianceError as exc:  # an entry that does not open: say so, no 500
            error = error or exc.message
        else:
            for key in [k for k in g.panel.data if k.startswith("caller:")]:
                del g.panel.data[key]  # the list is the whole directory: handles of now
            rows = [remember(view) for view in views]
        page = render_template(
            "callers.html", rows=rows, error=error, notice=notice, form=form or {}
        )
        return page, status

    def render_entry(
        view: DirectoryView,
        error: str = "",
        notice: str = "",
        status: int = 200,
        enrolment: Enrolment | None = None,
    ) -> ResponseReturnValue:
        page = render_template(
            "caller.html", row=remember(view), error=error, notice=notice, enrolment=enrolment
        )
        return page, status

    def entry_page(
        number: str,
        error: str = "",
        notice: str = "",
        status: int = 200,
        enrolment: Enrolment | None = None,
    ) -> ResponseReturnValue:
        """The entry of ``number`` as it is now (an audited read), else the list saying why."""
        try:
            view = storage.directory_entry(number, actor())
        except ApplianceError as exc:  # removed meanwhile, or it does not open
            return listing(error=exc.message, status=STATUS.get(exc.code, 400))
        return render_entry(view, error, notice, status, enrolment)

    def refused(action: str, obj: str, exc: ApplianceError) -> None:
        if exc.code in REFUSED_HERE:
            details = {"code": exc.code}
            if action in ("pin", "totp"):
                details["kind"] = action
            storage.log_event(
                actor(), AUDIT_ACTION.get(action, "directory_action"), obj, "refused", details
            )

    @callers.route("/callers", methods=["GET", "POST"])
    @requires("admin")
    def directory() -> ResponseReturnValue:
        """The list, and two forms: add a caller, find one by number."""
        if request.method == "GET":
            return listing()
        action = request.form.get("action", "")
        number = request.form.get("number", "").strip()[:64]
        name = request.form.get("name", "").strip()
        try:
            if action == "add":
                storage.add_caller(number, name, actor())
                return entry_page(number, notice="Enrolled. Next: a PIN or an authenticator.")
            if action == "find":
                return render_entry(storage.directory_entry(number, actor()))
            raise DirectoryError("directory.bad_action", f"no action “{action[:32]}” here")
        except ApplianceError as exc:
            refused(action, "directory", exc)
            form = {"number": number, "name": name} if action == "add" else {"find": number}
            return listing(error=exc.message, status=STATUS.get(exc.code, 400), form=form)

    @callers.route("/callers/<handle>", methods=["GET", "POST"])
    @requires("admin")
    def entry(handle: str) -> ResponseReturnValue:
        """One caller: their factors and state, and a form per change."""
        number = g.panel.data.get(f"caller:{handle}") if HANDLE.fullmatch(handle) else None
        if number is None:
            return listing(
                error="That caller is not in the list as this session last saw it (removed, "
                "or the page is old): find them below by number.",
                status=404,
            )
        if request.method == "GET":
            return entry_page(number)
        action = request.form.get("action", "")
        try:
            notice, enrolment = change(action, number)
        except ApplianceError as exc:
            refused(action, f"caller:{handle}", exc)
            return entry_page(number, error=exc.message, status=STATUS.get(exc.code, 400))
        if action == "remove":
            g.panel.data.pop(f"caller:{handle}", None)
            return listing(notice=notice)
        return entry_page(number, notice=notice, enrolment=enrolment)

    def change(action: str, number: str) -> tuple[str, Enrolment | None]:
        """Do ``action`` to the entry of ``number``: what to tell the admin, and a new
        authenticator's enrolment to show once."""
        form = request.form
        if action == "pin":
            pin = form.get("pin", "")
            if pin != form.get("pin_again", ""):
                raise DirectoryError("directory.pin_mismatch", "the two PINs differ")
            record = pin_record(pin)  # refused before the store sees it: weak, or not digits
            replaced = storage.set_credential(number, CredentialKind.PIN, record, actor())
            return ("PIN reset." if replaced else "PIN set."), None
        if action == "totp":
            import segno  # the QR code before the secret is stored: one not shown is not kept

            secret = new_totp_secret()
            uri = provisioning_uri(secret, number, ISSUER)
            svg = segno.make(uri, error="m").svg_inline(
                scale=4, light="#fff", svgclass="qr", title="the authenticator's QR code"
            )
            replace = form.get("replace") == "yes"
            replaced = storage.set_credential(
                number, CredentialKind.TOTP, secret, actor(), replace=replace
            )
            notice = "Authenticator replaced." if replaced else "Authenticator enrolled."
            return notice, Enrolment(uri, Markup(svg))  # segno's markup, no input in it
        if action in ("lock", "unlock"):
            locked = action == "lock"
            changed = storage.set_locked(number, locked, actor())
            state = "Locked" if locked else "Unlocked"
            return (f"{state}." if changed else f"Already {state.lower()}."), None
        if action == "remove":
            if form.get("confirm") != "yes":
                raise DirectoryError(
                    "directory.unconfirmed",
                    "tick 'remove for good' to remove a caller: their key is destroyed, and "
                    "that cannot be undone",
                )
            storage.remove_caller(number, actor())
            return "Removed: the entry and its factors are gone, its key destroyed.", None
        raise DirectoryError("directory.bad_action", f"no action “{action[:32]}” here")

    return callers
