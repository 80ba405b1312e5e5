"""The admin panel's accounts (password hashes, sealed TOTP secrets, one-time enrolment
codes, disabling and deleting) and the API's bearer tokens (hashed, revocable)."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance.core.errors import StorageError
from appliance.storage.base import StoreBase
from appliance.storage.schema import AdminUser, ApiToken, Meta

TOTP_KEY = "admin_totp_key_id"
"""The system data key that seals the accounts' TOTP secrets."""
ENROLMENT_KEY = "admin_enrolment:"
"""Meta rows of the hash of each account's one-time enrolment code."""
NO_PASSWORD = "!directory"
"""The password hash of a directory user's record: no argon2 hash, so no password verifies."""


class Accounts(StoreBase):
    """Panel accounts and API tokens."""

    def create_admin_user(self, username: str, password_hash: str, role: str, actor: str) -> str:
        """A panel account; returns its enrolment code (shown once, only its hash is kept):
        the authenticator is enrolled at the first log-in with the password and this code."""
        with self.session("create admin user") as session:
            if session.scalars(select(AdminUser).where(AdminUser.username == username)).first():
                raise StorageError("storage.user_exists", f"user {username!r} already exists")
            session.add(AdminUser(username=username, password_hash=password_hash, role=role))
            self.audit_in(session, actor, "create_user", f"user:{username}", "ok", {"role": role})
            return self._new_enrolment(session, username)

    def new_enrolment_code(self, username: str, actor: str) -> str | None:
        """A new enrolment code for an account (its authenticator is enrolled again: a lost
        phone), or None when there is no such account."""
        with self.session("new enrolment code") as session:
            user = session.scalars(select(AdminUser).where(AdminUser.username == username)).first()
            if user is None:
                return None
            user.totp_secret = None
            self.audit_in(session, actor, "enrolment_code", f"user:{username}", "ok")
            return self._new_enrolment(session, username)

    def enrolment_code_ok(self, username: str, code: str) -> bool:
        digest = hashlib.sha256(code.strip().encode()).hexdigest()
        with self.session("check enrolment code") as session:
            row = session.get(Meta, ENROLMENT_KEY + username)
            return row is not None and hmac.compare_digest(row.value, digest)

    @staticmethod
    def _new_enrolment(session: Session, username: str) -> str:
        code = secrets.token_urlsafe(15)
        digest = hashlib.sha256(code.encode()).hexdigest()
        row = session.get(Meta, ENROLMENT_KEY + username)
        if row is None:
            session.add(Meta(key=ENROLMENT_KEY + username, value=digest))
        else:
            row.value = digest
        return code

    def directory_user(self, username: str, role: str, actor: str) -> AdminUser:
        """The local record of a directory user (admin/directory.py, ``ldap:<name>``) after
        the directory vouched for the password: made at the first log-in, with no password
        (NO_PASSWORD verifies nothing), and its role the directory's at this log-in (a change
        is audited). Its TOTP secret and enrolment code are a local account's."""
        with self.session("directory user") as session:
            user = session.scalars(select(AdminUser).where(AdminUser.username == username)).first()
            if user is None:
                user = AdminUser(username=username, password_hash=NO_PASSWORD, role=role)
                session.add(user)
                details = {"role": role, "source": "directory"}
                self.audit_in(session, actor, "create_user", f"user:{username}", "ok", details)
            elif user.role != role:
                details = {"role": role, "was": user.role, "source": "directory"}
                self.audit_in(session, actor, "change_role", f"user:{username}", "ok", details)
                user.role = role
            session.flush()
            return user

    def directory_enrolment_code(self, username: str, actor: str) -> str:
        """An enrolment code for a directory user's record (made now if the user has not
        logged in yet, with no role until the directory gives one): the authenticator is
        enrolled at the next log-in with the directory password and this code."""
        with self.session("directory enrolment code") as session:
            user = session.scalars(select(AdminUser).where(AdminUser.username == username)).first()
            if user is None:
                session.add(AdminUser(username=username, password_hash=NO_PASSWORD, role=""))
                details = {"source": "directory"}
                self.audit_in(session, actor, "create_user", f"user:{username}", "ok", details)
            else:
                user.totp_secret = None
            self.audit_in(session, actor, "enrolment_code", f"user:{username}", "ok")
            return self._new_enrolment(session, username)

    def admin_user(self, username: str) -> AdminUser | None:
        with self.session("read admin user") as session:
            return session.scalars(select(AdminUser).where(AdminUser.username == username)).first()

    def admin_users(self) -> list[AdminUser]:
        with self.session("list admin users") as session:
            return list(session.scalars(select(AdminUser).order_by(AdminUser.username)))

    def set_admin_disabled(self, username: str, disabled: bool, actor: str) -> bool:
        """Disable (or enable again) a panel account; False when there is no such account. A
        disabled account cannot log in, and its sessions end at their next request."""
        with self.session("disable admin user") as session:
            user = session.scalars(select(AdminUser).where(AdminUser.username == username)).first()
            action = "disable_user" if disabled else "enable_user"
            if user is None:
                self.audit_in(session, actor, action, f"user:{username}", "not_found")
                return False
            user.disabled = disabled
            self.audit_in(session, actor, action, f"user:{username}", "ok")
            return True

    def delete_admin_user(self, username: str, actor: str) -> bool:
        """Delete a panel account (its TOTP secret with it); False when there is none."""
        with self.session("delete admin user") as session:
            user = session.scalars(select(AdminUser).where(AdminUser.username == username)).first()
            if user is None:
                self.audit_in(session, actor, "delete_user", f"user:{username}", "not_found")
                return False
            session.delete(user)
            enrolment = session.get(Meta, ENROLMENT_KEY + username)
            if enrolment is not None:
                session.delete(enrolment)
            self.audit_in(session, actor, "delete_user", f"user:{username}", "ok")
            return True

    def set_admin_totp(self, username: str, secret: bytes, actor: str) -> None:
        """Store a user's TOTP secret, sealed under the system key."""
        with self.session("enrol totp") as session:
            user = session.scalars(select(AdminUser).where(AdminUser.username == username)).one()
            key = self._system_key(session, TOTP_KEY)
            user.totp_secret = self._seal(key, secret, "admin_users", "totp_secret", user.id)
            enrolment = session.get(Meta, ENROLMENT_KEY + username)
            if enrolment is not None:  # the enrolment code is good once
                session.delete(enrolment)
            self.audit_in(session, actor, "enrol_totp", f"user:{username}", "ok")

    def admin_totp(self, username: str) -> bytes | None:
        with self.session("read totp") as session:
            user = session.scalars(select(AdminUser).where(AdminUser.username == username)).first()
            if user is None or user.totp_secret is None:
                return None
            key = self._system_key(session, TOTP_KEY)
            return self._open(key, user.totp_secret, "admin_users", "totp_secret", user.id)

    def create_api_token(self, name: str, role: str, actor: str) -> str:
        """A new bearer token for the admin API (shown once; only its hash is kept)."""
        token = secrets.token_urlsafe(32)
        digest = hashlib.sha256(token.encode()).hexdigest()
        with self.session("create api token") as session:
            session.add(ApiToken(name=name, role=role, token_hash=digest))
            self.audit_in(session, actor, "create_token", f"token:{name}", "ok", {"role": role})
        return token

    def api_tokens(self) -> list[ApiToken]:
        with self.session("list api tokens") as session:
            return list(session.scalars(select(ApiToken).order_by(ApiToken.created_at)))

    def revoke_api_token(self, name: str, actor: str) -> int:
        """Revoke every token of that name (kept, marked revoked: the API refuses it from the
        next request); returns how many were live."""
        with self.session("revoke api token") as session:
            rows = list(
                session.scalars(
                    select(ApiToken).where(ApiToken.name == name, ApiToken.revoked.is_(False))
                )
            )
            for row in rows:
                row.revoked = True
            outcome = "ok" if rows else "not_found"
            self.audit_in(session, actor, "revoke_token", f"token:{name}", outcome)
            return len(rows)

    def api_token_role(self, token: str) -> str | None:
        digest = hashlib.sha256(token.encode()).hexdigest()
        with self.session("check api token") as session:
            row = session.scalars(select(ApiToken).where(ApiToken.token_hash == digest)).first()
            return None if row is None or row.revoked else row.role
