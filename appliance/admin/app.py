"""The admin panel's Flask app: one blueprint per area, every route with its roles.

Sessions live on the server (a random token in a ``__Host-`` cookie: Secure, HttpOnly,
SameSite=Strict), rotate at login, end after ``idle_s`` of quiet or ``max_s`` in all, and end
on the server at logout. Every POST carries the session's CSRF token. TOTP enrolment comes
before any page. Responses carry HSTS, a CSP without inline script, frame denial, nosniff and
a referrer policy; every asset is served from here.
"""

from __future__ import annotations

import base64
import datetime as dt
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Flask, abort, g, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from appliance.admin.access import ALL, PUBLIC, mask, requires
from appliance.admin.accounts import AccountError, LoginLimiter, username_of, verify_password
from appliance.admin.api import api_blueprint
from appliance.admin.callbacks import callbacks_blueprint
from appliance.admin.callers import callers_blueprint
from appliance.admin.compliance import compliance_blueprint
from appliance.admin.dashboard import dashboard as dashboard_view
from appliance.admin.dashboard import red_team_trend
from appliance.admin.directory import Directory, LoginSource, Outcome, is_shadow, shadow_name
from appliance.admin.incidents import incidents_blueprint
from appliance.admin.metrics import metrics_blueprint
from appliance.admin.subject_access import subject_access_blueprint
from appliance.admin.vendors import vendors_blueprint
from appliance.compliance.gate import gate_state
from appliance.config.settings import Settings
from appliance.core.errors import ApplianceError, StorageError
from appliance.core.ports import Counters
from appliance.identity.factors import claim_step, totp
from appliance.storage import reports
from appliance.storage.repository import Storage

COOKIE = "__Host-appliance"
HEADERS = {
    "Strict-Transport-Security": "max-age=63072000; includeSubDomains",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'none'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass
class PanelSession:
    csrf: str
    created: float
    seen: float
    username: str = ""
    role: str = ""
    stage: str = "anonymous"  # anonymous -> enrol|totp -> ready
    source: LoginSource = LoginSource.LOCAL
    enrol_secret: bytes = b""
    data: dict[str, str] = field(default_factory=dict)


MAX_SESSIONS = 2000
"""Sessions the panel keeps at once. A session is kept only once it is needed (a form's CSRF
token, a log-in); expired ones are swept; when the store is full, the longest-idle session
that is not logged in makes room, and with none such a new visitor gets 503."""
SWEEP_S = 30.0


def create_app(
    settings: Settings,
    storage: Storage,
    clock: Callable[[], float] = time.time,
    max_sessions: int = MAX_SESSIONS,
    directory: Directory | None = None,
) -> Flask:
    """The panel; ``directory`` (made from ``[ldap]`` when it has a url) adds directory
    log-ins beside the local accounts."""
    options = settings.admin
    if directory is None and settings.ldap.enabled:
        directory = Directory(settings.ldap)
    app = Flask(__name__)
    app.url_map.merge_slashes = False  # "/calls//x" is no call: 404, not a redirect to one
    app.config["SECRET_KEY"] = secrets.token_bytes(32)
    sessions: dict[str, PanelSession] = {}
    app.extensions["panel_sessions"] = sessions
    # Kept in the store: a restart does not reset a lockout (and wall-clock time, the app's).
    limiter = LoginLimiter(
        options.failures_per_account, options.failures_per_address, clock=clock, counters=storage
    )
    swept = [clock()]

    def expired(panel: PanelSession, now: float) -> bool:
        return now - panel.seen > options.idle_s or now - panel.created > options.max_s

    def sweep(now: float) -> None:
        for token in [t for t, panel in sessions.items() if expired(panel, now)]:
            del sessions[token]
        swept[0] = now

    def keep(panel: PanelSession) -> str:
        """Store ``panel`` under a new token (room made first, or 503)."""
        now = clock()
        if now - swept[0] > SWEEP_S or len(sessions) >= max_sessions:
            sweep(now)
        if len(sessions) >= max_sessions:
            idle = [(p.seen, t) for t, p in sessions.items() if p.stage != "ready"]
            if not idle:
                abort(503)  # every kept session is a logged-in user's: none is dropped
            del sessions[min(idle)[1]]
        token = secrets.token_urlsafe(32)
        sessions[token] = panel
        return token

    def fresh() -> PanelSession:
        now = clock()
        return PanelSession(secrets.token_urlsafe(32), now, now)

    def new_session() -> tuple[str, PanelSession]:
        panel = fresh()
        return keep(panel), panel

    def csrf_token() -> str:
        """A form needs its token to come back: from here on the session is kept."""
        panel: PanelSession = g.panel
        if not g.token:
            g.token = keep(panel)
        return panel.csrf

    def actor() -> str:
        return f"admin:{g.panel.username}"

    @app.before_request
    def load_session() -> ResponseReturnValue | None:
        token = request.cookies.get(COOKIE, "")
        panel = sessions.get(token)
        now = clock()
        if panel is not None and expired(panel, now):
            sessions.pop(token, None)
            panel = None
        if panel is None:  # not kept until it is needed (csrf_token, log-in)
            token, panel = "", fresh()
        panel.seen = now
        g.token, g.panel = token, panel
        view = app.view_functions.get(request.endpoint or "")
        roles = getattr(view, "required_roles", None)
        if view is not None and roles is None:
            abort(500)  # a route without declared roles is a bug, never open
        if request.path.startswith("/api/"):  # bearer tokens, not the session
            header = request.headers.get("Authorization", "")
            role = storage.api_token_role(header[7:]) if header.startswith("Bearer ") else None
            g.api_role = role or ""
            if roles is None or roles == PUBLIC:
                return None
            if role is None:
                abort(401)
            if role not in roles:
                abort(403)
            return None
        if request.method == "POST":
            sent = request.form.get("csrf", "")
            if not hmac.compare_digest(sent, panel.csrf):
                abort(403)
        if roles is None or roles == PUBLIC:
            return None
        if panel.stage == "ready" and not _still_allowed(storage, panel):
            sessions.pop(token, None)  # disabled or deleted since it logged in: it ends now
            g.token, g.panel = "", fresh()
            panel = g.panel
        if panel.stage != "ready":
            if request.method == "GET":
                return redirect(url_for("auth.login"))
            abort(401)
        if panel.role not in roles:
            abort(403)
        return None

    @app.after_request
    def headers(response: Any) -> Any:
        for name, value in HEADERS.items():
            response.headers[name] = value
        if g.get("token"):
            response.set_cookie(
                COOKIE, g.token, secure=True, httponly=True, samesite="Strict", path="/"
            )
        return response

    @app.errorhandler(401)
    @app.errorhandler(403)
    @app.errorhandler(404)
    @app.errorhandler(405)
    @app.errorhandler(429)
    @app.errorhandler(400)
    def refused(error: Any) -> ResponseReturnValue:
        if request.path.startswith("/api/"):
            return {"error": error.code, "name": error.name}, error.code
        return render_template("error.html", code=error.code, name=error.name), error.code

    app.jinja_env.globals["csrf"] = csrf_token
    app.register_blueprint(_auth(storage, sessions, new_session, limiter, directory))
    app.register_blueprint(_pages(settings, storage, actor))
    app.register_blueprint(_users(storage, actor))
    app.register_blueprint(api_blueprint(storage))
    app.register_blueprint(compliance_blueprint(settings, storage, actor))
    app.register_blueprint(vendors_blueprint(settings, storage, actor))
    app.register_blueprint(callers_blueprint(storage, actor))
    app.register_blueprint(callbacks_blueprint(storage, actor))
    app.register_blueprint(incidents_blueprint(settings.incidents, storage, actor))
    app.register_blueprint(subject_access_blueprint(storage, actor))
    app.register_blueprint(metrics_blueprint(settings, storage))  # /metrics and /healthz
    static: Any = app.view_functions["static"]
    static.required_roles = PUBLIC
    return app


def _still_allowed(storage: Storage, panel: PanelSession) -> bool:
    """The account of a logged-in session still exists, is enabled and has the same role."""
    user = storage.admin_user(panel.username)
    return user is not None and not user.disabled and user.role == panel.role


def _auth(
    storage: Storage,
    sessions: dict[str, PanelSession],
    new_session: Callable[[], tuple[str, PanelSession]],
    limiter: LoginLimiter,
    directory: Directory | None,
) -> Blueprint:
    auth = Blueprint("auth", __name__)
    used_steps: dict[str, int] = {}
    """Per account, the time step of the last code that logged in: a code is good once, in
    whichever session, and never one older than it."""

    @auth.route("/login", methods=["GET", "POST"])
    @requires(*PUBLIC)
    def login() -> ResponseReturnValue:
        panel: PanelSession = g.panel
        if request.method == "GET":
            return render_template("login.html", stage=panel.stage)
        if panel.stage == "anonymous":
            username = _account_name(request.form.get("username", "")[:64])
            password = request.form.get("password", "")[:256]
            address = request.remote_addr or "?"
            if limiter.blocked(username, address):
                # Counted per address, not per name tried: a spray of names is one kind.
                storage.log_repeated("admin:anonymous", "login", f"address:{address}", "limited")
                return render_template("login.html", stage="anonymous", failed=True), 429
            # A local account (break-glass) decides for its own name; any other name goes to
            # the directory when there is one. Its users' records (ldap:NAME) take no password.
            local = None if is_shadow(username) else storage.admin_user(username)
            if local is None and directory is not None:
                source, user, outcome = LoginSource.DIRECTORY, None, Outcome.REFUSED
                if _plain_name(username):
                    answer = directory.authenticate(username, password)
                    outcome = answer.outcome
                    if outcome is Outcome.OK:
                        user = storage.directory_user(
                            shadow_name(username), answer.role, f"admin:{shadow_name(username)}"
                        )
            else:
                source, outcome = LoginSource.LOCAL, Outcome.REFUSED
                ok = verify_password(local.password_hash if local else None, password)
                user = local if ok else None
            if user is None or user.disabled:
                # The same answer whatever failed; the trail keeps why (a code, no password).
                limiter.failed(username, address)
                details = {"source": source.value, "reason": outcome.value}
                # A name no account has may be a password typed in the wrong field: the trail
                # (and so the SIEM) keeps a keyed pseudonym of it, never the text.
                known = (
                    local is not None
                    or outcome is Outcome.NO_ROLE
                    or storage.admin_user(shadow_name(username)) is not None
                )
                if not known:
                    details["name"] = storage.caller_hash(username)[:16]
                who = f"user:{username}" if known else "user:unknown"
                storage.log_event("admin:anonymous", "login", who, "failed", details)
                return render_template("login.html", stage="anonymous", failed=True), 401
            sessions.pop(g.token, None)  # rotate: a fresh token once the password is right
            g.token, panel = new_session()
            g.panel = panel
            panel.username, panel.role, panel.source = user.username, user.role, source
            if storage.admin_totp(user.username) is None:
                panel.stage, panel.enrol_secret = "enrol", secrets.token_bytes(20)
            else:
                panel.stage = "totp"
            return render_template(
                "login.html", stage=panel.stage, secret=_b32(panel.enrol_secret), user=username
            )
        # The second factor is limited and counted like the password, per account and per
        # address: past the limit even the right code is refused.
        address = request.remote_addr or "?"
        if limiter.blocked(panel.username, address):
            storage.log_repeated(f"admin:{panel.username}", "login_totp", "panel", "limited")
            return render_template(
                "login.html", stage=panel.stage, secret=_b32(panel.enrol_secret), failed=True
            ), 429
        code = re.sub(r"\D", "", request.form.get("code", ""))
        secret = (
            panel.enrol_secret if panel.stage == "enrol" else storage.admin_totp(panel.username)
        )
        # Enrolling needs the account's one-time enrolment code too: a password alone (or a
        # stolen one) must not bind the attacker's authenticator to the account.
        enrolling = panel.stage == "enrol"
        enrolment = request.form.get("enrolment", "")[:64]
        if enrolling and not storage.enrolment_code_ok(panel.username, enrolment):
            secret = None
        if secret is None or not _totp_ok(secret, code, panel.username, used_steps, storage):
            limiter.failed(panel.username, address)
            storage.log_event(f"admin:{panel.username}", "login_totp", "panel", "failed")
            return render_template(
                "login.html", stage=panel.stage, secret=_b32(panel.enrol_secret), failed=True
            ), 401
        if panel.stage == "enrol":
            storage.set_admin_totp(panel.username, panel.enrol_secret, f"admin:{panel.username}")
            panel.enrol_secret = b""
        panel.stage = "ready"
        details = {"source": panel.source.value}
        storage.log_event(f"admin:{panel.username}", "login", "panel", "ok", details)
        return redirect(url_for("pages.dashboard"))

    @auth.route("/logout", methods=["POST"])
    @requires(*ALL)
    def logout() -> ResponseReturnValue:
        storage.log_event(f"admin:{g.panel.username}", "logout", "panel", "ok")
        sessions.pop(g.token, None)  # ended on the server, whatever the browser keeps
        g.token, g.panel = "", PanelSession("", 0.0, 0.0)
        return redirect(url_for("auth.login"))

    return auth


def _account_name(text: str) -> str:
    """The name as accounts are stored ("Root" is root); a name no account can have is
    looked up as it is, and fails as an unknown user does."""
    try:
        return username_of(text)
    except AccountError:
        return text


def _plain_name(username: str) -> bool:
    """A name a directory user's record can carry (accounts.username_of's form): anything
    else, filter syntax included, is refused before the directory is asked."""
    try:
        return username_of(username) == username
    except AccountError:
        return False


def _b32(secret: bytes) -> str:
    return base64.b32encode(secret).decode().rstrip("=") if secret else ""


def _totp_ok(
    secret: bytes, code: str, username: str, used_steps: dict[str, int], counters: Counters
) -> bool:
    """One step of tolerance each way; each code logs an account in once, from any session
    and across a restart (the last step used is kept in the store)."""
    now = int(time.time() // 30)
    who = f"panel:{username.lower()}"
    for step in (now - 1, now, now + 1):
        if hmac.compare_digest(totp(secret, step), code.zfill(6)[-6:]):
            return claim_step(counters, used_steps, who, step)
    return False


def _gate_line(settings: Settings) -> tuple[str, str]:
    """The red-team gate in one line (compliance/gate.py): its status, and what it says."""
    try:
        state = gate_state(settings, dt.datetime.now(dt.UTC))
    except ApplianceError as exc:  # the fingerprint cannot be read: say so, not a 500
        return "unknown", exc.message
    age = f"; {state.report_age_days:.1f} days old" if state.report_age_days is not None else ""
    mode = str(settings.service.redteam_gate)
    return state.status.value, (
        f"{state.reason} (fingerprint {state.fingerprint[:12]}{age}; redteam_gate = {mode})"
    )


def _pages(settings: Settings, storage: Storage, actor: Callable[[], str]) -> Blueprint:
    pages = Blueprint("pages", __name__)

    @pages.route("/")
    @requires(*ALL)
    def dashboard() -> ResponseReturnValue:
        # Days in UTC, as the store keeps its times (reports.activity groups by them).
        today = dt.datetime.now(dt.UTC).date()
        days = [today - dt.timedelta(days=n) for n in range(13, -1, -1)]
        seen = reports.activity(storage, dt.datetime.combine(days[0], dt.time()))
        board = dashboard_view(seen, days, red_team_trend(settings.home))
        return render_template("dashboard.html", board=board, gate=_gate_line(settings))

    @pages.route("/calls")
    @requires("admin", "operator")
    def calls() -> ResponseReturnValue:
        """Call metadata (no content: not audited), searchable by id, date, channel, status."""
        query = request.args.get("q", "").strip().lower()[:64]
        rows = storage.list_calls(limit=1000)
        if query:
            rows = [
                c
                for c in rows
                if query in f"{c.id} {c.started_at.isoformat()} {c.channel} {c.status}".lower()
            ]
        return render_template("calls.html", calls=rows[:200], query=query)

    @pages.route("/calls/<call_id>")
    @requires("admin", "operator")
    def call(call_id: str) -> ResponseReturnValue:
        reason = request.args.get("reason", "").strip()[:200]
        try:
            view = storage.read_call(call_id, actor(), reason or "masked view")
        except StorageError as exc:
            if exc.code == "storage.no_call":
                abort(404)  # as the API answers: no traceback, no 500
            raise
        show = (lambda t: t or "") if reason else mask
        turns = [
            (t.index, show(t.transcript), show(t.reply), t.route, ", ".join(t.citations))
            for t in view.turns
        ]
        return render_template("call.html", call=view, turns=turns, reason=reason)

    @pages.route("/audit")
    @requires("admin", "auditor")
    def audit() -> ResponseReturnValue:
        report = storage.verify_audit()
        events = reports.recent_audit_events(storage, 200)
        storage.log_event(actor(), "view", "audit_trail", "ok")
        return render_template("audit.html", report=report, events=events)

    return pages


def _users(storage: Storage, actor: Callable[[], str]) -> Blueprint:
    from appliance.admin.accounts import ROLES, check_password, hash_password

    users = Blueprint("users", __name__)

    @users.route("/users", methods=["GET", "POST"])
    @requires("admin")
    def manage() -> ResponseReturnValue:
        error = ""
        created: tuple[str, str] | None = None
        if request.method == "POST":
            role = request.form.get("role", "")
            password = request.form.get("password", "")
            try:
                username = username_of(request.form.get("username", "")[:64])
                if role not in ROLES:
                    raise AccountError("account.invalid", f"a role of {', '.join(ROLES)}")
                check_password(password, username)
                code = storage.create_admin_user(username, hash_password(password), role, actor())
                created = (username, code)
            except AccountError as exc:
                error = exc.message
            except Exception as exc:  # the request boundary: say what, never the password
                error = getattr(exc, "message", type(exc).__name__)
        return render_template(
            "users.html", users=storage.admin_users(), error=error, created=created
        )

    return users
